//go:build !linux

package sandbox

import (
	"context"
	"net"
	"os"
	"runtime"
)

// Sandbox exists on Linux only, where New can create it.
type Sandbox struct{}

func unsupported() error {
	return &UnavailableError{Reason: "the sandbox needs Linux namespaces and is not supported on " + runtime.GOOS + ": use --proxy"}
}

// Check fails: the sandbox needs Linux.
func Check() error { return unsupported() }

// New fails: the sandbox needs Linux.
func New(ctx context.Context, cfg Config) (*Sandbox, error) { return nil, unsupported() }

// RunHelper is never reached: IsHelper is true only for a process New started.
func RunHelper() int { return 125 }

// TUN is nil.
func (s *Sandbox) TUN() *os.File { return nil }

// Start fails.
func (s *Sandbox) Start() error { return unsupported() }

// Wait fails.
func (s *Sandbox) Wait() (int, error) { return -1, unsupported() }

// Signal fails.
func (s *Sandbox) Signal(sig os.Signal) error { return unsupported() }

// DialLoopback fails.
func (s *Sandbox) DialLoopback(ctx context.Context, network string, port int) (net.Conn, error) {
	return nil, unsupported()
}

// ListenLoopback fails.
func (s *Sandbox) ListenLoopback(ctx context.Context, network string, port int) (net.Listener, error) {
	return nil, unsupported()
}

// Close does nothing.
func (s *Sandbox) Close() error { return nil }
