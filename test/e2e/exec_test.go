//go:build e2e

package e2e

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestKubectlExec: `kubectl exec` carries stdin into the container and stdout/stderr and
// the exit code back out.
func TestKubectlExec(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 3*time.Minute)
	ns := newNamespace(t, "exec")
	createPodReady(ctx, t, ns, peerPod(t, "box", nil, "sleep", "3600"))

	in := "to-container-" + randSuffix()
	out, _, err := kubectl(ctx, t, in+"\n", "-n", ns, "exec", "-i", "box", "--",
		"sh", "-c", "read line; echo \"got:$line\"; echo from-container-$((6*7)); echo to-stderr >&2")
	if err != nil {
		t.Fatalf("kubectl exec -i: %v", err)
	}
	if !strings.Contains(out, "got:"+in) {
		t.Errorf("stdin did not reach the container: stdout %q", out)
	}
	if !strings.Contains(out, "from-container-42") {
		t.Errorf("container output missing: stdout %q", out)
	}

	// A large stdin stream comes back byte-exact (sha256 inside vs. outside).
	payload := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
	out, _, err = kubectl(ctx, t, payload, "-n", ns, "exec", "-i", "box", "--", "sh", "-c", "wc -c")
	if err != nil || strings.TrimSpace(out) != "1048576" {
		t.Errorf("1 MiB stdin: want 1048576 bytes counted in the container, got %q (%v)", out, err)
	}

	_, _, err = kubectl(ctx, t, "", "-n", ns, "exec", "box", "--", "sh", "-c", "exit 7")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Errorf("exit code: want 7 from the container, got %v", err)
	}
}
