// Package dial opens the pod-side end of forwarded connections: it runs inside the pod's network
// namespace, so names resolve with the pod's resolv.conf (search domains included) and addresses are
// reached as the pod reaches them. Failures keep their cause so that wire.CodeFor can tell the plugin
// refused from unknown host from timeout.
package dial

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// DefaultTimeout bounds one dial, name resolution included.
const DefaultTimeout = 10 * time.Second

// Dialer dials from the pod's network namespace.
type Dialer struct {
	// Timeout bounds one dial; zero means DefaultTimeout.
	Timeout time.Duration
	// Resolver defaults to Go's resolver, which reads the pod's /etc/resolv.conf and /etc/hosts.
	Resolver *net.Resolver
}

// Dial opens network ("tcp" or "udp") to address. UDP sockets are connected, so only the peer's
// answers come back.
func (d *Dialer) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	switch network {
	case wire.NetworkTCP, wire.NetworkUDP:
	default:
		return nil, fmt.Errorf("dial %q: network must be tcp or udp: %w", network, wire.ErrUnsupported)
	}
	if _, _, err := net.SplitHostPort(address); err != nil {
		return nil, fmt.Errorf("dial %s %q: %w: %w", network, address, err, wire.ErrBadRequest)
	}
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	nd := net.Dialer{Timeout: timeout, Resolver: d.Resolver}
	c, err := nd.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("dial %s %q from the pod: %w", network, address, err)
	}
	if tc, ok := c.(*net.TCPConn); ok {
		// Every hop of a relay adds Nagle's delay otherwise.
		_ = tc.SetNoDelay(true)
	}
	return c, nil
}
