// Package doctor implements `kubectl trafficlab doctor`: which verbs work in a namespace or a pod, and
// what to change for the others, found by reading only. The answer for each verb is the API server's
// own: a dry run (dryRun=All) of exactly the patch that adds the verb's agent, which RBAC, PodSecurity
// and the admission webhooks judge as they would the real one, and which stores nothing.
package doctor

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/kubectl/pkg/util/templates"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/session"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/exitcode"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/progress"
)

var (
	doctorLong = templates.LongDesc(`
		Check which trafficlab verbs work in a namespace or a pod, before the first session, and
		what to change for the others. Nothing is changed in the cluster.

		For each verb the API server answers itself: doctor sends the exact patch that would add
		the verb's agent to the pod, as a server-side dry run (dryRun=All), which RBAC, PodSecurity
		(the namespace's level or the cluster's default) and admission webhooks judge as they would
		the real patch, and which changes nothing. Around it: the server's version and ephemeral
		containers, RBAC for exec and port-forward with the Role rule to add, a service mesh in the
		pod, the node's operating system, and hints on its kernel and container runtime.

		The dry run sends the agent image the verbs would add, chosen by the same flags
		(--agent-image, --agent-registry) and $TRAFFICLAB_AGENT_IMAGE; the agent-image line says
		which image, where it came from and whether it is pinned by digest.

		Without TYPE/NAME only the namespace is checked; the dry run needs a pod. The verbs are
		steal, mirror-redirect (mirror --mode redirect), mirror-sniff (the default mirror), dump,
		port-forward and exec; exec --steal and --mirror need what steal and mirror need.

		One line per check and per verb: OK, WARN (works, as the line says), FAIL, UNKNOWN, HINT
		(read from the node, not proven) or SKIP. Exit code: 0 when every verb works, 3 when at least
		one does not, 4 when none is known to fail but at least one cannot be told; 1 on any other
		error. -o json prints the same as one object: namespace, pod, checks and verbs (each with
		name, status, message, and how and fix where set), exitCode.`)

	doctorExample = templates.Examples(`
		# Which verbs work in the pods of deployment api, and why the others do not
		kubectl trafficlab doctor deploy/api

		# The same with the agent image from a mirror (a copy of the released image, digest kept)
		kubectl trafficlab doctor deploy/api --agent-registry registry.example.com/mirror

		# The namespace-level checks only (server, RBAC, PodSecurity label, webhooks)
		kubectl trafficlab doctor -n team-a

		# For a script: the verbs that work, from the JSON
		kubectl trafficlab doctor pod/web -o json | jq -r '.verbs[] | select(.status == "ok" or .status == "warn") | .name'`)
)

// Options holds what doctor needs to run.
type Options struct {
	Target target.Options
	// Agent holds the agent image and pull policy the dry runs send.
	Agent  session.Options
	Output string
	Quiet  bool

	configFlags *genericclioptions.ConfigFlags
	client      kubernetes.Interface

	genericiooptions.IOStreams
}

// NewOptions returns Options with the verbs' defaults.
func NewOptions(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *Options {
	return &Options{IOStreams: streams, configFlags: configFlags, Agent: session.NewOptions()}
}

// NewCmdDoctor returns the doctor command.
func NewCmdDoctor(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *cobra.Command {
	return newCmd(NewOptions(streams, configFlags))
}

func newCmd(o *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:                   "doctor [TYPE/NAME]",
		DisableFlagsInUseLine: true,
		ValidArgsFunction:     target.CompletionFunc(o.configFlags),
		Short:                 "Check which verbs work in a namespace or pod, changing nothing",
		Long:                  doctorLong,
		Example:               doctorExample,
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
	o.Target.AddFlags(cmd.Flags())
	cmd.Flags().StringVarP(&o.Output, "output", "o", o.Output, "Output format: empty for one line per check, or json.")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"json"}, cobra.ShellCompDirectiveNoFileComp))
	cmd.Flags().BoolVarP(&o.Quiet, "quiet", "q", o.Quiet, "Print no progress lines.")
	// The verbs' own image flags: the dry run sends the image they would add (an image policy webhook
	// may judge it).
	o.Agent.AddImageFlags(cmd.Flags())
	return cmd
}

// Complete reads the arguments and the kubeconfig.
func (o *Options) Complete(cmd *cobra.Command, args []string) error {
	if len(args) > 1 {
		return fmt.Errorf("doctor takes at most one TYPE/NAME, got %q", args)
	}
	if err := o.Target.SetResource(args); err != nil {
		return err
	}
	kube, err := o.Target.LoadKube(o.configFlags)
	if err != nil {
		return err
	}
	o.client = kube.Client
	return nil
}

// Validate checks the options; no I/O.
func (o *Options) Validate() error {
	switch o.Output {
	case "", "json":
	default:
		return fmt.Errorf("--output must be json or empty, not %q", o.Output)
	}
	if o.Target.Container != "" && o.Target.Resource == "" && o.Target.Selector == "" {
		return errors.New("--container needs TYPE/NAME or --selector")
	}
	return o.Agent.Validate()
}

// Run checks, prints the report, and returns the exit code scripts read as an *exitcode.Error, which
// main passes on without printing.
func (o *Options) Run(ctx context.Context) error {
	p := progress.New(o.ErrOut, o.Quiet)
	rep, err := Diagnose(ctx, o.client, Input{Namespace: o.Target.Namespace, Target: o.Target, Agent: o.Agent}, p)
	if err != nil {
		return err
	}
	if o.Output == "json" {
		err = rep.WriteJSON(o.Out)
	} else {
		err = rep.WriteText(o.Out)
	}
	if err != nil {
		return fmt.Errorf("writing the report: %w", err)
	}
	if rep.ExitCode != ExitUsable {
		return &exitcode.Error{Command: "kubectl trafficlab doctor", Code: rep.ExitCode}
	}
	return nil
}
