package steal

import (
	"context"
	"net"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/budget"
)

// paced is the tunnel side of a stolen connection: while the agent is over its memory budget it is
// not read. That is how a stolen stream's window shrinks with yamux (hashicorp/yamux v0.1.2): the
// receive window is one MaxStreamWindowSize per session, read from the session's config on every
// window update, with no per-stream or live setting (and a smaller value under a window already
// granted would underflow its uint32 arithmetic). But a stream grants window only when it is read: a
// stream not read lets the plugin send what is left of its window, then nothing, so the agent holds
// at most one window per stolen stream and feeds none of it to the client's socket buffer, and the
// local process's writes wait on the developer's machine. The other direction is never held: bytes
// read from the pod's client and sent to the plugin leave the pod's memory.
type paced struct {
	net.Conn
	budget *budget.Budget
	ctx    context.Context
	cancel context.CancelFunc
}

func newPaced(ctx context.Context, c net.Conn, b *budget.Budget) *paced {
	ctx, cancel := context.WithCancel(ctx)
	return &paced{Conn: c, budget: b, ctx: ctx, cancel: cancel}
}

func (p *paced) Read(b []byte) (int, error) {
	// A wait cut short by Close or the steal's end reads on: the stream then tells its own end.
	_ = p.budget.WaitUnder(p.ctx)
	return p.Conn.Read(b)
}

func (p *paced) Close() error {
	p.cancel()
	return p.Conn.Close()
}

func (p *paced) CloseWrite() error {
	if cw, ok := p.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return p.Close()
}
