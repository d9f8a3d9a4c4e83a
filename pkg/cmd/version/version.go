// Package version implements `kubectl trafficlab version`.
package version

import (
	"encoding/json"
	"fmt"
	"os"

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
		unpinned: it names the tag only.

		The image the other commands add can be changed: $TRAFFICLAB_AGENT_IMAGE replaces it as
		the default (version then prints that image and where it came from), --agent-image names
		another one for one command, and --agent-registry REGISTRY[/PATH] pulls the released image
		from a copy in another registry, tag and digest kept.`)

	versionExample = templates.Examples(`
		# Print the plugin version and its agent image
		kubectl trafficlab version

		# Print the same as JSON
		kubectl trafficlab version -o json

		# Which image the commands add when the environment names a mirror's copy
		TRAFFICLAB_AGENT_IMAGE=registry.example.com/mirror/trafficlab-agent:v1.2.3 kubectl trafficlab version`)
)

// Options holds what `version` needs to run.
type Options struct {
	Output string

	info version.Info
	// image is the agent image the other commands add by default ($TRAFFICLAB_AGENT_IMAGE or the
	// built-in one).
	image version.AgentImage
	// getenv reads the environment; tests replace it.
	getenv func(string) string
	genericiooptions.IOStreams
}

// output is what -o prints: the build, with the agent image the commands add by default and where it
// came from.
type output struct {
	Version string `json:"version"`
	version.AgentImage
	// BuiltInAgentImage is the built-in image, printed when $TRAFFICLAB_AGENT_IMAGE replaces it.
	BuiltInAgentImage string `json:"builtInAgentImage,omitempty"`
	GoVersion         string `json:"goVersion"`
}

// NewOptions returns Options writing to streams.
func NewOptions(streams genericiooptions.IOStreams) *Options {
	return &Options{IOStreams: streams, getenv: os.Getenv}
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
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"yaml", "json"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// Complete reads the build information of the running binary and $TRAFFICLAB_AGENT_IMAGE.
func (o *Options) Complete() error {
	o.info = version.Get()
	image, err := o.info.DefaultAgentImage(o.getenv).Parse()
	if err != nil {
		return err
	}
	o.image = image
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
	out := output{Version: o.info.Version, AgentImage: o.image, GoVersion: o.info.GoVersion}
	if o.image.Source != version.SourceBuiltIn {
		out.BuiltInAgentImage = o.info.AgentImage
	}
	switch o.Output {
	case "json":
		b, err := json.MarshalIndent(out, "", "  ")
		if err != nil {
			return fmt.Errorf("encoding version as json: %w", err)
		}
		_, err = fmt.Fprintln(o.Out, string(b))
		return err
	case "yaml":
		b, err := yaml.Marshal(out)
		if err != nil {
			return fmt.Errorf("encoding version as yaml: %w", err)
		}
		_, err = o.Out.Write(b)
		return err
	}
	text := fmt.Sprintf("Plugin Version: %s\nAgent Image: %s\nAgent Image Pinned: %s\n", out.Version, out.Ref, pinnedText(out.AgentImage))
	if out.BuiltInAgentImage != "" {
		text += fmt.Sprintf("Agent Image Source: %s (built in: %s)\n", out.Source, out.BuiltInAgentImage)
	}
	_, err := fmt.Fprint(o.Out, text)
	return err
}

// pinnedText says what the plain output's pinned line means, so a reader needs no docs for it.
func pinnedText(image version.AgentImage) string {
	switch {
	case image.Pinned && image.Source == version.SourceBuiltIn:
		return "yes (by the digest of the released agent image index)"
	case image.Pinned:
		return "yes (by the digest it names)"
	case image.Source == version.SourceBuiltIn:
		return "no (a build from source, not a release: the tag alone names the image)"
	}
	return "no (the tag alone names the image)"
}
