//go:build !linux

package capture

import (
	"context"
	"errors"

	"github.com/gopacket/gopacket"
)

// errNotLinux: packet sockets are Linux's. The plugin, which runs anywhere, only decodes and writes
// captures; the agent, which captures, always runs on a Linux node.
var errNotLinux = errors.New("capturing needs Linux packet sockets")

// Capture is only available on Linux.
type Capture struct{}

// Open fails outside Linux.
func Open(Options) (*Capture, error) { return nil, errNotLinux }

// Interfaces is empty outside Linux.
func (*Capture) Interfaces() []Interface { return nil }

// SnapLen is DefaultSnapLen outside Linux.
func (*Capture) SnapLen() int { return DefaultSnapLen }

// ReadPacketData fails outside Linux.
func (*Capture) ReadPacketData() ([]byte, gopacket.CaptureInfo, error) {
	return nil, gopacket.CaptureInfo{}, errNotLinux
}

// Run fails outside Linux.
func (*Capture) Run(context.Context, func([]byte, gopacket.CaptureInfo) error) error {
	return errNotLinux
}

// Stats fails outside Linux.
func (*Capture) Stats() (Stats, error) { return Stats{}, errNotLinux }

// Close does nothing outside Linux.
func (*Capture) Close() error { return nil }

// SetExpr is not available outside Linux.
func (*Capture) SetExpr(*Expr) error { return errNotLinux }
