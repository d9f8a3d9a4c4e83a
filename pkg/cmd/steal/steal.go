// Package steal implements `kubectl trafficlab steal`: the pod's incoming connections (or only the
// HTTP requests a filter selects) on a port are answered by a process on the developer's machine.
package steal

import (
	"context"
	"errors"
	"fmt"
	"os/exec"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/kubectl/pkg/util/templates"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/session"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/steal"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/exitcode"
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
		names the Service's port.

		On a workload (deployment, statefulset, daemonset, replicaset, replicationcontroller, job,
		service or -l) every ready pod is stolen, each with its own agent and tunnel, up to
		--max-pods: a pod that becomes ready during the session is joined as soon as it is, one that
		goes away leaves, and every line names its pod. --one-pod steals one pod only.`)

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
	Target  target.Options
	Session session.Options
	Steal   steal.Options
	Command []string

	configFlags *genericclioptions.ConfigFlags
	kube        target.Kube

	genericiooptions.IOStreams
}

// NewOptions returns Options with the defaults.
func NewOptions(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *Options {
	return &Options{IOStreams: streams, configFlags: configFlags, Session: session.NewOptions(), Steal: steal.NewOptions()}
}

// NewCmdSteal returns the steal command.
func NewCmdSteal(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *cobra.Command {
	return newCmd(NewOptions(streams, configFlags))
}

func newCmd(o *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:                   "steal TYPE/NAME --port REMOTE[:LOCAL] [--port ...] [filters] [-- COMMAND [ARGS...]]",
		DisableFlagsInUseLine: true,
		ValidArgsFunction:     target.CompletionFunc(o.configFlags),
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
	o.Target.AddFlags(f)
	o.Target.AddWorkloadFlags(f)
	f.StringArrayVarP(&o.Steal.PortArgs, "port", "p", nil, "Pod port to steal and the local port that answers it, REMOTE[:LOCAL]; LOCAL defaults to REMOTE. With a Service, REMOTE is the Service's port. Repeat for several ports.")
	f.StringVar(&o.Steal.LocalAddress, "local-address", o.Steal.LocalAddress, "Address of the local process that answers.")
	o.Steal.Filter.AddFlags(f, "Steal")
	f.BoolVar(&o.Steal.FlushConnections, "flush-connections", false, "Also reset the busy connections already open to the stolen ports, at once, so that their clients reconnect into the steal; requests in flight on them fail, and are counted. Without it only idle connections are reset (their clients reconnect without a failure), busy ones once they become idle, for up to 30s.")
	f.BoolVar(&o.Steal.AllowUnownedRedirect, "allow-unowned-redirect", false, "Steal even on a node whose kernel (before 5.12) cannot remove the redirect by itself should the whole agent container be killed; the next session in the pod removes it.")
	f.BoolVar(&o.Steal.StealProbes, "steal-probes", false, "Steal the kubelet's probe requests too; if they then fail, the kubelet restarts or unreadies the pod.")
	f.DurationVar(&o.Steal.DetectTimeout, "detect-timeout", o.Steal.DetectTimeout, "How long the agent waits for a new connection's first bytes to recognise HTTP and probes; a client that says nothing first (a server-first protocol) waits this long once.")
	f.DurationVar(&o.Steal.HeadTimeout, "head-timeout", o.Steal.HeadTimeout, "With a filter: how long a client may take to send a request's headers before the agent answers 408 and closes the connection, as the app's own slow-header protection would.")
	f.StringVarP(&o.Steal.Output, "output", "o", "", "Output format for the per-request lines: json, or empty for text.")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"json"}, cobra.ShellCompDirectiveNoFileComp))
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
	if err := o.Steal.Complete(); err != nil {
		return err
	}
	var err error
	o.kube, err = o.Target.LoadKube(o.configFlags)
	return err
}

// Validate checks the options; no I/O.
func (o *Options) Validate() error {
	if err := o.Target.Require("kubectl trafficlab steal pod/web --port 80:8080"); err != nil {
		return err
	}
	if err := o.Target.ValidateWorkload(); err != nil {
		return err
	}
	if err := o.Steal.Validate(); err != nil {
		return err
	}
	if err := o.Steal.ValidateHostNetwork(o.Session.AllowHostNetwork); err != nil {
		return err
	}
	return o.Session.Validate()
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
	o.Steal.Fanout = !o.Target.OnePod
	f := o.Steal.NewFanout(nil, o.Out, o.ErrOut)
	s, err := session.StartWorkload(ctx, o.kube, o.Session, session.Request{
		Target: o.Target, Capabilities: steal.Capabilities,
		Check: func(t *target.Target) ([]string, error) { return o.Steal.Check(t, o.Target.Named()) },
	}, o.ErrOut, f.Join)
	if err != nil {
		return err
	}
	defer s.Close()
	f.Announce(s)
	if cmd == nil {
		return s.Wait(ctx)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %q: %w", o.Command[0], err)
	}
	// The command's exit code becomes the plugin's (exitError); a lost agent is the error instead.
	_, err = s.WaitCommand(ctx, o.Command[0],
		func() (int, error) { return 0, exitError(o.Command[0], cmd.Wait()) },
		nil, func() { _ = cmd.Process.Kill() })
	return err
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
