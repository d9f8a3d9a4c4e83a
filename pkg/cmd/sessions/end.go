package sessions

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/kubectl/pkg/util/templates"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/transport"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/lineout"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

var (
	endLong = templates.LongDesc(`
		End another session, found by its id among the agents of the namespace (or of TYPE/NAME,
		or of every namespace with -A). The agent ends it as if its plugin had left (its redirects
		are removed, its held connections drained) and first tells that plugin who ended it
		("ended by USER from MACHINE with kubectl trafficlab sessions end"), which it prints before
		it exits with an error.

		Anyone allowed to exec into the pod can do this, as they can exec into the agent: it needs
		list on pods and create or get on pods/exec, nothing more. USER is who this plugin says it
		is (SelfSubjectReview, else the kubeconfig's user name), which the agent cannot check.`)

	endExample = templates.Examples(`
		# End session 3f2a9c01b7de, found in the current namespace
		kubectl trafficlab sessions end 3f2a9c01b7de

		# End it among the pods of deployment api only
		kubectl trafficlab sessions end 3f2a9c01b7de deploy/api`)
)

// EndOptions holds what `sessions end` needs to run.
type EndOptions struct {
	Options
	ID string
	// who ends it, as this plugin knows its user (target.WhoAmI).
	who func(ctx context.Context) target.Identity
}

// NewEndOptions returns the defaults.
func NewEndOptions(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *EndOptions {
	return &EndOptions{Options: *NewOptions(streams, configFlags)}
}

func newCmdEnd(o *EndOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:                   "end ID [TYPE/NAME] [-A]",
		DisableFlagsInUseLine: true,
		Short:                 "End another session, whose plugin is told who ended it",
		Long:                  endLong,
		Example:               endExample,
		ValidArgsFunction:     completeEnd(o.configFlags),
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
	return cmd
}

// completeEnd completes the TYPE/NAME after the session ID. The ID itself is not offered: finding
// the sessions means an exec into every agent, too slow for a <TAB>; `sessions` lists them.
func completeEnd(flags *genericclioptions.ConfigFlags) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	completeTarget := target.CompletionFunc(flags)
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if len(args) == 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return completeTarget(cmd, args[1:], toComplete)
	}
}

// Complete reads the arguments and the kubeconfig.
func (o *EndOptions) Complete(args []string) error {
	if len(args) == 0 || len(args) > 2 {
		return fmt.Errorf("sessions end takes a session ID and at most one TYPE/NAME, got %q", args)
	}
	o.ID = args[0]
	if err := o.Options.Complete(args[1:]); err != nil {
		return err
	}
	kube := o.kube
	o.who = func(ctx context.Context) target.Identity { return target.WhoAmI(ctx, kube) }
	return nil
}

// Validate checks the options; no I/O.
func (o *EndOptions) Validate() error {
	if !wire.ValidSessionID(o.ID) {
		return fmt.Errorf("session ID %q is not one: twelve hex digits, as `kubectl trafficlab sessions` lists them", o.ID)
	}
	return o.Options.Validate()
}

// Run finds the session and asks its agent to end it.
func (o *EndOptions) Run(ctx context.Context) error {
	proto, _ := transport.ParseProtocol(o.Transport)
	if err := target.PreflightReadSessions(ctx, o.kube.Client, o.namespace, proto); err != nil {
		return err
	}
	found, err := collect(ctx, o.kube.Client, o.namespace, o.Resource, o.ask)
	if err != nil {
		return err
	}
	var match *Session
	for i, s := range found.sessions {
		if s.ID == o.ID {
			match = &found.sessions[i]
			break
		}
	}
	if match == nil {
		// An agent that did not answer may hold it: say so rather than "no such session".
		if err := reportFailed(o.ErrOut, found.failed); err != nil {
			return fmt.Errorf("no session %q among the agents that answered; %w", o.ID, err)
		}
		return fmt.Errorf("no session %q in %s", o.ID, o.where())
	}
	who := o.who(ctx)
	ref := agentRef{Namespace: match.Namespace, Pod: match.Pod, Agent: match.Agent}
	if _, err := o.ask.ask(ctx, ref, "--end="+o.ID, "--by-user="+who.User, "--by-host="+who.Host); err != nil {
		return fmt.Errorf("end %s: %w", match, err)
	}
	fmt.Fprintf(o.Out, "ended %s\n", lineout.Escape(match.String()))
	return nil
}

func (o *EndOptions) where() string {
	switch {
	case o.Resource != "":
		return fmt.Sprintf("the pods of %s in namespace %s", o.Resource, o.namespace)
	case o.namespace == "":
		return "any namespace"
	}
	return "namespace " + o.namespace
}
