//go:build unix

package exec

import (
	osexec "os/exec"
	"syscall"
)

func signalNumber(ee *osexec.ExitError) int {
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return int(ws.Signal())
	}
	return 0
}
