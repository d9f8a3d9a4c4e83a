package forward

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// localDialTimeout bounds the dial of the local process for one agent-opened stream.
const localDialTimeout = 5 * time.Second

// LocalDialer reaches the local process for a stream the agent opened (a stolen or mirrored
// connection): addr is the local address the verb resolved, port the pod port. exec's reaches into
// its command's namespace.
type LocalDialer func(ctx context.Context, addr string, port int) (net.Conn, error)

// JoinLocal dials the local process for in and joins the two until either side ends or ctx does.
// The stream is accepted only after the dial, so that a refusal reaches the agent as one (a stolen
// client is then reset, a filtered request goes to the app). A nil dial dials addr over TCP.
func JoinLocal(ctx context.Context, in *wire.Incoming, addr string, dial LocalDialer) {
	dctx, cancel := context.WithTimeout(ctx, localDialTimeout)
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
	st, err := in.Accept()
	if err != nil {
		c.Close()
		return
	}
	stop := context.AfterFunc(ctx, func() {
		st.Close()
		c.Close()
	})
	defer stop()
	_ = wire.Join(st, c)
}
