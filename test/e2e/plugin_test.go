//go:build e2e

package e2e

import (
	"os/exec"
	"slices"
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

// TestPluginLogVerbosity: client-go's request traces reach the terminal only when asked for with -v,
// in klog's format (which checkPluginOutput looks for in every other run, at the default -v).
func TestPluginLogVerbosity(t *testing.T) {
	ctx := testContext(t, time.Minute)
	ns := newNamespace(t, "logs")
	args := []string{"trafficlab", "dump", "-n", ns, "pod/nosuch", "--port", "8080", "-v=6"}
	cmd := exec.CommandContext(ctx, "kubectl", args...)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), `"nosuch" not found`) {
		t.Fatalf("dump of a missing pod: %v, output:\n%s", err, out)
	}
	traces := klogLine.FindAllString(string(out), -1)
	if !slices.ContainsFunc(traces, func(l string) bool { return strings.Contains(l, "/pods/nosuch") }) {
		t.Errorf("-v=6 printed no klog line for the pod's GET:\n%s", out)
	}
	// The same run at the default -v: trafficlab's lines only (kubectl checks them for klog's).
	_, stderr, err := kubectl(ctx, t, "", args[:len(args)-1]...)
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if last := lines[len(lines)-1]; err == nil || !strings.HasPrefix(last, "error: ") || !strings.Contains(last, `"nosuch" not found`) {
		t.Errorf("at the default -v: %v, stderr %q; want the error last", err, stderr)
	}
	if klogLine.MatchString(stderr) {
		t.Errorf("klog lines at the default -v:\n%s", stderr)
	}
}
