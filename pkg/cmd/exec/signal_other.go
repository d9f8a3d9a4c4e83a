//go:build !unix

package exec

import osexec "os/exec"

func signalNumber(*osexec.ExitError) int { return 0 }
