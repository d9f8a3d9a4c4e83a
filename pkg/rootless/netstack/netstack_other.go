//go:build !linux

package netstack

import (
	"fmt"
	"os"
	"runtime"
)

// Stack is gVisor's stack on a TUN descriptor; it exists on Linux only.
type Stack struct{}

// New fails: the TUN descriptor comes from pkg/sandbox, which needs Linux namespaces.
func New(tun *os.File, cfg Config) (*Stack, error) {
	return nil, fmt.Errorf("netstack: not supported on %s", runtime.GOOS)
}

// Close does nothing.
func (s *Stack) Close() error { return nil }
