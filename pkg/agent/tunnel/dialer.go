package tunnel

import (
	"context"
	"fmt"
	"net"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// DialContext dials address from the pod and returns a net.Conn: a TCP stream, or for "udp" a conn
// that keeps datagram boundaries (one Write is one datagram, one Read returns one), as a connected
// *net.UDPConn does. It is the Dialer that exec's stack, resolver and proxy take.
func (c *Tunnel) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
		network = wire.NetworkTCP
	case "udp", "udp4", "udp6":
		network = wire.NetworkUDP
	default:
		return nil, fmt.Errorf("dial %s %s through the pod: network not supported", network, address)
	}
	rwc, err := c.Dial(ctx, network, address)
	if err != nil {
		return nil, err
	}
	st := rwc.(*wire.Stream)
	if network == wire.NetworkUDP {
		return &datagramConn{Stream: st}, nil
	}
	return st, nil
}

// datagramConn frames datagrams on a stream (pkg/wire's UDP framing).
type datagramConn struct {
	*wire.Stream
}

func (d *datagramConn) Read(p []byte) (int, error) {
	return wire.ReadDatagram(d.Stream, p)
}

func (d *datagramConn) Write(p []byte) (int, error) {
	if err := wire.WriteDatagram(d.Stream, p); err != nil {
		return 0, err
	}
	return len(p), nil
}
