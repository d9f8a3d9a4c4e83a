// Package session is the path every verb shares: resolve the target, add or reuse the agent, and open
// a tunnel to it, printing a timed progress line for each step. Verbs then use the tunnel, and wait for
// their end here (Ctrl-C, their user's command, or a lost agent).
package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/transport"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/tunnel"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/progress"
	"github.com/trafficlab/kubectl-trafficlab/pkg/version"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Data paths.
const (
	DataAuto        = "auto"
	DataPortForward = "portforward"
	DataExec        = "exec"
)

// Idle timeouts of a new agent, unless --agent-idle-timeout says otherwise. A privileged agent (NET_ADMIN
// or NET_RAW) is a capability that anyone allowed to exec into the pod can use while it stays, so it
// leaves soon after its last session; an unprivileged one stays longer for the next session to reuse.
const (
	DefaultIdleTimeout           = 10 * time.Minute
	DefaultPrivilegedIdleTimeout = time.Minute
)

// Options are the agent flags every verb shares.
type Options struct {
	// AgentImage is --agent-image, its default $TRAFFICLAB_AGENT_IMAGE or the built-in image;
	// AgentImageSource says which (version.Source*).
	AgentImage       string
	AgentImageSource string
	// AgentRegistry is --agent-registry: the built-in image under another registry, tag and digest kept.
	AgentRegistry    string
	ImagePullPolicy  string
	AgentIdleTimeout time.Duration
	// AgentIdleTimeoutSet says the user gave --agent-idle-timeout; otherwise the default depends on the
	// capabilities the verb needs.
	AgentIdleTimeoutSet bool
	AllowHostNetwork    bool
	Transport           string
	DataPath            string
	DataConnections     int
	AgentWaitTimeout    time.Duration
	Quiet               bool

	// AgentMemoryBudget is a Kubernetes quantity (256Mi); agentMemoryBudget parses it.
	AgentMemoryBudget string
	// ReconnectGrace is how long the agent keeps the session while the tunnel is lost, and the
	// plugin reconnects; 0 ends the session with the tunnel.
	ReconnectGrace time.Duration
}

// NewOptions returns the defaults.
func NewOptions() Options {
	image := version.Get().DefaultAgentImage(os.Getenv)
	return Options{
		AgentImage:       image.Ref,
		AgentImageSource: image.Source,
		AgentIdleTimeout: DefaultIdleTimeout,
		Transport:        string(transport.ProtocolAuto),
		DataPath:         DataAuto,
		DataConnections:  2,
		AgentWaitTimeout: 2 * time.Minute,

		AgentMemoryBudget: resource.NewQuantity(wire.DefaultAgentMemoryBudget, resource.BinarySI).String(),
		ReconnectGrace:    wire.DefaultReconnectGrace,
	}
}

// AddFlags registers the shared flags.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	o.AddImageFlags(fs)
	fs.Var(&idleTimeoutFlag{d: &o.AgentIdleTimeout, set: &o.AgentIdleTimeoutSet}, "agent-idle-timeout",
		fmt.Sprintf("How long the agent stays in the pod with no session before it exits (ephemeral containers cannot be removed); %s for an agent with NET_ADMIN or NET_RAW, at most %s. 0 keeps an agent without them until the pod ends.",
			DefaultPrivilegedIdleTimeout, wire.MaxPrivilegedIdleTimeout))
	fs.BoolVar(&o.AllowHostNetwork, "allow-host-network", o.AllowHostNetwork, "Allow a hostNetwork pod: the agent then works on the node's network, not a pod's, and a steal takes the port from every client addressed to the node itself.")
	fs.StringVar(&o.Transport, "transport", o.Transport, "How streams reach the kubelet: auto, spdy or websocket.")
	fs.StringVar(&o.DataPath, "data-path", o.DataPath, "How traffic reaches the agent: auto (port-forward, exec when port-forward is forbidden), portforward or exec.")
	fs.IntVar(&o.DataConnections, "data-connections", o.DataConnections, "Parallel data connections to the agent.")
	fs.DurationVar(&o.AgentWaitTimeout, "agent-wait-timeout", o.AgentWaitTimeout, "How long to wait for the agent to start.")
	fs.BoolVarP(&o.Quiet, "quiet", "q", o.Quiet, "Print no progress lines.")
	fs.DurationVar(&o.ReconnectGrace, "reconnect-grace", o.ReconnectGrace, fmt.Sprintf("How long the agent keeps the session when the connection to it is lost (laptop sleep, network change) while the plugin reconnects; meanwhile the app answers every request. 0 ends the session with the connection; at most %s.", wire.MaxReconnectGrace))
	fs.StringVar(&o.AgentMemoryBudget, "agent-memory-budget", o.AgentMemoryBudget, "Memory the agent container may use in the pod (its processes, socket buffers and capture rings); past it, mirror copies are dropped and counted and stolen responses wait, while the app's traffic goes on. An agent already running keeps its own.")
}

// AddImageFlags registers the flags that choose the agent image and its pull policy; doctor's dry run
// takes the same ones.
func (o *Options) AddImageFlags(fs *pflag.FlagSet) {
	fs.Var(&imageFlag{o: o}, "agent-image", fmt.Sprintf("Agent image to add to the pod: the one released with this plugin, or a copy of it; $%s, when set, replaces the default.", version.AgentImageEnv))
	fs.StringVar(&o.AgentRegistry, "agent-registry", o.AgentRegistry, "Registry, with an optional path, that holds a copy of the released agent image: the image is pulled from REGISTRY[/PATH]/trafficlab-agent with the released tag and digest. Not with --agent-image.")
	fs.StringVar(&o.ImagePullPolicy, "image-pull-policy", o.ImagePullPolicy, "The agent's image pull policy: Always, IfNotPresent or Never. Empty takes the cluster's default.")
}

// imageFlag is --agent-image, which remembers that it was given.
type imageFlag struct{ o *Options }

func (f *imageFlag) String() string {
	if f.o == nil {
		return ""
	}
	return f.o.AgentImage
}

func (f *imageFlag) Set(s string) error {
	f.o.AgentImage, f.o.AgentImageSource = s, version.SourceFlag
	return nil
}

func (f *imageFlag) Type() string { return "string" }

// Image is the agent image the flags choose, checked. It does no I/O.
func (o *Options) Image() (version.AgentImage, error) {
	if o.AgentRegistry != "" {
		if o.AgentImageSource == version.SourceFlag {
			return version.AgentImage{}, errors.New("--agent-image and --agent-registry cannot be used together: --agent-registry moves the released image to another registry, --agent-image names the image itself")
		}
		return version.Get().Rehosted(o.AgentRegistry)
	}
	if o.AgentImage == "" {
		return version.AgentImage{}, fmt.Errorf("%s must not be empty", o.imageSource())
	}
	return version.AgentImage{Ref: o.AgentImage, Source: o.imageSource()}.Parse()
}

func (o *Options) imageSource() string {
	if o.AgentImageSource == "" {
		return version.SourceFlag
	}
	return o.AgentImageSource
}

// Validate checks the flags only.
func (o *Options) Validate() error {
	if _, err := o.Image(); err != nil {
		return err
	}
	switch corev1.PullPolicy(o.ImagePullPolicy) {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		return fmt.Errorf("--image-pull-policy must be Always, IfNotPresent or Never, not %q", o.ImagePullPolicy)
	}
	if o.AgentIdleTimeout < 0 {
		return fmt.Errorf("--agent-idle-timeout must not be negative, not %q", o.AgentIdleTimeout)
	}
	if _, err := agentMemoryBudget(o.AgentMemoryBudget); err != nil {
		return err
	}
	if o.ReconnectGrace < 0 || o.ReconnectGrace > wire.MaxReconnectGrace {
		return fmt.Errorf("--reconnect-grace must be from 0 to %s, not %q", wire.MaxReconnectGrace, o.ReconnectGrace)
	}
	if _, err := transport.ParseProtocol(o.Transport); err != nil {
		return fmt.Errorf("--transport: %w", err)
	}
	switch o.DataPath {
	case DataAuto, DataPortForward, DataExec:
	default:
		return fmt.Errorf("--data-path must be auto, portforward or exec, not %q", o.DataPath)
	}
	if o.DataConnections < 1 || o.DataConnections > 16 {
		return fmt.Errorf("--data-connections must be from 1 to 16, not %d", o.DataConnections)
	}
	if o.AgentWaitTimeout <= 0 {
		return fmt.Errorf("--agent-wait-timeout must be positive, not %q", o.AgentWaitTimeout)
	}
	return nil
}

// idleTimeoutFlag is a duration flag that remembers whether it was given.
type idleTimeoutFlag struct {
	d   *time.Duration
	set *bool
}

func (f *idleTimeoutFlag) String() string {
	if f.d == nil {
		return ""
	}
	return f.d.String()
}

func (f *idleTimeoutFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*f.d, *f.set = d, true
	return nil
}

func (f *idleTimeoutFlag) Type() string { return "duration" }

// idleTimeout is the idle timeout of a new agent with caps, refusing what would let a privileged agent
// stay for long.
func (o *Options) idleTimeout(caps inject.Capabilities) (time.Duration, error) {
	if caps == 0 {
		return o.AgentIdleTimeout, nil
	}
	if !o.AgentIdleTimeoutSet {
		return DefaultPrivilegedIdleTimeout, nil
	}
	if o.AgentIdleTimeout <= 0 || o.AgentIdleTimeout > wire.MaxPrivilegedIdleTimeout {
		return 0, fmt.Errorf("--agent-idle-timeout must be from 1s to %s for an agent with %s, which anyone allowed to exec into the pod can use while it stays, not %q",
			wire.MaxPrivilegedIdleTimeout, caps, o.AgentIdleTimeout)
	}
	return o.AgentIdleTimeout, nil
}

// AgentSpec is the agent a verb needing caps adds, from the flags; doctor's dry run sends the same one.
func (o *Options) AgentSpec(caps inject.Capabilities, addNetRaw bool) (inject.AgentSpec, error) {
	idle, err := o.idleTimeout(caps)
	if err != nil {
		return inject.AgentSpec{}, err
	}
	image, err := o.Image()
	if err != nil {
		return inject.AgentSpec{}, err
	}
	spec := inject.AgentSpec{
		Image:            image.Ref,
		PullPolicy:       corev1.PullPolicy(o.ImagePullPolicy),
		Capabilities:     caps,
		AddNetRaw:        addNetRaw,
		IdleTimeout:      idle,
		MemoryLimitBytes: 64 << 20,
	}
	// Validate accepted it.
	spec.MemoryBudget, _ = agentMemoryBudget(o.AgentMemoryBudget)
	if err := spec.Validate(); err != nil {
		return inject.AgentSpec{}, err
	}
	return spec, nil
}

// Request is what one verb asks for.
type Request struct {
	Target       target.Options
	Capabilities inject.Capabilities
	// AddNetRaw adds NET_RAW instead of keeping the runtime's default (see inject.AgentSpec).
	AddNetRaw bool
	// Check runs once the target is known and before anything changes in the cluster, so that a verb
	// refuses bad input (a port the Service does not have) with the pod left as it was. Its warnings
	// (what the verb will not do as the user may expect) are printed when it accepts the target.
	Check func(*target.Target) (warnings []string, err error)
}

// Session is one run of a verb by one user: today one target pod, reached through one tunnel to
// its agent.
type Session struct {
	Target *target.Target
	Agent  string
	Tunnel *tunnel.Tunnel
	// Progress goes on with the same clock, so a verb's own steps read as part of the same start-up.
	Progress *progress.Printer
	data     io.Closer
	errOut   io.Writer
	quiet    bool
	// stopWatch ends the watch that reports the pod's container restarts.
	stopWatch context.CancelFunc
}

// Close ends the tunnel; the agent's main process ends the session and releases what it held.
func (s *Session) Close() error {
	if s.stopWatch != nil {
		s.stopWatch()
	}
	err := s.Tunnel.Close()
	if s.data != nil {
		s.data.Close()
	}
	return err
}

// Start runs the shared path. Progress goes to errOut, as kubectl's own progress does, so that a verb's
// stdout stays its own.
func Start(ctx context.Context, kube target.Kube, o Options, req Request, errOut io.Writer) (*Session, error) {
	client := kube.Client
	spec, err := o.AgentSpec(req.Capabilities, req.AddNetRaw)
	if err != nil {
		return nil, err
	}
	p := progress.New(errOut, o.Quiet)
	// Who runs the session is one more request to the API server; it runs while the target resolves.
	whoc := make(chan target.Identity, 1)
	go func() { whoc <- target.WhoAmI(ctx, kube) }()
	proto, _ := transport.ParseProtocol(o.Transport)
	what := req.Target.Resource
	if what == "" {
		what = "pods matching " + fmt.Sprintf("%q", req.Target.Selector)
	}
	p.Stepf("resolving %s in namespace %s", what, req.Target.Namespace)
	var tgt *target.Target
	tgt, err = target.Resolve(ctx, client, req.Target)
	if err != nil {
		return nil, err
	}
	if req.Check != nil {
		warnings, err := req.Check(tgt)
		if err != nil {
			return nil, err
		}
		for _, w := range warnings {
			fmt.Fprintf(errOut, "warning: %s\n", w)
		}
	}
	pod := tgt.Pod
	agent, reuse, why := inject.FindReusable(pod, spec)
	name := agent.Name
	if why != "" {
		p.Stepf("%s", why)
	}
	dataPath := o.DataPath
	// Reusing an agent with a capability lends it to this session, so it takes the permission that adding
	// one takes: otherwise a leftover NET_ADMIN agent would give it to anyone with pods/exec (M8).
	needs := target.Needs{Inject: !reuse || spec.Privileged(), Exec: true, PortForward: dataPath != DataExec, Transport: proto}
	if err := target.Preflight(ctx, client, pod.Namespace, pod.Name, needs); err != nil {
		var missing *inject.MissingPermissionError
		if dataPath != DataAuto || !errors.As(err, &missing) || !onlyPortForward(missing) {
			return nil, err
		}
		// Exec carries data too, three times slower; better slow than refused.
		fmt.Fprintf(errOut, "warning: %v; carrying data over exec instead (slower)\n", err)
		dataPath = DataExec
		needs.PortForward = false
		if err := target.Preflight(ctx, client, pod.Namespace, pod.Name, needs); err != nil {
			return nil, err
		}
	}
	switch {
	case !reuse:
		c := inject.BuildAgentContainer(pod, spec)
		name = c.Name
		p.Stepf("adding agent %s to pod %s/%s", name, pod.Namespace, pod.Name)
		if _, err := inject.Inject(ctx, client, pod, c); err != nil {
			return nil, err
		}
		p.Stepf("waiting for agent %s to start", name)
		if err := o.waitAgent(ctx, client, pod, name, 0, "", p.Stepf); err != nil {
			return nil, err
		}
	case agent.Waiting != "":
		// The kubelet keeps retrying the pull of an agent it could not start; another container would
		// only wait on the same pull, and stay in the pod for good.
		p.Stepf("waiting for agent %s in pod %s/%s (%s)", name, pod.Namespace, pod.Name, agent.Waiting)
		if err := o.waitAgent(ctx, client, pod, name, PullRetryGrace, agent.Waiting, p.Stepf); err != nil {
			return nil, err
		}
	default:
		p.Stepf("reusing agent %s in pod %s/%s", name, pod.Namespace, pod.Name)
	}
	who := <-whoc
	conn, closer, via, err := dial(ctx, kube, proto, dataPath, o, pod, name, who, errOut)
	if err != nil {
		return nil, err
	}
	p.Stepf("connected to agent %s (session %s, data via %s)", name, conn.Welcome().SessionID, via)
	wctx, stopWatch := context.WithCancel(ctx)
	go watchRestarts(wctx, client, pod, func(line string) { fmt.Fprintln(errOut, line) })
	return &Session{Target: tgt, Agent: name, Tunnel: conn, Progress: p, data: closer, errOut: errOut, quiet: o.Quiet, stopWatch: stopWatch}, nil
}

// PullRetryGrace is how long a session waits on an agent that another session added and whose image
// pull failed, before it gives up with the kubelet's reason: the kubelet's first image back-off, so an
// agent that failed once is retried within it. A pull that fails again meanwhile ends the wait at once.
const PullRetryGrace = 10 * time.Second

// waitAgent waits, up to --agent-wait-timeout, for agent name in pod to run, with a progress line for
// each state the kubelet reports on the way (ImagePullBackOff: ...) but the one already told (shown).
func (o *Options) waitAgent(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, name string, grace time.Duration, shown string, stepf func(string, ...any)) error {
	wctx, cancel := context.WithTimeout(ctx, o.AgentWaitTimeout)
	defer cancel()
	_, err := inject.WaitRunning(wctx, client, pod.Namespace, pod.Name, name, inject.WaitOptions{
		PullGrace: grace,
		Progress: func(state string) {
			if state != shown {
				stepf("waiting for agent %s (%s)", name, state)
			}
			shown = ""
		},
	})
	return err
}

// agentCommand is the exec'd attachment to agent container name; at -v=5 it logs every connection too.
func agentCommand(name string) []string {
	cmd := []string{inject.AgentBinary, "attach", "--name=" + name}
	if klog.V(5).Enabled() {
		cmd = append(cmd, "--debug")
	}
	return cmd
}

// agentLog shows the agent's own log with -v=4 and above, as kubectl shows its requests at -v=6.
func agentLog(errOut io.Writer) io.Writer {
	if !klog.V(4).Enabled() {
		return nil
	}
	return &prefixWriter{out: errOut, prefix: "agent: "}
}

// prefixWriter writes each line with a prefix; a partial line waits for its end.
type prefixWriter struct {
	mu     sync.Mutex
	out    io.Writer
	prefix string
	buf    []byte
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		_, _ = fmt.Fprintf(w.out, "%s%s\n", w.prefix, w.buf[:i])
		w.buf = w.buf[i+1:]
	}
}

func onlyPortForward(e *inject.MissingPermissionError) bool {
	for _, r := range e.Rules {
		if r.Resource != "pods/portforward" {
			return false
		}
	}
	return len(e.Rules) > 0
}

// pluginTunnelConfig gives downloads a larger window than the agent's (wire.PluginStreamWindow says
// why); docs/protocol.md quotes both.
func pluginTunnelConfig() wire.MuxConfig {
	c := wire.DefaultMuxConfig()
	c.StreamWindow = wire.PluginStreamWindow
	return c
}

// agentMemoryBudget parses --agent-memory-budget into bytes.
func agentMemoryBudget(s string) (int64, error) {
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return 0, fmt.Errorf("--agent-memory-budget must be a size such as 256Mi, not %q", s)
	}
	if q.Value() < wire.MinAgentMemoryBudget {
		return 0, fmt.Errorf("--agent-memory-budget must be at least %s (the agent's own baseline), not %q",
			resource.NewQuantity(wire.MinAgentMemoryBudget, resource.BinarySI), s)
	}
	return q.Value(), nil
}
