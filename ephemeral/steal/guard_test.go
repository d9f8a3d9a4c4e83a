package steal

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// fakeGuard writes an executable standing in for `trafficlab-agent guard ID PID 3`.
func fakeGuard(t *testing.T, script string) string {
	t.Helper()
	exe := filepath.Join(t.TempDir(), "trafficlab-agent")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return exe
}

func TestStartGuard(t *testing.T) {
	t.Run("a guard that says it watches", func(t *testing.T) {
		// Checks its arguments as runGuard takes them, then says it watches on fd 3.
		exe := fakeGuard(t, `[ "$1 $2 $3 $4" = "guard abc `+strconv.Itoa(os.Getpid())+` 3" ] || exit 2; printf x >&3`)
		if err := startGuard(exe, "abc"); err != nil {
			t.Fatalf("startGuard = %v", err)
		}
	})
	for name, script := range map[string]string{
		// As the guard did on EPERM from pidfd_open before it fell back to polling.
		"a guard that exits before it watches": "echo 'guard: watch process: operation not permitted' >&2; exit 1",
		"a guard that cannot run":              "exec /nonexistent",
	} {
		t.Run(name, func(t *testing.T) {
			err := startGuard(fakeGuard(t, script), "abc")
			if err == nil || !strings.Contains(err.Error(), "the table guard is not watching") {
				t.Fatalf("startGuard = %v, want the guard reported as not watching", err)
			}
		})
	}
}
