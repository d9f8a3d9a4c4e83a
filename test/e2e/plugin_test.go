//go:build e2e

package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

// kubectl finds the plugin on PATH, runs it as `kubectl trafficlab`, and completes its verbs through the
// kubectl_complete-trafficlab helper shipped beside it.
func TestPluginDiscovery(t *testing.T) {
	for _, bin := range []string{"kubectl-trafficlab", "kubectl_complete-trafficlab"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not on PATH: run `make e2e`, which builds it into _output/bin", bin)
		}
	}
	ctx := testContext(t, time.Minute)
	out, stderr, err := kubectl(ctx, t, "", "plugin", "list")
	if err != nil {
		t.Fatalf("kubectl plugin list: %v\n%s", err, stderr)
	}
	if !strings.Contains(out, "kubectl-trafficlab") {
		t.Errorf("kubectl plugin list does not show the plugin:\n%s", out)
	}
	out, stderr, err = kubectl(ctx, t, "", "trafficlab", "version")
	if err != nil {
		t.Fatalf("kubectl trafficlab version: %v\n%s", err, stderr)
	}
	if !strings.HasPrefix(out, "Plugin Version: v") || !strings.Contains(out, "Agent Image: ghcr.io/trafficlab/trafficlab-agent:") {
		t.Errorf("kubectl trafficlab version printed:\n%s", out)
	}
	// What a shell's completion function asks kubectl for `kubectl trafficlab ver<TAB>`.
	out, stderr, err = kubectl(ctx, t, "", "__complete", "trafficlab", "ver")
	if err != nil {
		t.Fatalf("kubectl __complete: %v\n%s", err, stderr)
	}
	if !strings.Contains(out, "version\t") {
		t.Errorf("kubectl does not complete the plugin's verbs:\n%s", out)
	}
}
