package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Builds both real binaries side by side, as krew installs them, and checks that the completion helper
// reaches the plugin beside it even when that plugin is not on PATH.
func TestCompletesThroughSiblingPlugin(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries")
	}
	dir := t.TempDir()
	ext := ""
	if runtime.GOOS == "windows" {
		ext = ".exe"
	}
	build := exec.Command("go", "build", "-o", dir+string(os.PathSeparator), "../kubectl-trafficlab", ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	c := exec.Command(filepath.Join(dir, "kubectl_complete-trafficlab"+ext), "vers")
	c.Env = append(os.Environ(), "PATH="+t.TempDir())
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("completion helper: %v\n%s", err, out)
	}
	if !strings.HasPrefix(string(out), "version\t") {
		t.Errorf("completion output = %q, want the version verb first", out)
	}
}

func TestMissingPluginIsOneLineError(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := pluginPath()
	if err == nil {
		// The test binary's own directory could hold a kubectl-trafficlab only if someone put it there.
		t.Skip("a kubectl-trafficlab sits beside the test binary")
	}
	if strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), `"kubectl-trafficlab`) {
		t.Errorf("error = %q, want one line naming the plugin", err)
	}
}
