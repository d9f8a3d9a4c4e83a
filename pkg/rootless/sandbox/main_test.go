package sandbox_test

import (
	"os"
	"testing"

	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/sandbox"
)

// TestMain lets the test binary be the sandbox's helper, as main does for the plugin.
func TestMain(m *testing.M) {
	if sandbox.IsHelper(os.Args) {
		os.Exit(sandbox.RunHelper())
	}
	os.Exit(m.Run())
}
