// Package cmdtest runs a verb's real cobra command line through Complete and Validate in unit tests,
// against a kubeconfig that names namespace "shop" and a server nothing answers on.
package cmdtest

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
)

const kubeconfig = `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: shop}}]
current-context: x
`

// ConfigFlags returns kubectl's connection flags reading that kubeconfig.
func ConfigFlags(t testing.TB) *genericclioptions.ConfigFlags {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(path, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	flags := genericclioptions.NewConfigFlags(true)
	flags.KubeConfig = &path
	return flags
}

// Parse executes cmd with args, stopping after complete and validate instead of running the verb.
func Parse(cmd *cobra.Command, complete func(*cobra.Command, []string) error, validate func() error, args ...string) error {
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if err := complete(c, args); err != nil {
			return err
		}
		return validate()
	}
	cmd.SetArgs(args)
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	return cmd.Execute()
}
