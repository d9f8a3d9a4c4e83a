// Package steal is the plugin's side of a steal, shared by the steal verb and exec --steal: the
// ports to steal and the local addresses that answer them, the checks against the pod before the
// agent is added (ports, the probes a steal would take), asking the agent to steal on a live
// tunnel, and one line per request or connection it reports. The stolen connections themselves reach
// the local process through pkg/local/deliver.
package steal

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/mesh"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/httpfilter"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Capabilities are what the agent needs for a steal: NET_ADMIN, for the nftables redirect.
const Capabilities = inject.NetAdmin

// Options are what the user asks of a steal; a verb binds its flags to them.
type Options struct {
	PortArgs         []string
	LocalAddress     string
	Filter           httpfilter.Flags
	FlushConnections bool
	StealProbes      bool
	DetectTimeout    time.Duration
	// HeadTimeout bounds each request head of a filtered steal (the agent answers 408 past it), as
	// the app's own slow-header protection would, which it cannot apply to heads it never sees.
	HeadTimeout time.Duration
	Output      string
	// AllowUnownedRedirect accepts a redirect on a node whose kernel cannot tie it to the agent's
	// life (no nftables table owner flag, Linux before 5.12); the agent refuses one without it.
	AllowUnownedRedirect bool

	// Fanout says the steal covers every ready pod of the target (the steal verb), not one (exec).
	Fanout bool

	ports  []target.PortSpec
	filter *wire.HTTPFilter
	// probes and probeSources are the pod's probes and the node's addresses, read by Check.
	probes       []declaredProbe
	probeSources []string
	// mesh is the mesh Check saw in the pod's spec, for the agent (nil: none).
	mesh *wire.Mesh
	// hostNetwork (Check) keeps the agent from resetting the node's own connections.
	hostNetwork bool
}

// NewOptions returns Options with the defaults.
func NewOptions() Options {
	return Options{LocalAddress: "127.0.0.1", DetectTimeout: 500 * time.Millisecond, HeadTimeout: wire.DefaultHeadTimeout}
}

// Complete parses PortArgs and the filter flags.
func (o *Options) Complete() error {
	o.ports = nil
	for _, a := range o.PortArgs {
		ps, err := target.ParsePortSpec(a)
		if err != nil {
			return err
		}
		o.ports = append(o.ports, ps)
	}
	o.filter = o.Filter.Filter()
	return nil
}

// Validate checks the options once completed; no I/O.
func (o *Options) Validate() error {
	if len(o.ports) == 0 {
		return errors.New("--port is required, e.g. --port 80 or --port 80:8080")
	}
	if net.ParseIP(o.LocalAddress) == nil && o.LocalAddress != "localhost" {
		return fmt.Errorf("--local-address %q is not an IP address or localhost", o.LocalAddress)
	}
	if err := o.Filter.Validate(); err != nil {
		return err
	}
	if o.DetectTimeout <= 0 || o.DetectTimeout > time.Minute {
		return fmt.Errorf("--detect-timeout must be between 1ms and 1m, not %q", o.DetectTimeout)
	}
	if o.HeadTimeout < time.Second || o.HeadTimeout > 10*time.Minute {
		return fmt.Errorf("--head-timeout must be between 1s and 10m, not %q", o.HeadTimeout)
	}
	if o.Output != "" && o.Output != "json" {
		return fmt.Errorf("--output must be json or empty, not %q", o.Output)
	}
	return nil
}

// ValidateHostNetwork refuses what a steal must not do in the node's own network namespace
// (allowHostNetwork is --allow-host-network): --flush-connections would reset the node's connections
// to those ports, the kubelet's and every host process's among them.
func (o *Options) ValidateHostNetwork(allowHostNetwork bool) error {
	if allowHostNetwork && o.FlushConnections {
		return errors.New("--flush-connections cannot be used with --allow-host-network: it would reset connections of the node itself")
	}
	return nil
}

// Ports are the ports to steal and their local ends: as the user gave them once completed, resolved
// against the pod (Service ports, named ports) once Check has run.
func (o *Options) Ports() []target.PortSpec { return o.ports }

// Check resolves the ports against the target before the agent is added, and returns warnings about
// what the steal will not do as the user may expect. named is how the user named the target.
func (o *Options) Check(t *target.Target, named string) ([]string, error) {
	m := mesh.Detect(t.Pod)
	if err := m.RefuseRedirect(t.Pod, "steal"); err != nil {
		return nil, err
	}
	o.mesh = m.Hint()
	ports, warnings, err := target.ResolvePorts(t, o.ports)
	if err != nil {
		return nil, err
	}
	o.ports = ports
	o.hostNetwork = t.Pod.Spec.HostNetwork
	stolen := o.stolen()
	var match func(method, path string, headers []string) bool
	if m, _ := o.filter.Compile(); m != nil {
		match = m.Match
	}
	o.probes, o.probeSources, err = podProbes(t.Pod)
	if err != nil {
		return nil, err
	}
	warnings = append(warnings, probeWarnings(o.probes, stolen, o.StealProbes, match)...)
	if t.Replicas > 1 && !o.Fanout {
		warnings = append(warnings, fmt.Sprintf("%d ready pods match %s; only pod %s is stolen, the others keep answering", t.Replicas, named, t.Pod.Name))
	}
	return warnings, nil
}

// Spec is what the agent is asked to do.
func (o *Options) Spec() wire.StealSpec {
	spec := wire.StealSpec{
		StealProbes:          o.StealProbes,
		FlushConnections:     o.FlushConnections,
		KeepOpen:             o.hostNetwork,
		AllowUnownedRedirect: o.AllowUnownedRedirect,
		DetectTimeout:        wire.Millis(o.DetectTimeout),
		PassedEvents:         o.Output == "json",
		Probes:               wireProbes(o.probes, o.probeSources),
		Mesh:                 o.mesh,
	}
	for _, p := range o.ports {
		spec.Ports = append(spec.Ports, p.Port)
	}
	if !o.filter.Empty() {
		spec.Filter = o.filter
		// Only a filtered steal reads heads; a whole-port steal relays bytes.
		spec.HeadTimeout = wire.Millis(o.HeadTimeout)
	}
	return spec
}
