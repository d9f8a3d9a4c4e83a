// Package mirror implements `kubectl trafficlab mirror`: a copy of the pod's incoming traffic is
// replayed to a local port (or to an address the pod reaches) while the pod's app keeps answering it.
package mirror

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/kubectl/pkg/util/templates"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/session"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/httpfilter"
	"github.com/trafficlab/kubectl-trafficlab/pkg/local/forward"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

var (
	mirrorLong = templates.LongDesc(`
		Replay a copy of a pod's incoming traffic to a process on your machine (or to another
		service), while the pod's app keeps answering it.

		HTTP/1.1, h2c and gRPC are copied request by request: the copy's answers are read and
		thrown away (or compared with the pod's, with --diff), filters select which requests are
		copied, and --percent samples them. Each of the pod's connections gets a connection of its
		own, in the same order; HTTP/1.1 copies are pipelined (the next request does not wait for
		the answer to the one before), so the local server must accept pipelined requests, as
		Go's, Node's and most others do. Other protocols are copied connection by connection.

		In sniff mode (the default) the agent watches the pod's packets: it needs only NET_RAW,
		which container runtimes such as containerd give a root container by default, so it adds
		no capability and is admitted at the PodSecurity "baseline" level. The pod's traffic is
		only observed. Requests on HTTP/1.1 connections that were open before the mirror began are
		copied from the next request on; h2c and other protocols only on connections that begin
		after it.

		In redirect mode the agent sits in the connection's path with the steal's nftables redirect
		(it needs NET_ADMIN) and relays every byte to the app unchanged; nothing is missed even
		under load. When the mirror ends, connections it relays are reset and their clients
		reconnect to the app directly.

		In both modes a copy that cannot keep up is dropped and counted, never the pod's traffic.`)

	mirrorExample = templates.Examples(`
		# Replay what port 8080 of pod web receives to local port 8080
		kubectl trafficlab mirror pod/web --port 8080

		# Through a Service's port, to local 9090, only the requests under /api
		kubectl trafficlab mirror svc/api --port 80:9090 --path-filter '^/api/'

		# Send 10% of the requests to the canary Service in the cluster instead
		kubectl trafficlab mirror deploy/api --port 8080 --to svc/api-canary:80 --percent 10

		# Print the requests whose local answer differs from the pod's
		kubectl trafficlab mirror pod/web --port 8080 --diff --diff-header content-type`)
)

// Options holds what mirror needs to run.
type Options struct {
	Target       target.Options
	Session      session.Options
	PortArgs     []string
	LocalAddress string
	AddNetRaw    bool
	Mode         string
	Filter       httpfilter.Flags
	To           string
	Percent      int
	Diff         bool
	DiffHeaders  []string
	Output       string

	ports       []target.PortSpec
	localGiven  bool
	to          string
	configFlags *genericclioptions.ConfigFlags
	config      *rest.Config
	client      kubernetes.Interface

	genericiooptions.IOStreams
}

// NewOptions returns Options with the defaults.
func NewOptions(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *Options {
	return &Options{
		IOStreams: streams, configFlags: configFlags, Session: session.NewOptions(),
		LocalAddress: "127.0.0.1", Mode: wire.MirrorSniff, Percent: 100,
	}
}

// NewCmdMirror returns the mirror command.
func NewCmdMirror(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *cobra.Command {
	return newCmd(NewOptions(streams, configFlags))
}

func newCmd(o *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:                   "mirror TYPE/NAME --port REMOTE[:LOCAL] [--port ...] [filters] [--mode sniff|redirect] [--to svc/NAME:PORT]",
		DisableFlagsInUseLine: true,
		Short:                 "Replay a copy of a pod's incoming traffic to a local process or another service",
		Long:                  mirrorLong,
		Example:               mirrorExample,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Complete(cmd, args); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.Target.Container, "container", "c", "", "Container whose process the agent joins; defaults to the pod's default container.")
	f.StringVarP(&o.Target.Selector, "selector", "l", "", "Selector (label query) to pick the pod instead of TYPE/NAME.")
	f.StringArrayVarP(&o.PortArgs, "port", "p", nil, "Pod port to mirror and the local port that receives the copy, REMOTE[:LOCAL]; LOCAL defaults to REMOTE. With a Service, REMOTE is the Service's port. Repeatable.")
	f.StringVar(&o.LocalAddress, "local-address", o.LocalAddress, "Address of the local process that receives the copy.")
	f.StringVar(&o.Mode, "mode", o.Mode, "How the agent sees the traffic: sniff (packet capture, NET_RAW only) or redirect (in the path with nftables, NET_ADMIN; nothing is missed).")
	o.Filter.AddFlags(f, "Mirror")
	f.StringVar(&o.To, "to", "", "Send the copy to svc/NAME:PORT or HOST:PORT, dialed from the pod, instead of to a local port.")
	f.IntVar(&o.Percent, "percent", o.Percent, "Share of the selected requests to copy, 1-100, spread evenly.")
	f.BoolVar(&o.Diff, "diff", false, "Compare each copy's response with the pod's (status, --diff-header headers, gRPC status, body) and print only the requests whose responses differ.")
	f.StringSliceVar(&o.DiffHeaders, "diff-header", []string{"Content-Type"}, "Response headers --diff compares (comma separated).")
	f.StringVarP(&o.Output, "output", "o", "", "Output format for the per-request lines: json (with the counts so far every second, and the final counts last), or empty for text.")
	f.BoolVar(&o.AddNetRaw, "add-net-raw", false, "Add NET_RAW to the agent instead of relying on the container runtime's default (needed on CRI-O; refused by PodSecurity baseline).")
	o.Session.AddFlags(f)
	return cmd
}

// Complete reads flags, arguments and the kubeconfig.
func (o *Options) Complete(cmd *cobra.Command, args []string) error {
	if len(args) > 1 {
		return fmt.Errorf("mirror takes one TYPE/NAME, got %q; ports go in --port", args)
	}
	if err := o.Target.SetResource(args); err != nil {
		return err
	}
	if err := o.CompletePorts(); err != nil {
		return err
	}
	k, err := session.LoadKube(o.configFlags)
	if err != nil {
		return err
	}
	o.Target.Namespace, o.config, o.client = k.Namespace, k.Config, k.Client
	return nil
}

// CompletePorts parses PortArgs; exec, which runs a mirror of its own, calls it after setting them.
func (o *Options) CompletePorts() error {
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

// Validate checks the options; no I/O.
func (o *Options) Validate() error {
	if o.Target.Resource == "" && o.Target.Selector == "" {
		return errors.New("TYPE/NAME or -l selector is required, e.g. kubectl trafficlab mirror pod/web --port 8080")
	}
	if err := o.ValidateMirror(); err != nil {
		return err
	}
	return o.Session.Validate()
}

// ValidateMirror checks what the mirror itself needs, for this verb and for exec --mirror.
func (o *Options) ValidateMirror() error {
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
		if _, _, err := parseTo(o.To); err != nil {
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
	if o.AddNetRaw && o.Mode == wire.MirrorRedirect {
		return errors.New("--add-net-raw is for --mode sniff; redirect needs NET_ADMIN, which the agent adds")
	}
	return nil
}

// parseTo splits --to into a Service (svc/NAME:PORT) or a host and a port.
func parseTo(to string) (svc, hostport string, err error) {
	rest, isSvc := strings.CutPrefix(to, "svc/")
	if !isSvc {
		rest, isSvc = strings.CutPrefix(to, "service/")
	}
	host, port, err := net.SplitHostPort(rest)
	if err != nil || host == "" || port == "" {
		return "", "", fmt.Errorf("--to %q must be svc/NAME:PORT or HOST:PORT", to)
	}
	if isSvc {
		return rest, "", nil
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return "", "", fmt.Errorf("--to %q: port must be 1-65535", to)
	}
	return "", rest, nil
}

// Check resolves the ports and --to against the cluster before the agent is added.
func (o *Options) Check(ctx context.Context, t *target.Target) error {
	ports, warnings, err := target.ResolvePorts(t, o.ports)
	if err != nil {
		return err
	}
	o.ports = ports
	if t.Replicas > 1 {
		warnings = append(warnings, fmt.Sprintf("%d ready pods match; only pod %s is mirrored", t.Replicas, t.Pod.Name))
	}
	if o.To != "" {
		to, err := o.resolveTo(ctx, t.Pod.Namespace)
		if err != nil {
			return err
		}
		o.to = to
	}
	for _, w := range warnings {
		fmt.Fprintf(o.ErrOut, "warning: %s\n", w)
	}
	return nil
}

// resolveTo turns svc/NAME:PORT into the Service's cluster IP (or, headless, its DNS name) and
// port, refusing a Service or port that does not exist.
func (o *Options) resolveTo(ctx context.Context, namespace string) (string, error) {
	svc, hostport, _ := parseTo(o.To)
	if svc == "" {
		return hostport, nil
	}
	name, port, _ := net.SplitHostPort(svc)
	s, err := o.client.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", fmt.Errorf("--to %q: service %q not found in namespace %q", o.To, name, namespace)
	}
	if err != nil {
		return "", fmt.Errorf("--to %q: get service %q: %w", o.To, name, err)
	}
	for _, p := range s.Spec.Ports {
		if p.Name == port || strconv.Itoa(int(p.Port)) == port {
			host := s.Spec.ClusterIP
			if host == "" || host == "None" {
				host = fmt.Sprintf("%s.%s.svc", s.Name, s.Namespace)
			}
			return net.JoinHostPort(host, strconv.Itoa(int(p.Port))), nil
		}
	}
	return "", fmt.Errorf("--to %q: service %q has no port %q", o.To, name, port)
}

// Run starts the session and the mirror, serves the copies until interrupted or the agent goes away,
// and prints the counts.
func (o *Options) Run(ctx context.Context) error {
	caps := inject.NetRaw
	if o.Mode == wire.MirrorRedirect {
		caps = inject.NetAdmin
	}
	s, err := session.Start(ctx, o.config, o.client, o.Session, session.Request{
		Target: o.Target, Capabilities: caps, AddNetRaw: o.AddNetRaw,
		Check: func(t *target.Target) error { return o.Check(ctx, t) },
	}, o.ErrOut)
	if err != nil {
		return err
	}
	defer s.Close()
	stop, err := o.Attach(ctx, s, nil)
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		stop()
		return nil
	case <-s.Conn.Done():
		return fmt.Errorf("lost the agent: %w", s.Conn.Err())
	}
}

// countsWait bounds the wait for the agent's counts after an interrupt: it first finishes the copies
// in flight (up to 2 s), and a busy agent is slower still.
const countsWait = 10 * time.Second

// Attach starts the mirror on a session that is up and serves it until the returned stop, which
// prints the counts, is called. dial reaches the local process; nil dials LOCAL on --local-address.
// exec uses it to deliver the copies inside its command's namespace.
func (o *Options) Attach(ctx context.Context, s *session.Session, dial forward.LocalDialer) (stop func(), err error) {
	spec := wire.MirrorSpec{Mode: o.Mode, To: o.to, Diff: o.Diff}
	if o.Percent < 100 {
		spec.Percent = o.Percent
	}
	if o.Diff {
		spec.DiffHeaders = o.DiffHeaders
	}
	if f := o.Filter.Filter(); !f.Empty() {
		spec.Filter = f
	}
	locals := map[int]string{}
	var parts []string
	for _, p := range o.ports {
		spec.Ports = append(spec.Ports, p.Port)
		locals[p.Port] = net.JoinHostPort(o.LocalAddress, strconv.Itoa(p.Local))
		dest := locals[p.Port]
		if o.to != "" {
			dest = o.To + " (from the pod)"
		}
		parts = append(parts, fmt.Sprintf("port %d -> %s", p.Port, dest))
	}
	st, err := s.Conn.Mirror(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("start mirroring in pod %s/%s: %w", s.Target.Pod.Namespace, s.Target.Pod.Name, err)
	}
	how := "sniffing"
	if o.Mode == wire.MirrorRedirect {
		how = "redirect"
	}
	if o.Percent < 100 {
		how += fmt.Sprintf(", %d%% of requests", o.Percent)
	}
	msg := fmt.Sprintf("mirroring %s (%s; the pod keeps answering)", strings.Join(parts, ", "), how)
	if o.Session.Quiet {
		fmt.Fprintln(o.ErrOut, msg)
	} else {
		s.Progress.Stepf("%s", msg)
	}
	// The copies' answers go back to the agent one small frame each; spaced writes carry them
	// across the port-forward chain in batches (the agent does the same with the copies).
	s.Conn.SetWriteInterval(wire.MirrorWriteInterval)
	// Copies in flight when the user interrupts still finish: the agent drains them before it sends
	// the counts, so the local connections are served until then, whatever ctx says.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	srv := &server{locals: locals, dial: dial}
	go srv.serve(sctx, s.Conn)
	p := newPrinter(o.Out, o.Output == "json", o.Diff)
	cnt := newCounts()
	go func() {
		defer cnt.end()
		er := wire.NewMirrorEventReader(st)
		for {
			ev, err := er.Read()
			if err != nil {
				return
			}
			if ev.Kind == wire.EventStats {
				cnt.add(ev.Stats)
				// A JSON consumer also gets the counts so far, every second; people get the summary.
				if ev.Stats != nil && ev.Stats.Partial && o.Output == "json" {
					p.print(ev)
				}
				continue
			}
			p.print(ev)
		}
	}()
	return func() {
		defer cancel()
		defer s.Conn.SetWriteInterval(0)
		_ = st.CloseWrite()
		defer st.Close()
		sum := cnt.wait(countsWait)
		if sum != nil && !sum.Partial && o.Output == "json" {
			p.print(wire.MirrorEvent{Kind: wire.EventStats, Stats: sum})
		}
		p.flush()
		switch {
		case sum == nil:
			fmt.Fprintf(o.ErrOut, "warning: the agent sent no counts for the mirror in %s\n", countsWait)
		case sum.Partial:
			fmt.Fprintf(o.ErrOut, "warning: the mirror's final counts did not come in %s (the node is busy); these are from the agent's last report\n", countsWait)
			fmt.Fprintln(o.ErrOut, sum.Summary())
		default:
			fmt.Fprintln(o.ErrOut, sum.Summary())
		}
	}, nil
}

// LocalPorts are the local ports that receive the connections, once the ports are completed.
func (o *Options) LocalPorts() []int {
	var out []int
	for _, p := range o.ports {
		out = append(out, p.Local)
	}
	return out
}
