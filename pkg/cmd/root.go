// Package cmd builds the `kubectl trafficlab` command tree.
package cmd

import (
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"
	"k8s.io/kubectl/pkg/util/templates"

	// Auth plugins (exec, OIDC) so every kubeconfig kubectl accepts works here too.
	_ "k8s.io/client-go/plugin/pkg/client/auth"

	"github.com/trafficlab/kubectl-trafficlab/pkg/cmd/doctor"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cmd/dump"
	execcmd "github.com/trafficlab/kubectl-trafficlab/pkg/cmd/exec"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cmd/mirror"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cmd/portforward"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cmd/sessions"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cmd/steal"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cmd/version"
)

var rootLong = templates.LongDesc(`
	Give a local process the network view of a pod in a real cluster, without redeploying
	and without restarting the pod.

	trafficlab adds a small agent to the pod as an ephemeral container. The agent lives in
	the pod's network namespace and is controlled over an exec stream; traffic goes through
	the pod's port-forward subresource. When the session ends the pod is as it was before.`)

var rootExample = templates.Examples(`
	# Print the plugin version and the agent image it uses
	kubectl trafficlab version

	# Check which verbs work in a pod before the first session, changing nothing
	kubectl trafficlab doctor deploy/api

	# Load completion for the kubectl-trafficlab binary into the current bash shell
	source <(kubectl-trafficlab completion bash)`)

// NewCmdTrafficlab returns the root command with every subcommand wired to streams.
func NewCmdTrafficlab(streams genericiooptions.IOStreams) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "kubectl-trafficlab",
		Short:   "Steal, mirror, dump and forward a pod's traffic from your machine",
		Long:    rootLong,
		Example: rootExample,
		// Errors are printed once, by main, in kubectl's "error: ..." form.
		SilenceErrors: true,
		SilenceUsage:  true,
		Annotations: map[string]string{
			cobra.CommandDisplayNameAnnotation: "kubectl trafficlab",
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 0 {
				return fmt.Errorf("unknown command %q for %q; see 'kubectl trafficlab --help'", args[0], cmd.CommandPath())
			}
			return cmd.Help()
		},
	}
	cmd.SetIn(streams.In)
	cmd.SetOut(streams.Out)
	cmd.SetErr(streams.ErrOut)
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%w\nSee '%s -h' for help and examples", err, c.CommandPath())
	})

	flags := cmd.PersistentFlags()
	configFlags := genericclioptions.NewConfigFlags(true).WithDeprecatedPasswordFlag().WithDiscoveryBurst(300).WithDiscoveryQPS(50.0)
	configFlags.AddFlags(flags)
	addKlogVerbosity(cmd, streams.ErrOut)
	// The API server's warnings (e.g. PodSecurity's on the agent's container) are for the user, as
	// kubectl prints them, not klog lines that wait for -v=4.
	rest.SetDefaultWarningHandler(rest.NewWarningWriter(streams.ErrOut, rest.WarningWriterOptions{Deduplicate: true}))

	cmd.AddCommand(
		portforward.NewCmdPortForward(streams, configFlags),
		dump.NewCmdDump(streams, configFlags),
		mirror.NewCmdMirror(streams, configFlags),
		execcmd.NewCmdExec(streams, configFlags),
		steal.NewCmdSteal(streams, configFlags),
		doctor.NewCmdDoctor(streams, configFlags),
		sessions.NewCmdSessions(streams, configFlags),
		version.NewCmdVersion(streams),
	)
	return cmd
}
