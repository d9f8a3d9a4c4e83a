// Package exec implements `kubectl trafficlab exec`: a local command with the pod's outgoing network
// (its connections, datagrams and DNS go out from the pod), optionally receiving the pod's stolen or
// mirrored incoming traffic, without root.
package exec

import (
	"context"
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"runtime"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/kubectl/pkg/util/templates"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/mirror"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/session"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/steal"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/exitcode"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/httpfilter"
	"github.com/trafficlab/kubectl-trafficlab/pkg/local/deliver"
	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/egress"
	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/sandbox"
)

var (
	execLong = templates.LongDesc(`
		Run a local command with the network view of a pod: its outgoing TCP and UDP connections
		and its DNS queries go out from the pod, so cluster Services answer by their names
		("redis", "redis.other-ns", FQDNs) with the pod's search domains, while localhost is
		still your machine's.

		On Linux the command runs in its own user and network namespace, with a user-space TCP/IP
		stack behind a TUN device: every program works (static binaries too), without root and
		without touching your machine's network. The kernel must allow unprivileged user
		namespaces and /dev/net/tun must be readable and writable by you. Elsewhere, or with
		--proxy, the command gets a local SOCKS5 and HTTP proxy through the pod instead, in
		ALL_PROXY, HTTP_PROXY and HTTPS_PROXY; only programs that honour those go through it.

		--local keeps destinations (names, addresses, CIDRs, each with an optional port) on your
		machine, everything else goes through the pod; --remote does the opposite. Names are
		matched when they are resolved.

		With --steal or --mirror the command also receives the pod's incoming traffic on its
		LOCAL port, as the steal and mirror commands would deliver it, inside its namespace.

		The session ends when the command exits, and the command's exit code is the plugin's. As
		with kubectl, one pod is used; when it goes away (deleted, evicted) and TYPE/NAME named a
		workload or a Service, or -l a selector, the command keeps running with the network of
		another ready pod of it, and one line says so (not with --steal or --mirror, which end).`)

	execExample = templates.Examples(`
		# Run a local build of the service with the pod's network
		kubectl trafficlab exec deploy/api -- go run ./cmd/api

		# Keep the database local, send everything else through the pod
		kubectl trafficlab exec deploy/api --local db:5432 -- ./api

		# Also take the pod's incoming requests on port 8080
		kubectl trafficlab exec deploy/api --steal 8080 --header-filter '^X-Dev: me$' -- ./api

		# Without namespaces: through a SOCKS5/HTTP proxy
		kubectl trafficlab exec deploy/api --proxy -- curl http://redis:6379`)
)

// Options holds what exec needs to run.
type Options struct {
	Target    target.Options
	Session   session.Options
	StealArg  string
	MirrorArg string
	Filter    httpfilter.Flags
	Local     []string
	Remote    []string
	Proxy     bool
	// AddNetRaw adds NET_RAW to a --mirror agent instead of keeping the runtime's default.
	AddNetRaw bool
	Command   []string
	// AllowUnownedRedirect is --steal's steal.Options.AllowUnownedRedirect.
	AllowUnownedRedirect bool

	steal       *steal.Options
	mirror      *mirror.Options
	egress      *egress.Filter
	configFlags *genericclioptions.ConfigFlags
	kube        target.Kube
	// sandboxErr says why the namespace cannot be used here (Complete); Validate refuses with it.
	sandboxErr error

	genericiooptions.IOStreams
}

// NewOptions returns Options with the defaults.
func NewOptions(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *Options {
	return &Options{IOStreams: streams, configFlags: configFlags, Session: session.NewOptions()}
}

// NewCmdExec returns the exec command.
func NewCmdExec(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *cobra.Command {
	return newCmd(NewOptions(streams, configFlags))
}

func newCmd(o *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:                   "exec TYPE/NAME [--steal PORT[:LOCAL] | --mirror PORT[:LOCAL]] [--local DEST ...] [--remote DEST ...] [--proxy] -- COMMAND [ARGS...]",
		DisableFlagsInUseLine: true,
		ValidArgsFunction:     target.CompletionFunc(o.configFlags),
		Short:                 "Run a local command with a pod's outgoing network (and optionally its incoming traffic)",
		Long:                  execLong,
		Example:               execExample,
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
	o.Target.AddFlags(f)
	f.StringVar(&o.StealArg, "steal", "", "Also steal the pod's port, PORT[:LOCAL], and deliver its connections to the command on LOCAL (defaults to PORT).")
	f.BoolVar(&o.AllowUnownedRedirect, "allow-unowned-redirect", false, "With --steal, steal even on a node whose kernel (before 5.12) cannot remove the redirect by itself should the whole agent container be killed; the next session in the pod removes it.")
	f.StringVar(&o.MirrorArg, "mirror", "", "Also mirror the pod's port, PORT[:LOCAL], to the command on LOCAL (defaults to PORT).")
	o.Filter.AddFlags(f, "Steal or mirror")
	f.BoolVar(&o.AddNetRaw, "add-net-raw", false, "With --mirror: add NET_RAW to the agent (dropping every other capability) instead of relying on the container runtime's default (needed on CRI-O; refused by PodSecurity baseline).")
	f.StringArrayVar(&o.Local, "local", nil, "Reach this destination from your machine, not through the pod: HOST, IP or CIDR, with an optional :PORT (e.g. db:5432, 10.0.0.0/8). Repeatable.")
	f.StringArrayVar(&o.Remote, "remote", nil, "Send only this destination through the pod, everything else from your machine: HOST, IP or CIDR, with an optional :PORT. Repeatable.")
	f.BoolVar(&o.Proxy, "proxy", runtime.GOOS != "linux", "Give the command a SOCKS5 and HTTP proxy (ALL_PROXY, HTTP_PROXY, HTTPS_PROXY) instead of its own network namespace.")
	o.Session.AddFlags(f)
	return cmd
}

// Complete reads flags, arguments and the kubeconfig, and finds out whether the namespace can be used.
func (o *Options) Complete(cmd *cobra.Command, args []string) error {
	if at := cmd.ArgsLenAtDash(); at >= 0 {
		o.Command = args[at:]
		args = args[:at]
	}
	if len(args) > 1 {
		return fmt.Errorf("exec takes one TYPE/NAME, got %q; the command goes after --", args)
	}
	if err := o.Target.SetResource(args); err != nil {
		return err
	}
	f, err := egress.NewFilter(o.Local, o.Remote)
	if err != nil {
		return err
	}
	o.egress = f
	if o.StealArg != "" {
		st := steal.NewOptions()
		st.PortArgs, st.Filter, st.AllowUnownedRedirect = []string{o.StealArg}, o.Filter, o.AllowUnownedRedirect
		o.steal = &st
		if err := o.steal.Complete(); err != nil {
			return fmt.Errorf("--steal: %w", err)
		}
	}
	if o.MirrorArg != "" {
		m := mirror.NewOptions()
		m.PortArgs, m.Filter = []string{o.MirrorArg}, o.Filter
		o.mirror = &m
		if err := o.mirror.Complete(); err != nil {
			return fmt.Errorf("--mirror: %w", err)
		}
	}
	if !o.Proxy {
		o.sandboxErr = sandbox.Check()
	}
	o.kube, err = o.Target.LoadKube(o.configFlags)
	return err
}

// Validate checks the options; no I/O.
func (o *Options) Validate() error {
	if err := o.Target.Require("kubectl trafficlab exec deploy/api -- ./api"); err != nil {
		return err
	}
	if len(o.Command) == 0 {
		return errors.New("a command is required after --, e.g. kubectl trafficlab exec deploy/api -- ./api")
	}
	if o.steal != nil && o.mirror != nil {
		return errors.New("--steal and --mirror cannot be combined; choose one")
	}
	if o.AddNetRaw && o.mirror == nil {
		return errors.New("--add-net-raw is for --mirror, whose agent captures with NET_RAW; without --mirror the agent needs no NET_RAW")
	}
	if o.steal == nil && o.mirror == nil && !o.Filter.Filter().Empty() {
		return errors.New("--header-filter, --path-filter and --method select what --steal or --mirror takes; add one of them")
	}
	if o.AllowUnownedRedirect && o.steal == nil {
		return errors.New("--allow-unowned-redirect is for --steal; add it or drop the flag")
	}
	if o.steal != nil {
		if err := o.steal.Validate(); err != nil {
			return fmt.Errorf("--steal: %w", err)
		}
	}
	if o.mirror != nil {
		if err := o.mirror.Validate(); err != nil {
			return fmt.Errorf("--mirror: %w", err)
		}
	}
	if o.sandboxErr != nil {
		return o.sandboxErr
	}
	return o.Session.Validate()
}

// check runs once the target is known, before anything changes in the cluster.
func (o *Options) check(ctx context.Context, t *target.Target) ([]string, error) {
	switch {
	case o.steal != nil:
		return o.steal.Check(t, o.Target.Named())
	case o.mirror != nil:
		return o.mirror.Check(ctx, o.kube.Client, t)
	}
	if t.Replicas > 1 {
		return []string{fmt.Sprintf("%d ready pods match; the command uses pod %s's network", t.Replicas, t.Pod.Name)}, nil
	}
	return nil, nil
}

// Run starts the session, the command's network and the command, and returns the command's exit.
func (o *Options) Run(ctx context.Context) error {
	req := o.request(ctx)
	s, err := session.Start(ctx, o.kube, o.Session, req, o.ErrOut)
	if err != nil {
		return err
	}
	// A workload's pod that goes away is replaced by another and the command goes on; not with
	// --steal or --mirror, which the agent of the new pod would not have.
	f := session.Follow(ctx, o.kube, o.Session, req, s, o.ErrOut, o.steal == nil && o.mirror == nil)
	defer f.Close()
	if s.Tunnel.Welcome().ResolvConf == "" {
		fmt.Fprintln(o.ErrOut, "warning: the agent could not read the pod's /etc/resolv.conf; names are resolved by the pod's loopback, without search domains")
	}
	var code int
	if o.Proxy {
		code, err = o.runProxied(ctx, s, f)
	} else {
		code, err = o.runSandboxed(ctx, s, f)
	}
	if err != nil {
		return err
	}
	if code != 0 {
		return &exitcode.Error{Command: o.Command[0], Code: code}
	}
	return nil
}

// request is the agent this exec asks for: the capabilities of --steal or --mirror, if any.
func (o *Options) request(ctx context.Context) session.Request {
	var caps inject.Capabilities
	switch {
	case o.steal != nil:
		caps = steal.Capabilities
	case o.mirror != nil:
		caps = o.mirror.Capabilities()
	}
	return session.Request{
		Target: o.Target, Capabilities: caps, AddNetRaw: o.AddNetRaw,
		Check: func(t *target.Target) ([]string, error) { return o.check(ctx, t) },
	}
}

// attach starts --steal or --mirror, delivering through dial; stop is a no-op without either.
func (o *Options) attach(ctx context.Context, s *session.Session, dial deliver.Dialer) (func(), error) {
	switch {
	case o.steal != nil:
		return o.steal.Attach(ctx, s, dial, o.Out, o.ErrOut)
	case o.mirror != nil:
		return o.mirror.Attach(ctx, s, dial, o.Out, o.ErrOut)
	}
	return func() {}, nil
}

// localPorts are the ports the command serves itself for --steal or --mirror.
func (o *Options) localPorts() []int {
	var ports []target.PortSpec
	switch {
	case o.steal != nil:
		ports = o.steal.Ports()
	case o.mirror != nil:
		ports = o.mirror.Ports()
	}
	var out []int
	for _, p := range ports {
		out = append(out, p.Local)
	}
	return out
}

// waitCommand waits for the command: an interrupt is passed on (a script's SIGTERM to the plugin
// reaches no one else) with exitcode.Grace to end, a lost agent ends it at once.
func (o *Options) waitCommand(ctx context.Context, f *session.Follower, wait func() (int, error), signal func(os.Signal), kill func()) (int, error) {
	return f.WaitCommand(ctx, o.Command[0], wait, func() { signal(os.Interrupt) }, kill)
}

// exitCode is an exec.Cmd's exit as a shell reports it.
func exitCode(cmd *osexec.Cmd, err error) (int, error) {
	var ee *osexec.ExitError
	if errors.As(err, &ee) {
		if code := ee.ExitCode(); code >= 0 {
			return code, nil
		}
		return 128 + signalNumber(ee), nil
	}
	if err != nil {
		return 0, fmt.Errorf("run %q: %w", cmd.Path, err)
	}
	return 0, nil
}
