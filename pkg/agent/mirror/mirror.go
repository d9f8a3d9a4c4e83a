// Package mirror is the plugin's side of a mirror, shared by the mirror verb and exec --mirror: the
// ports to mirror and where the copies go (local addresses, or --to from the pod), the checks against
// the cluster before the agent is added, asking the agent to mirror on a live tunnel, one line per
// copied request and the counts at the end. The copies reach the local process through
// pkg/local/deliver.
package mirror

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/mesh"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/steal"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/httpfilter"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Options are what the user asks of a mirror; a verb binds its flags to them.
type Options struct {
	PortArgs     []string
	LocalAddress string
	Mode         string
	Filter       httpfilter.Flags
	To           string
	Percent      int
	Diff         bool
	DiffHeaders  []string
	// Fanout says the mirror covers every ready pod of the target (the mirror verb), not one (exec).
	Fanout bool
	Output string
	// AllowUnownedRedirect is steal.Options' for --mode redirect.
	AllowUnownedRedirect bool

	ports      []target.PortSpec
	localGiven bool
	to         string
	// probes are the pod's, read by Check.
	probes *wire.Probes
	// mesh is the mesh Check saw in the pod's spec, for the agent (nil: none): a sniffing mirror in a
	// pod with a sidecar reads the proxy's plaintext connection to the app on lo.
	mesh  *wire.Mesh
	guard *loopGuard
	// hostNetwork (Check) keeps a redirect mirror from resetting the node's own connections.
	hostNetwork bool
}

// NewOptions returns Options with the defaults.
func NewOptions() Options {
	return Options{LocalAddress: "127.0.0.1", Mode: wire.MirrorSniff, Percent: 100}
}

// Complete parses PortArgs.
func (o *Options) Complete() error {
	o.ports = nil
	o.localGiven = false
	for _, a := range o.PortArgs {
		ps, err := target.ParsePortSpec(a)
		if err != nil {
			return err
		}
		o.localGiven = o.localGiven || strings.Contains(a, ":")
		o.ports = append(o.ports, ps)
	}
	return nil
}

// Validate checks the options once completed; no I/O.
func (o *Options) Validate() error {
	if len(o.ports) == 0 {
		return errors.New("--port is required, e.g. --port 8080 or --port 80:9090")
	}
	if net.ParseIP(o.LocalAddress) == nil && o.LocalAddress != "localhost" {
		return fmt.Errorf("--local-address %q is not an IP address or localhost", o.LocalAddress)
	}
	if o.Mode != wire.MirrorSniff && o.Mode != wire.MirrorRedirect {
		return fmt.Errorf("--mode must be sniff or redirect, not %q", o.Mode)
	}
	if err := o.Filter.Validate(); err != nil {
		return err
	}
	if o.Percent < 1 || o.Percent > 100 {
		return fmt.Errorf("--percent must be between 1 and 100, not %d", o.Percent)
	}
	if o.To != "" {
		if _, _, _, err := parseTo(o.To); err != nil {
			return err
		}
		if o.localGiven {
			return errors.New("--port REMOTE:LOCAL names a local port, but --to sends the copy elsewhere; give --port REMOTE only")
		}
	}
	for _, h := range o.DiffHeaders {
		if err := (&wire.MirrorSpec{Ports: []int{1}, DiffHeaders: []string{h}}).Validate(); err != nil {
			return fmt.Errorf("--diff-header %q is not a header name", h)
		}
	}
	if o.Output != "" && o.Output != "json" {
		return fmt.Errorf("--output must be json or empty, not %q", o.Output)
	}
	if o.AllowUnownedRedirect && o.Mode != wire.MirrorRedirect {
		return fmt.Errorf("--allow-unowned-redirect is for --mode redirect, not %q", o.Mode)
	}
	return nil
}

// Capabilities are what the agent needs: NET_RAW to sniff, which the runtime gives by default (see
// inject.AgentSpec), or NET_ADMIN for the redirect.
func (o *Options) Capabilities() inject.Capabilities {
	if o.Mode == wire.MirrorRedirect {
		return inject.NetAdmin
	}
	return inject.NetRaw
}

// Ports are the ports to mirror and their local ends: as the user gave them once completed, resolved
// against the pod (Service ports, named ports) once Check has run.
func (o *Options) Ports() []target.PortSpec { return o.ports }

// parseTo splits --to into a Service (svc/NAME[:PORT]; PORT may be left out when the Service has
// one) or a host and a port.
func parseTo(to string) (svc, svcPort, hostport string, err error) {
	rest, isSvc := strings.CutPrefix(to, "svc/")
	if !isSvc {
		rest, isSvc = strings.CutPrefix(to, "service/")
	}
	if isSvc && !strings.Contains(rest, ":") {
		if rest == "" {
			return "", "", "", fmt.Errorf("--to %q must be svc/NAME[:PORT] or HOST:PORT", to)
		}
		return rest, "", "", nil
	}
	host, port, err := net.SplitHostPort(rest)
	if err != nil || host == "" || port == "" {
		return "", "", "", fmt.Errorf("--to %q must be svc/NAME[:PORT] or HOST:PORT", to)
	}
	if isSvc {
		return host, port, "", nil
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return "", "", "", fmt.Errorf("--to %q: port must be 1-65535", to)
	}
	return "", "", rest, nil
}

// Check resolves the ports and --to against the cluster before the agent is added, and returns
// warnings about what the mirror will not do as the user may expect. A --to that leads back to the
// mirrored pod is refused (see loop.go).
func (o *Options) Check(ctx context.Context, client kubernetes.Interface, t *target.Target) ([]string, error) {
	m := mesh.Detect(t.Pod)
	if o.Mode == wire.MirrorRedirect {
		if err := m.RefuseRedirect(t.Pod, "mirror --mode redirect"); err != nil {
			return nil, err
		}
	}
	o.mesh = m.Hint()
	ports, warnings, err := target.ResolvePorts(t, o.ports)
	if err != nil {
		return nil, err
	}
	o.ports = ports
	o.hostNetwork = t.Pod.Spec.HostNetwork
	// The kubelet's probes are never copied: the agent is told which they are.
	if o.probes, err = steal.PodProbes(t.Pod); err != nil {
		return nil, err
	}
	if t.Replicas > 1 && !o.Fanout {
		warnings = append(warnings, fmt.Sprintf("%d ready pods match; only pod %s is mirrored", t.Replicas, t.Pod.Name))
	}
	if o.To != "" {
		to, dest, err := o.resolveTo(ctx, client, t.Pod.Namespace)
		if err != nil {
			return nil, err
		}
		o.to = to
		o.guard = newLoopGuard(o.To, t.Pod, o.ports, to, dest)
		if dest == nil {
			o.guard.dest, o.guard.lookupErr = lookupDestination(ctx, client, t.Pod.Namespace, to)
		}
		w, err := o.guard.check(ctx, client)
		if err != nil {
			return nil, err
		}
		if w != "" {
			warnings = append(warnings, w)
		}
	}
	return warnings, nil
}

// resolveTo turns svc/NAME[:PORT] into the Service's cluster IP (or, headless, its DNS name) and
// port, refusing a Service or port that does not exist, with the Service and its port (nil for
// HOST:PORT) whose endpoints the loop guard checks.
func (o *Options) resolveTo(ctx context.Context, client kubernetes.Interface, namespace string) (string, *destination, error) {
	name, port, hostport, _ := parseTo(o.To)
	if name == "" {
		return hostport, nil, nil
	}
	s, err := client.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", nil, fmt.Errorf("--to %q: service %q not found in namespace %q", o.To, name, namespace)
	}
	if err != nil {
		return "", nil, fmt.Errorf("--to %q: get service %q: %w", o.To, name, err)
	}
	if port == "" {
		if len(s.Spec.Ports) != 1 {
			return "", nil, fmt.Errorf("--to %q: service %q has %d ports; name one, e.g. svc/%s:PORT", o.To, name, len(s.Spec.Ports), name)
		}
		port = strconv.Itoa(int(s.Spec.Ports[0].Port))
	}
	for _, p := range s.Spec.Ports {
		if p.Name == port || strconv.Itoa(int(p.Port)) == port {
			host := s.Spec.ClusterIP
			if host == "" || host == "None" {
				host = fmt.Sprintf("%s.%s.svc", s.Name, s.Namespace)
			}
			return net.JoinHostPort(host, strconv.Itoa(int(p.Port))), &destination{service: s, port: p}, nil
		}
	}
	return "", nil, fmt.Errorf("--to %q: service %q has no port %q", o.To, name, port)
}

// Spec is what the agent is asked to do, once Check has resolved --to.
func (o *Options) Spec() wire.MirrorSpec {
	spec := wire.MirrorSpec{Mode: o.Mode, To: o.to, Diff: o.Diff, Probes: o.probes, AllowUnownedRedirect: o.AllowUnownedRedirect, Mesh: o.mesh, KeepOpen: o.hostNetwork}
	if o.Percent < 100 {
		spec.Percent = o.Percent
	}
	if o.Diff {
		spec.DiffHeaders = o.DiffHeaders
	}
	if f := o.Filter.Filter(); !f.Empty() {
		spec.Filter = f
	}
	for _, p := range o.ports {
		spec.Ports = append(spec.Ports, p.Port)
	}
	return spec
}
