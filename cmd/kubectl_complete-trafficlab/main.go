// Command kubectl_complete-trafficlab lets `kubectl trafficlab <TAB>` complete: kubectl (1.26+) runs an
// executable of this name from PATH with the words typed so far, and expects cobra's __complete output.
// It hands the words to the kubectl-trafficlab binary installed beside it.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	plugin, err := pluginPath()
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	c := exec.Command(plugin, append([]string{"__complete"}, args...)...)
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := c.Run(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	return 0
}

// pluginPath prefers the binary next to this one, which krew installs from the same archive, so the
// completion always matches the plugin version kubectl runs.
func pluginPath() (string, error) {
	name := "kubectl-trafficlab"
	if runtime.GOOS == "windows" {
		name += ".exe"
	}
	if self, err := os.Executable(); err == nil {
		if resolved, err := filepath.EvalSymlinks(self); err == nil {
			self = resolved
		}
		sibling := filepath.Join(filepath.Dir(self), name)
		if _, err := os.Stat(sibling); err == nil {
			return sibling, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("cannot find %q beside this program or on PATH: %w", name, err)
	}
	return p, nil
}
