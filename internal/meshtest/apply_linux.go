//go:build linux && kernel

package meshtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Apply installs the rule set in the named network namespace (one a test made with
// internal/testnet), from the host the way istio-cni and linkerd-cni do: istio-iptables, or
// proxy-init's iptables commands, run under `ip netns exec`. Everything it creates lives in that
// namespace, so removing the namespace (testnet does when the test ends, passed or failed)
// removes it. The namespace must already have its pod address on a link other than lo, as a pod
// has when istio-cni runs: istio-iptables reads it to choose IPv4 or IPv6 rules and fails
// without one. A missing tool or a failing command fails the test: a kernel test never skips.
func Apply(t testing.TB, netns string, r RuleSet) {
	t.Helper()
	switch r.Mesh() {
	case "Istio":
		bin := IstioIptables(t)
		run(t, netns, append([]string{bin}, r.IstioArgs()...))
	default:
		cmds := r.LinkerdCommands()
		if cmds == nil {
			t.Fatalf("meshtest: unknown rule set %q", r)
		}
		for _, cmd := range cmds {
			run(t, netns, cmd)
		}
	}
}

func run(t testing.TB, netns string, argv []string) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", netns}, argv...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("meshtest: %s in netns %q: %v\n%s", strings.Join(argv, " "), netns, err, out)
	}
}

var istioBuild struct {
	once sync.Once
	path string
	err  error
}

// IstioIptables is the path of the pinned istio-iptables (hack/tools/istio), built once per test
// binary by hack/tools/install.sh into its cache outside the clone.
func IstioIptables(t testing.TB) string {
	t.Helper()
	istioBuild.once.Do(func() {
		istioBuild.path, istioBuild.err = installIstio()
	})
	if istioBuild.err != nil {
		t.Fatalf("meshtest: %v", istioBuild.err)
	}
	return istioBuild.path
}

func installIstio() (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(filepath.Join(root, "hack/tools/install.sh"), "istio-iptables")
	cmd.Dir = root
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("hack/tools/install.sh istio-iptables: %w\n%s", err, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

// repoRoot walks up from the test's directory (go test runs a test in its package's directory)
// to the clone's root, the directory holding hack/tools/install.sh.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find the clone's root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "hack/tools/install.sh")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find the clone's root: no hack/tools/install.sh above the test's directory")
		}
		dir = parent
	}
}
