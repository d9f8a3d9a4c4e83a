// Package netstack terminates a sandboxed command's network in the plugin: gVisor's user-space TCP/IP
// stack reads the IP packets the command's kernel routes into a TUN device, accepts every TCP
// connection and UDP flow whatever its destination, and hands each one to a Dialer, which carries it
// to the pod (or wherever the caller decides). No root is needed on this side: the TUN descriptor comes
// from pkg/sandbox.
//
// TCP is dialed before the handshake completes, so a refused or unreachable destination reaches the
// command as a reset (ECONNREFUSED), as it would without the sandbox, instead of as a connection
// that is accepted and then closed. Half-closes pass through both ways; a reset or error on one side
// resets the other.
package netstack

import (
	"context"
	"net"
	"time"
)

// Dialer opens the connection the command asked for. network is "tcp" or "udp"; address is the
// destination "IP:PORT" exactly as the command used it (the sandbox's gateway address for its
// resolver, any other address for everything else), so the Dialer alone decides where it goes.
//
// A "udp" conn carries one datagram per Read and per Write, as a connected *net.UDPConn does. A "tcp"
// conn that has CloseWrite() error gets the command's half-close; one that has not is closed instead.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Config is how New sets up the stack.
type Config struct {
	// MTU is the TUN device's MTU; the stack reads and writes packets up to this size.
	MTU int
	// Dialer gets every TCP connection and UDP flow the command opens.
	Dialer Dialer
	// UDPIdleTimeout ends a UDP flow that carried no datagram either way for this long; 0 means
	// DefaultUDPIdleTimeout.
	UDPIdleTimeout time.Duration
	// DNSIdleTimeout is UDPIdleTimeout for flows to port 53; 0 means DefaultDNSIdleTimeout.
	DNSIdleTimeout time.Duration
	// DialTimeout bounds each dial; 0 means DefaultDialTimeout.
	DialTimeout time.Duration
}

const (
	// DefaultUDPIdleTimeout is the conntrack-like lifetime of a quiet UDP flow: long enough for
	// request/response protocols with pauses, short enough that flows do not pile up.
	DefaultUDPIdleTimeout = 60 * time.Second
	// DefaultDNSIdleTimeout keeps DNS flows short: resolvers use one socket per query (or per A/AAAA
	// pair), and 10 s still covers a retry after glibc's 5 s timeout.
	DefaultDNSIdleTimeout = 10 * time.Second
	// DefaultDialTimeout is a safety net above the Dialer's own timeouts; the command's kernel gives
	// up on a SYN after about two minutes, and the dial should end before that.
	DefaultDialTimeout = 60 * time.Second
)

func (c *Config) withDefaults() Config {
	out := *c
	if out.UDPIdleTimeout <= 0 {
		out.UDPIdleTimeout = DefaultUDPIdleTimeout
	}
	if out.DNSIdleTimeout <= 0 {
		out.DNSIdleTimeout = DefaultDNSIdleTimeout
	}
	if out.DialTimeout <= 0 {
		out.DialTimeout = DefaultDialTimeout
	}
	return out
}
