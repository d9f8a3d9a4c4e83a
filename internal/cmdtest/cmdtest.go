// Package cmdtest runs a verb's real cobra command line through Complete and Validate in unit tests,
// against a kubeconfig that names namespace "shop" and a server nothing answers on, and counts the
// writes of a verb's output.
package cmdtest

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
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

// CountingWriter is a verb's output that counts the writes reaching it, for tests that a verb's
// lines share writes (lineout) instead of making one each.
type CountingWriter struct {
	mu     sync.Mutex
	writes int
	buf    strings.Builder
}

func (w *CountingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	return w.buf.Write(p)
}

// State is the number of writes so far and what they carried.
func (w *CountingWriter) State() (writes int, out string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes, w.buf.String()
}

// CheckBatched fails t unless the output holds exactly lines lines, written in at most one write
// per ten lines: a burst shares a write (one when it fits in lineout.Delay; a slow machine may split
// it, never line by line).
func (w *CountingWriter) CheckBatched(t testing.TB, lines int) {
	t.Helper()
	n, out := w.State()
	if got := strings.Count(out, "\n"); got != lines {
		t.Fatalf("%d lines in the output, want %d", got, lines)
	}
	if n > max(1, lines/10) {
		t.Errorf("%d lines took %d writes, want them batched", lines, n)
	}
}
