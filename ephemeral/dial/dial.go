// Package dial opens the pod-side end of forwarded connections: it runs inside the pod's network
// namespace, so names resolve with the pod's resolv.conf (search domains included) and addresses are
// reached as the pod reaches them.
package dial

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// Kind says why a dial failed, in the categories the plugin reports to the user.
type Kind int

const (
	// KindInternal is anything the other kinds do not cover.
	KindInternal Kind = iota
	// KindRefused: nothing listens there (TCP RST / ICMP port unreachable).
	KindRefused
	// KindUnknownHost: the pod's resolver does not know the name.
	KindUnknownHost
	// KindTimeout: no answer within the dial timeout.
	KindTimeout
	// KindUnreachable: no route to the network or host.
	KindUnreachable
	// KindForbidden: the request itself is not allowed (bad network, bad address).
	KindForbidden
)

func (k Kind) String() string {
	switch k {
	case KindRefused:
		return "refused"
	case KindUnknownHost:
		return "unknown host"
	case KindTimeout:
		return "timeout"
	case KindUnreachable:
		return "unreachable"
	case KindForbidden:
		return "forbidden"
	}
	return "internal"
}

// Error is a failed dial with its kind.
type Error struct {
	Kind    Kind
	Network string
	Address string
	Err     error
}

func (e *Error) Error() string {
	return fmt.Sprintf("dial %s %q from the pod: %s: %v", e.Network, e.Address, e.Kind, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Dialer dials from the pod's network namespace.
type Dialer struct {
	// Timeout bounds one dial, name resolution included.
	Timeout time.Duration
	// Resolver defaults to Go's resolver, which reads the pod's /etc/resolv.conf and /etc/hosts.
	Resolver *net.Resolver
}

// Dial opens network ("tcp" or "udp") to address. UDP sockets are connected, so only the peer's
// answers come back.
func (d *Dialer) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	switch network {
	case "tcp", "udp":
	default:
		return nil, &Error{Kind: KindForbidden, Network: network, Address: address, Err: errors.New("network must be tcp or udp")}
	}
	if _, _, err := net.SplitHostPort(address); err != nil {
		return nil, &Error{Kind: KindForbidden, Network: network, Address: address, Err: err}
	}
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	nd := net.Dialer{Timeout: timeout, Resolver: d.Resolver}
	c, err := nd.DialContext(ctx, network, address)
	if err != nil {
		return nil, &Error{Kind: Classify(err), Network: network, Address: address, Err: err}
	}
	if tc, ok := c.(*net.TCPConn); ok {
		// Every hop of a relay adds Nagle's delay otherwise.
		_ = tc.SetNoDelay(true)
	}
	return c, nil
}

// Classify maps a dial error to the kind the user sees.
func Classify(err error) Kind {
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr):
		if dnsErr.IsTimeout {
			return KindTimeout
		}
		return KindUnknownHost
	case errors.Is(err, syscall.ECONNREFUSED):
		return KindRefused
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return KindUnreachable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
		return KindTimeout
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return KindForbidden
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return KindTimeout
	}
	return KindInternal
}
