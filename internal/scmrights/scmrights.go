// Package scmrights reads the file descriptor a unix socket message carries (SCM_RIGHTS), for both
// binaries: the agent's main process takes the attach relay's stderr this way, the plugin's sandbox
// its helper's descriptors. Standard library only, so that ephemeral/ may import it.
package scmrights

import (
	"fmt"
	"os"
	"syscall"
)

// First returns the first descriptor the control message oob carries as a file named name, nil when
// it carries none; any further descriptors are closed, since a peer that sends more than asked must
// not leak them into this process.
func First(oob []byte, name string) (*os.File, error) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("control message: %w", err)
	}
	var f *os.File
	for _, m := range msgs {
		fds, err := syscall.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if f == nil {
				f = os.NewFile(uintptr(fd), name)
				continue
			}
			syscall.Close(fd)
		}
	}
	return f, nil
}
