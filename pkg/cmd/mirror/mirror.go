// Package mirror implements `kubectl trafficlab mirror`: a copy of the pod's incoming connections is
// replayed to a local port while the pod's app keeps answering them.
package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/kubectl/pkg/util/templates"

	"github.com/trafficlab/kubectl-trafficlab/pkg/inject"
	"github.com/trafficlab/kubectl-trafficlab/pkg/session"
	"github.com/trafficlab/kubectl-trafficlab/pkg/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

var (
	mirrorLong = templates.LongDesc(`
		Replay a copy of a pod's incoming connections to a process on your machine, while the pod's
		app keeps answering them.

		The agent sniffs the pod's traffic on the port (it needs only NET_RAW, which container
		runtimes such as containerd give a root container by default, so it adds no capability and
		is admitted at the PodSecurity "baseline" level), reassembles each new connection's client
		bytes and sends them to LOCAL, whose answers are read and thrown away. The pod's own traffic
		is only observed, never slowed: a copy that cannot keep up is dropped and counted.
		Connections already open when the mirror starts are not copied (their beginning was not
		seen), and a connection the capture lost bytes of is cut at the loss.`)

	mirrorExample = templates.Examples(`
		# Replay what port 8080 of pod web receives to local port 8080
		kubectl trafficlab mirror pod/web --port 8080

		# Through a Service's port, to local 9090
		kubectl trafficlab mirror svc/api --port 80:9090`)
)

// Options holds what mirror needs to run.
type Options struct {
	Target       target.Options
	Session      session.Options
	PortArgs     []string
	LocalAddress string
	AddNetRaw    bool

	ports       []target.PortSpec
	configFlags *genericclioptions.ConfigFlags
	config      *rest.Config
	client      kubernetes.Interface

	genericiooptions.IOStreams
}

// NewOptions returns Options with the defaults.
func NewOptions(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *Options {
	return &Options{IOStreams: streams, configFlags: configFlags, Session: session.NewOptions(), LocalAddress: "127.0.0.1"}
}

// NewCmdMirror returns the mirror command.
func NewCmdMirror(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *cobra.Command {
	return newCmd(NewOptions(streams, configFlags))
}

func newCmd(o *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:                   "mirror TYPE/NAME --port REMOTE[:LOCAL] [--port ...]",
		DisableFlagsInUseLine: true,
		Short:                 "Replay a copy of a pod's incoming traffic to a local process",
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
	f.StringArrayVarP(&o.PortArgs, "port", "p", nil, "Pod port to mirror and the local port that receives the copy, REMOTE[:LOCAL]; LOCAL defaults to REMOTE. With a Service, REMOTE is the Service's port.")
	f.StringVar(&o.LocalAddress, "local-address", o.LocalAddress, "Address of the local process that receives the copy.")
	f.BoolVar(&o.AddNetRaw, "add-net-raw", false, "Add NET_RAW to the agent instead of relying on the container runtime's default (needed on CRI-O; refused by PodSecurity baseline).")
	o.Session.AddFlags(f)
	return cmd
}

// Complete reads flags, arguments and the kubeconfig.
func (o *Options) Complete(_ *cobra.Command, args []string) error {
	if len(args) > 1 {
		return fmt.Errorf("mirror takes one TYPE/NAME, got %q; ports go in --port", args)
	}
	if o.Target.Selector == "" && len(args) == 1 {
		o.Target.Resource = args[0]
	}
	o.ports = nil
	for _, a := range o.PortArgs {
		ps, err := target.ParsePortSpec(a)
		if err != nil {
			return err
		}
		o.ports = append(o.ports, ps)
	}
	k, err := session.LoadKube(o.configFlags)
	if err != nil {
		return err
	}
	o.Target.Namespace, o.config, o.client = k.Namespace, k.Config, k.Client
	return nil
}

// Validate checks the options; no I/O.
func (o *Options) Validate() error {
	if o.Target.Resource == "" && o.Target.Selector == "" {
		return errors.New("TYPE/NAME or -l selector is required, e.g. kubectl trafficlab mirror pod/web --port 8080")
	}
	if len(o.ports) == 0 {
		return errors.New("--port is required, e.g. --port 8080 or --port 80:9090")
	}
	if net.ParseIP(o.LocalAddress) == nil && o.LocalAddress != "localhost" {
		return fmt.Errorf("--local-address %q is not an IP address or localhost", o.LocalAddress)
	}
	return o.Session.Validate()
}

func (o *Options) check(t *target.Target) error {
	ports, warnings, err := target.ResolvePorts(t, o.ports)
	if err != nil {
		return err
	}
	o.ports = ports
	for _, w := range warnings {
		fmt.Fprintf(o.ErrOut, "warning: %s\n", w)
	}
	if t.Replicas > 1 {
		fmt.Fprintf(o.ErrOut, "warning: %d ready pods match; only pod %s is mirrored\n", t.Replicas, t.Pod.Name)
	}
	return nil
}

// Run starts the session and the mirror, and copies connections until interrupted or the agent goes
// away; then it prints the counts.
func (o *Options) Run(ctx context.Context) error {
	s, err := session.Start(ctx, o.config, o.client, o.Session, session.Request{
		Target: o.Target, Capabilities: inject.NetRaw, AddNetRaw: o.AddNetRaw, Check: o.check,
	}, o.ErrOut)
	if err != nil {
		return err
	}
	defer s.Close()
	spec := wire.MirrorSpec{}
	locals := map[int]string{}
	var parts []string
	for _, p := range o.ports {
		spec.Ports = append(spec.Ports, p.Port)
		locals[p.Port] = net.JoinHostPort(o.LocalAddress, strconv.Itoa(p.Local))
		parts = append(parts, fmt.Sprintf("port %d -> %s", p.Port, locals[p.Port]))
	}
	st, err := s.Conn.Mirror(ctx, spec)
	if err != nil {
		return fmt.Errorf("start mirroring in pod %s/%s: %w", s.Target.Pod.Namespace, s.Target.Pod.Name, err)
	}
	defer st.Close()
	s.Progress.Stepf("mirroring %s (new connections; the pod keeps answering)", strings.Join(parts, ", "))
	srv := &server{locals: locals, out: o.Out}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go srv.serve(sctx, s.Conn)
	summary := make(chan string, 1)
	go func() {
		var stats map[string]int64
		if err := json.NewDecoder(st).Decode(&stats); err == nil {
			summary <- fmt.Sprintf("%d connections seen, %d mirrored; not mirrored: %d already open, %d with lost packets, %d too slow, %d refused locally",
				stats["connections"], stats["mirrored"], stats["droppedMidStream"], stats["droppedGap"], stats["droppedSlow"], stats["droppedLocalRefused"])
		}
		close(summary)
	}()
	select {
	case <-ctx.Done():
		_ = st.CloseWrite()
		select {
		case line, ok := <-summary:
			if ok {
				fmt.Fprintln(o.ErrOut, line)
			}
		case <-time.After(5 * time.Second):
		}
		return nil
	case <-s.Conn.Done():
		return fmt.Errorf("lost the agent: %w", s.Conn.Err())
	}
}

// quietFor is how long a local server must send nothing before a mirrored connection is closed.
const quietFor = 500 * time.Millisecond

// server writes each mirrored connection to the local port and discards the answers.
type server struct {
	locals map[int]string
	out    io.Writer
	mu     sync.Mutex
	dialer net.Dialer
}

func (s *server) serve(ctx context.Context, a interface {
	Accept(ctx context.Context) (*wire.Incoming, error)
}) {
	for {
		in, err := a.Accept(ctx)
		if err != nil {
			return
		}
		go s.handle(ctx, in)
	}
}

func (s *server) handle(ctx context.Context, in *wire.Incoming) {
	req := in.Request()
	addr, ok := s.locals[req.Port]
	if req.Kind != wire.KindMirrored || !ok {
		_ = in.Reject(fmt.Errorf("stream %s for port %d: %w", req.Kind, req.Port, wire.ErrUnsupported))
		return
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	c, err := s.dialer.DialContext(dctx, "tcp", addr)
	cancel()
	if err != nil {
		_ = in.Reject(fmt.Errorf("local process at %s: %w", addr, err))
		return
	}
	defer c.Close()
	st, err := in.Accept()
	if err != nil {
		return
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.Close(); c.Close() })
	defer stop()
	start := time.Now()
	var answered, lastAnswer atomic.Int64
	lastAnswer.Store(time.Now().UnixNano())
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				answered.Add(int64(n))
				lastAnswer.Store(time.Now().UnixNano())
			}
			if err != nil {
				return
			}
		}
	}()
	sent, _ := io.Copy(c, st)
	// The copy runs ahead of the local server's answers, so several requests may be waiting in its
	// socket; a half-close now makes servers such as Go's net/http drop those still queued behind a
	// running handler. So the connection stays open until the server has been quiet for a while.
	for waited := time.Duration(0); waited < 30*time.Second; waited += quietFor / 4 {
		select {
		case <-done:
			waited = 30 * time.Second
			continue
		case <-time.After(quietFor / 4):
		}
		if time.Since(time.Unix(0, lastAnswer.Load())) >= quietFor {
			break
		}
	}
	c.Close()
	<-done
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(s.out, "%s mirrored connection from %s to port %d: %d B sent to %s, %d B answered (discarded), %s\n",
		time.Now().Format("15:04:05"), req.Peer, req.Port, sent, addr, answered.Load(), time.Since(start).Round(time.Millisecond))
}
