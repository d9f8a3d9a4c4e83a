// Package sessions implements `kubectl trafficlab sessions`: who runs which session on which pod (the
// agents are asked in parallel over exec), and `sessions end ID`, which ends another user's session.
package sessions

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/kubectl/pkg/util/templates"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/transport"
)

var (
	sessionsLong = templates.LongDesc(`
		List the trafficlab sessions in a namespace, or in every namespace with -A: for each
		running agent, its sessions with the user and machine that run them (as their plugins
		reported them: the API server's SelfSubjectReview, else the kubeconfig's user name), the
		verb (steal, mirror, dump; dial for port-forward and exec), ports, filters and since when.
		-o wide adds the bytes, requests (stolen or mirrored) and connections each session carried
		so far. An agent with no
		session is listed too, with the time its idle timeout ends it.

		Each agent is asked over exec, all in parallel: it needs list on pods and create or get on
		pods/exec in the namespace (cluster-wide with -A). An agent that cannot answer (an older
		agent, a pod going away) is named on stderr, and the command then fails after printing the
		others.`)

	sessionsExample = templates.Examples(`
		# The sessions in the current namespace
		kubectl trafficlab sessions

		# The sessions on the pods of deployment api, with bytes, requests and connections so far
		kubectl trafficlab sessions deploy/api -o wide

		# Every session in the cluster, for a script
		kubectl trafficlab sessions -A -o json

		# End session 3f2a9c01b7de (its owner's plugin says who ended it)
		kubectl trafficlab sessions end 3f2a9c01b7de`)
)

// Options holds what `sessions` needs to run.
type Options struct {
	// Resource is TYPE/NAME; empty lists the namespace.
	Resource      string
	AllNamespaces bool
	Output        string
	Transport     string

	namespace   string
	configFlags *genericclioptions.ConfigFlags
	kube        target.Kube
	// ask reaches one agent; exec in the cluster (execAsker), replaced in tests.
	ask asker
	now func() time.Time

	genericiooptions.IOStreams
}

// NewOptions returns the defaults.
func NewOptions(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *Options {
	return &Options{IOStreams: streams, configFlags: configFlags, Transport: string(transport.ProtocolAuto), now: time.Now}
}

// NewCmdSessions returns the sessions command and its end subcommand.
func NewCmdSessions(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *cobra.Command {
	o := NewOptions(streams, configFlags)
	cmd := &cobra.Command{
		Use:                   "sessions [TYPE/NAME] [-A] [-o wide|json|yaml]",
		DisableFlagsInUseLine: true,
		Short:                 "List who runs which session on which pod, or end one",
		Long:                  sessionsLong,
		Example:               sessionsExample,
		ValidArgsFunction:     target.CompletionFunc(configFlags),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Complete(args); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run(cmd.Context())
		},
	}
	o.addFlags(cmd)
	cmd.Flags().StringVarP(&o.Output, "output", "o", o.Output, "Output format: empty for a table, wide (with bytes, requests and connections), json or yaml.")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"wide", "json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
	cmd.AddCommand(newCmdEnd(NewEndOptions(streams, configFlags)))
	return cmd
}

// addFlags registers the flags list and end share.
func (o *Options) addFlags(cmd *cobra.Command) {
	cmd.Flags().BoolVarP(&o.AllNamespaces, "all-namespaces", "A", o.AllNamespaces, "Every namespace (needs list on pods and pods/exec cluster-wide).")
	cmd.Flags().StringVar(&o.Transport, "transport", o.Transport, "How the exec streams reach the kubelet: auto, spdy or websocket.")
}

// Complete reads the arguments and the kubeconfig.
func (o *Options) Complete(args []string) error {
	if len(args) > 1 {
		return fmt.Errorf("sessions takes at most one TYPE/NAME, got %q", args)
	}
	if len(args) == 1 {
		o.Resource = args[0]
	}
	var t target.Options
	kube, err := t.LoadKube(o.configFlags)
	if err != nil {
		return err
	}
	o.kube, o.namespace = kube, t.Namespace
	if o.AllNamespaces {
		o.namespace = ""
	}
	proto, _ := transport.ParseProtocol(o.Transport)
	o.ask = &execAsker{exec: &transport.KubeExecutor{Config: kube.Config, Client: kube.Client.CoreV1().RESTClient(), Protocol: proto}}
	return nil
}

// Validate checks the options; no I/O.
func (o *Options) Validate() error {
	switch o.Output {
	case "", "wide", "json", "yaml":
	default:
		return fmt.Errorf("--output must be wide, json or yaml, not %q", o.Output)
	}
	if o.AllNamespaces && o.Resource != "" {
		return fmt.Errorf("give TYPE/NAME %q or --all-namespaces, not both", o.Resource)
	}
	if _, err := transport.ParseProtocol(o.Transport); err != nil {
		return fmt.Errorf("--transport: %w", err)
	}
	return nil
}

// Run asks every agent and prints what they said.
func (o *Options) Run(ctx context.Context) error {
	proto, _ := transport.ParseProtocol(o.Transport)
	if err := target.PreflightReadSessions(ctx, o.kube.Client, o.namespace, proto); err != nil {
		return err
	}
	found, err := collect(ctx, o.kube.Client, o.namespace, o.Resource, o.ask)
	if err != nil {
		return err
	}
	if err := write(o.Out, o.Output, o.AllNamespaces, o.now(), found.sessions); err != nil {
		return fmt.Errorf("writing the sessions: %w", err)
	}
	if len(found.sessions) == 0 && len(found.failed) == 0 && o.Output != "json" && o.Output != "yaml" {
		fmt.Fprintln(o.ErrOut, noAgents(o.namespace, o.Resource))
	}
	return reportFailed(o.ErrOut, found.failed)
}

func noAgents(namespace, resource string) string {
	switch {
	case resource != "":
		return fmt.Sprintf("No trafficlab agent runs in the pods of %s in namespace %s.", resource, namespace)
	case namespace == "":
		return "No trafficlab agent runs in any namespace."
	}
	return fmt.Sprintf("No trafficlab agent runs in namespace %s.", namespace)
}
