// Package steal implements `kubectl trafficlab steal`: the pod's incoming connections (or only the
// HTTP requests a filter selects) on a port are answered by a process on the developer's machine.
package steal

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	"k8s.io/kubectl/pkg/util/templates"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/session"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/exitcode"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/httpfilter"
	"github.com/trafficlab/kubectl-trafficlab/pkg/local/forward"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

var (
	stealLong = templates.LongDesc(`
		Answer a pod's incoming traffic on a port with a process on your machine.

		The agent, added to the pod as an ephemeral container with NET_ADMIN, redirects new
		connections to the pod's port (from other pods, Services, the node and the pod's own
		localhost) through a tunnel to LOCAL on your machine. The pod is not restarted and keeps
		running; when the command ends (Ctrl-C, a crash, a lost network) the redirect is gone within
		seconds and the pod's app answers again.

		With --header-filter, --path-filter or --method only the matching HTTP requests (HTTP/1.1,
		h2c, gRPC) are stolen, each request on its own; the rest is still served by the pod's app.
		Header filters see each header as one "Name: value" line, case-insensitive, and may use
		look-ahead, e.g. '^User-Agent: (?!kube-probe)'. The kubelet's probes are never stolen unless
		--steal-probes.

		Connections that are already open stay with the app unless --flush-connections, which resets
		them so that clients reconnect into the steal; requests in flight on them fail. The app sees
		passed-through requests as coming from the pod itself (the agent). With a Service, --port
		names the Service's port and only one of its pods is stolen.`)

	stealExample = templates.Examples(`
		# Answer port 80 of pod web with the server on local port 8080
		kubectl trafficlab steal pod/web --port 80:8080

		# Steal only requests with the header X-Dev: alice, through the Service's port
		kubectl trafficlab steal svc/api --port 80:8080 --header-filter '^X-Dev: alice$'

		# Steal everything but the kubelet's probes, and reset open keep-alive connections
		kubectl trafficlab steal deploy/api --port 8080 --header-filter '^User-Agent: (?!kube-probe)' --flush-connections

		# Run a local server for as long as the steal lasts; its exit code is the command's
		kubectl trafficlab steal pod/web --port 80:8080 -- python3 -m http.server 8080`)
)

// Options holds what steal needs to run.
type Options struct {
	Target           target.Options
	Session          session.Options
	PortArgs         []string
	LocalAddress     string
	Filter           httpfilter.Flags
	FlushConnections bool
	StealProbes      bool
	DetectTimeout    time.Duration
	Output           string
	Command          []string

	ports       []target.PortSpec
	filter      *wire.HTTPFilter
	configFlags *genericclioptions.ConfigFlags
	config      *rest.Config
	client      kubernetes.Interface

	genericiooptions.IOStreams
}

// NewOptions returns Options with the defaults.
func NewOptions(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *Options {
	return &Options{
		IOStreams: streams, configFlags: configFlags, Session: session.NewOptions(),
		LocalAddress: "127.0.0.1", DetectTimeout: 500 * time.Millisecond,
	}
}

// NewCmdSteal returns the steal command.
func NewCmdSteal(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *cobra.Command {
	return newCmd(NewOptions(streams, configFlags))
}

func newCmd(o *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:                   "steal TYPE/NAME --port REMOTE[:LOCAL] [--port ...] [filters] [-- COMMAND [ARGS...]]",
		DisableFlagsInUseLine: true,
		Short:                 "Answer a pod's incoming traffic with a local process",
		Long:                  stealLong,
		Example:               stealExample,
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
	f.StringArrayVarP(&o.PortArgs, "port", "p", nil, "Pod port to steal and the local port that answers it, REMOTE[:LOCAL]; LOCAL defaults to REMOTE. With a Service, REMOTE is the Service's port. Repeat for several ports.")
	f.StringVar(&o.LocalAddress, "local-address", o.LocalAddress, "Address of the local process that answers.")
	o.Filter.AddFlags(f, "Steal")
	f.BoolVar(&o.FlushConnections, "flush-connections", false, "Reset connections that are already open to the stolen ports, so clients reconnect into the steal; requests in flight on them fail.")
	f.BoolVar(&o.StealProbes, "steal-probes", false, "Steal the kubelet's probe requests too; if they then fail, the kubelet restarts or unreadies the pod.")
	f.DurationVar(&o.DetectTimeout, "detect-timeout", o.DetectTimeout, "How long the agent waits for a new connection's first bytes to recognise HTTP and probes; a client that says nothing first (a server-first protocol) waits this long once.")
	f.StringVarP(&o.Output, "output", "o", "", "Output format for the per-request lines: json, or empty for text.")
	o.Session.AddFlags(f)
	return cmd
}

// Complete reads flags, arguments and the kubeconfig.
func (o *Options) Complete(cmd *cobra.Command, args []string) error {
	if at := cmd.ArgsLenAtDash(); at >= 0 {
		o.Command = args[at:]
		args = args[:at]
	}
	if len(args) > 1 {
		return fmt.Errorf("steal takes one TYPE/NAME, got %q; ports go in --port, a command after --", args)
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

// CompletePorts parses PortArgs and the filter flags; exec, which runs a steal of its own, calls it
// after setting them.
func (o *Options) CompletePorts() error {
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

// Validate checks the options; no I/O.
func (o *Options) Validate() error {
	if o.Target.Resource == "" && o.Target.Selector == "" {
		return errors.New("TYPE/NAME or -l selector is required, e.g. kubectl trafficlab steal pod/web --port 80:8080")
	}
	if err := o.ValidateSteal(); err != nil {
		return err
	}
	return o.Session.Validate()
}

// ValidateSteal checks what the steal itself needs, for this verb and for exec --steal.
func (o *Options) ValidateSteal() error {
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
	if o.Output != "" && o.Output != "json" {
		return fmt.Errorf("--output must be json or empty, not %q", o.Output)
	}
	return nil
}

// Check resolves the ports against the target before the agent is added, and warns about what the
// steal will not do as the user may expect.
func (o *Options) Check(t *target.Target) error {
	ports, warnings, err := target.ResolvePorts(t, o.ports)
	if err != nil {
		return err
	}
	o.ports = ports
	stolen := map[int]bool{}
	for _, p := range ports {
		stolen[p.Port] = true
	}
	var match func(method, path string, headers []string) bool
	if m, _ := o.filter.Compile(); m != nil {
		match = m.Match
	}
	warnings = append(warnings, probeWarnings(t.Pod, stolen, o.StealProbes, match)...)
	if t.Replicas > 1 {
		warnings = append(warnings, fmt.Sprintf("%d ready pods match %s; only pod %s is stolen, the others keep answering", t.Replicas, o.targetName(), t.Pod.Name))
	}
	for _, w := range warnings {
		fmt.Fprintf(o.ErrOut, "warning: %s\n", w)
	}
	return nil
}

func (o *Options) targetName() string {
	if o.Target.Resource != "" {
		return o.Target.Resource
	}
	return fmt.Sprintf("selector %q", o.Target.Selector)
}

// Run starts the session, asks the agent to steal, and serves stolen connections until interrupted,
// the agent goes away, or COMMAND exits.
func (o *Options) Run(ctx context.Context) error {
	var cmd *exec.Cmd
	if len(o.Command) > 0 {
		path, err := exec.LookPath(o.Command[0])
		if err != nil {
			return fmt.Errorf("command %q: %w", o.Command[0], err)
		}
		cmd = exec.Command(path, o.Command[1:]...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = o.In, o.Out, o.ErrOut
	}
	s, err := session.Start(ctx, o.config, o.client, o.Session, session.Request{
		Target: o.Target, Capabilities: inject.NetAdmin, Check: o.Check,
	}, o.ErrOut)
	if err != nil {
		return err
	}
	defer s.Close()
	stop, err := o.Attach(ctx, s, nil)
	if err != nil {
		return err
	}
	defer stop()
	if cmd == nil {
		select {
		case <-ctx.Done():
			return nil
		case <-s.Conn.Done():
			return fmt.Errorf("lost the agent: %w", s.Conn.Err())
		}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %q: %w", o.Command[0], err)
	}
	// The exit error is kept whole: exitError turns it into the plugin's.
	var waitErr error
	_, lost, _ := exitcode.Wait(ctx, s.Conn.Done(),
		func() (int, error) { waitErr = cmd.Wait(); return 0, nil },
		nil, func() { _ = cmd.Process.Kill() })
	if lost {
		// The command's exit is our doing; the lost agent is what the user needs to hear.
		if waitErr != nil {
			klog.V(2).InfoS("command stopped after the agent was lost", "command", o.Command[0], "err", waitErr)
		}
		return fmt.Errorf("lost the agent: %w", s.Conn.Err())
	}
	return exitError(o.Command[0], waitErr)
}

// stealEndWait bounds the wait for the agent to confirm that the steal is over.
const stealEndWait = 3 * time.Second

// Attach starts the steal on a session that is up and serves it until the returned stop is called or
// ctx ends. dial reaches the local process; nil dials LOCAL on --local-address. exec uses it to
// deliver stolen connections inside its command's namespace.
func (o *Options) Attach(ctx context.Context, s *session.Session, dial forward.LocalDialer) (stop func(), err error) {
	spec := wire.StealSpec{
		StealProbes:      o.StealProbes,
		FlushConnections: o.FlushConnections,
		DetectTimeout:    wire.Millis(o.DetectTimeout),
		PassedEvents:     o.Output == "json",
	}
	locals := map[int]string{}
	for _, p := range o.ports {
		spec.Ports = append(spec.Ports, p.Port)
		locals[p.Port] = net.JoinHostPort(o.LocalAddress, strconv.Itoa(p.Local))
	}
	if !o.filter.Empty() {
		spec.Filter = o.filter
	}
	events, err := s.Conn.Steal(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("start stealing in pod %s/%s: %w", s.Target.Pod.Namespace, s.Target.Pod.Name, err)
	}
	srv := &server{locals: locals, out: newPrinter(o.Out, o.ErrOut, o.Output == "json"), dial: dial}
	er := wire.NewEventReader(events)
	ready, err := srv.readReady(er)
	if err != nil {
		events.Close()
		return nil, fmt.Errorf("start stealing: %w", err)
	}
	if o.Session.Quiet {
		// Even quiet, a script needs to know when the steal is in place, as port-forward's
		// "Forwarding from" line tells it.
		fmt.Fprintf(o.ErrOut, "stealing %s\n", o.describe(ready))
	} else {
		s.Progress.Stepf("stealing %s", o.describe(ready))
	}
	sctx, cancel := context.WithCancel(ctx)
	go srv.serve(sctx, s.Conn)
	printed := make(chan struct{})
	go func() {
		defer close(printed)
		srv.printEvents(er)
	}()
	return func() {
		// The agent ends the stream once its redirect is gone: waiting for that means that when the
		// plugin exits, a new connection to the pod reaches the app, not a redirect being torn down.
		_ = events.CloseWrite()
		select {
		case <-printed:
		case <-time.After(stealEndWait):
			srv.out.flush()
		}
		cancel()
		events.Close()
	}, nil
}

// exitError passes a command's exit code on; a command that ran and failed is not the plugin's error.
func exitError(name string, err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return &exitcode.Error{Command: name, Code: ee.ExitCode()}
	}
	if err != nil {
		return fmt.Errorf("run %q: %w", name, err)
	}
	return nil
}

func (o *Options) describe(ready wire.StealEvent) string {
	sorted := append([]target.PortSpec(nil), o.ports...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Port < sorted[j].Port })
	var parts []string
	for _, p := range sorted {
		parts = append(parts, fmt.Sprintf("port %d -> %s", p.Port, net.JoinHostPort(o.LocalAddress, strconv.Itoa(p.Local))))
	}
	what := "every connection"
	if !o.filter.Empty() {
		what = "matching HTTP requests"
	}
	d := fmt.Sprintf("%s (%s", strings.Join(parts, ", "), what)
	if !o.StealProbes {
		d += ", probes excepted"
	}
	if o.FlushConnections {
		d += fmt.Sprintf(", %d open connections reset", ready.Flushed)
	}
	return d + ")"
}

// LocalPorts are the local ports that receive the connections, once the ports are completed.
func (o *Options) LocalPorts() []int {
	var out []int
	for _, p := range o.ports {
		out = append(out, p.Local)
	}
	return out
}
