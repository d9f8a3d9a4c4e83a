// Package version implements `kubectl trafficlab version`.
package version

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/kubectl/pkg/util/templates"
	"sigs.k8s.io/yaml"

	"github.com/trafficlab/kubectl-trafficlab/pkg/version"
)

var (
	versionLong = templates.LongDesc(`
		Print the plugin's version and the agent image it adds to pods.

		The agent image always carries the plugin's own version, so that the plugin and the agent
		speak the same protocol. A released plugin also names the image by the digest of the agent
		image index released with it (pinned), so the agent that runs in a pod is exactly the
		released one whatever happens to the tag. A build from source (make, go install) is
		unpinned: it names the tag only. Use --agent-image on the other commands to override it.`)

	versionExample = templates.Examples(`
		# Print the plugin version and its agent image
		kubectl trafficlab version

		# Print the same as JSON
		kubectl trafficlab version -o json`)
)

// Options holds what `version` needs to run.
type Options struct {
	Output string

	info version.Info
	genericiooptions.IOStreams
}

// NewOptions returns Options writing to streams.
func NewOptions(streams genericiooptions.IOStreams) *Options {
	return &Options{IOStreams: streams}
}

// NewCmdVersion returns the `version` command.
func NewCmdVersion(streams genericiooptions.IOStreams) *cobra.Command {
	o := NewOptions(streams)
	cmd := &cobra.Command{
		Use:                   "version",
		DisableFlagsInUseLine: true,
		Short:                 "Print the plugin version and the agent image it uses",
		Long:                  versionLong,
		Example:               versionExample,
		Args:                  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Complete(); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run()
		},
	}
	cmd.Flags().StringVarP(&o.Output, "output", "o", o.Output, "One of 'yaml' or 'json'.")
	return cmd
}

// Complete reads the build information of the running binary.
func (o *Options) Complete() error {
	o.info = version.Get()
	return nil
}

// Validate checks the flags.
func (o *Options) Validate() error {
	switch o.Output {
	case "", "json", "yaml":
		return nil
	}
	return fmt.Errorf("--output must be 'yaml' or 'json', not %q", o.Output)
}

// Run prints the version.
func (o *Options) Run() error {
	switch o.Output {
	case "json":
		b, err := json.MarshalIndent(o.info, "", "  ")
		if err != nil {
			return fmt.Errorf("encoding version as json: %w", err)
		}
		_, err = fmt.Fprintln(o.Out, string(b))
		return err
	case "yaml":
		b, err := yaml.Marshal(o.info)
		if err != nil {
			return fmt.Errorf("encoding version as yaml: %w", err)
		}
		_, err = o.Out.Write(b)
		return err
	}
	_, err := fmt.Fprintf(o.Out, "Plugin Version: %s\nAgent Image: %s\nAgent Image Pinned: %s\n", o.info.Version, o.info.AgentImage, pinnedText(o.info.AgentImagePinned))
	return err
}

// pinnedText says what the plain output's pinned line means, so a reader needs no docs for it.
func pinnedText(pinned bool) string {
	if pinned {
		return "yes (by the digest of the released agent image index)"
	}
	return "no (a build from source, not a release: the tag alone names the image)"
}
