// Package deliver is this machine's end of the streams the agent opens: each stolen or mirrored
// connection is joined to the local process that answers it (a TCP dial, or exec's dial into its
// command's namespace). steal, mirror and exec all deliver through it.
package deliver

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// dialTimeout bounds the dial of the local process for one agent-opened stream.
const dialTimeout = 5 * time.Second

// Dialer reaches the local process for a stream the agent opened: addr is the local address the verb
// resolved, port the pod port. exec's reaches into its command's namespace.
type Dialer func(ctx context.Context, addr string, port int) (net.Conn, error)

// Acceptor hands out the streams the agent opens (tunnel.Tunnel).
type Acceptor interface {
	Accept(ctx context.Context) (*wire.Incoming, error)
}

// Server joins the streams of one kind that the agent opens to the local process for their pod port.
type Server struct {
	// Kind is the stream kind served (wire.KindIncoming for a steal, wire.KindMirrored for a mirror);
	// others are refused.
	Kind string
	// Locals maps a pod port to the local address that answers it; other ports are refused.
	Locals map[int]string
	// Dial reaches the local process; nil dials the local address over TCP.
	Dial Dialer
}

// Serve delivers every stream a hands out until a ends or ctx does; ctx's end also closes the
// streams being delivered. A Server holds no state of its own: a session over several pods serves
// each pod's tunnel with it, and the streams of every pod reach the same local process.
func (s *Server) Serve(ctx context.Context, a Acceptor) {
	for {
		in, err := a.Accept(ctx)
		if err != nil {
			return
		}
		go s.handle(ctx, in)
	}
}

func (s *Server) handle(ctx context.Context, in *wire.Incoming) {
	req := in.Request()
	if req.Kind != s.Kind {
		_ = in.Reject(fmt.Errorf("stream kind %q: %w", req.Kind, wire.ErrUnsupported))
		return
	}
	addr, ok := s.Locals[req.Port]
	if !ok {
		_ = in.Reject(fmt.Errorf("port %d is not %s by this session: %w", req.Port, participle(s.Kind), wire.ErrBadRequest))
		return
	}
	join(ctx, in, addr, s.Dial)
}

func participle(kind string) string {
	if kind == wire.KindMirrored {
		return "mirrored"
	}
	return "stolen"
}

// join dials the local process for in and joins the two until either side ends or ctx does. The
// stream is accepted only after the dial, so that a refusal reaches the agent as one (a stolen client
// is then reset, a filtered request goes to the app).
func join(ctx context.Context, in *wire.Incoming, addr string, dial Dialer) {
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	var c net.Conn
	var err error
	if dial != nil {
		c, err = dial(dctx, addr, in.Request().Port)
	} else {
		var d net.Dialer
		c, err = d.DialContext(dctx, "tcp", addr)
	}
	cancel()
	if err != nil {
		_ = in.Reject(fmt.Errorf("local process at %s: %w", addr, err))
		return
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	_ = in.AcceptJoin(ctx, c)
}
