package steal

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/budget"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// warnEvery spaces the warnings of a budget that goes over and back under in quick turns.
const warnEvery = 10 * time.Second

// pacer is a steal's side of the agent's memory budget: stolen streams wait while the agent is over
// it (see paced), and the developer is told so, once for all the streams waiting at a time.
type pacer struct {
	budget *budget.Budget
	events func(wire.StealEvent)
	now    func() time.Time

	mu       sync.Mutex
	waiting  int   // streams waiting now
	paused   int64 // times a stream waited, in all
	told     bool  // the streams waiting now were told of
	lastTold time.Time
}

func newPacer(b *budget.Budget, events func(wire.StealEvent)) *pacer {
	return &pacer{budget: b, events: events, now: time.Now}
}

// wrap paces the tunnel side of a stolen connection; without a budget it is left as it is.
func (pc *pacer) wrap(ctx context.Context, c net.Conn) net.Conn {
	if pc == nil || pc.budget == nil {
		return c
	}
	return newPaced(ctx, c, pc)
}

// wait returns once the agent is under its budget, or ctx ends.
func (pc *pacer) wait(ctx context.Context) {
	if !pc.budget.Over() {
		return
	}
	pc.mu.Lock()
	pc.waiting++
	pc.paused++
	tell := !pc.told && (pc.lastTold.IsZero() || pc.now().Sub(pc.lastTold) >= warnEvery)
	if tell {
		pc.told, pc.lastTold = true, pc.now()
	}
	paused := pc.paused
	pc.mu.Unlock()
	if tell {
		pc.events(wire.StealEvent{Kind: wire.EventWarning, Message: fmt.Sprintf(
			"the agent is over its memory budget of %d MiB: stolen responses wait until it is back under (waits so far: %d); the app's own traffic goes on",
			pc.budget.Limit()>>20, paused)})
	}
	_ = pc.budget.WaitUnder(ctx)
	pc.mu.Lock()
	pc.waiting--
	if pc.waiting == 0 {
		pc.told = false
	}
	pc.mu.Unlock()
}

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
	pacer  *pacer
	ctx    context.Context
	cancel context.CancelFunc
}

func newPaced(ctx context.Context, c net.Conn, pc *pacer) *paced {
	ctx, cancel := context.WithCancel(ctx)
	return &paced{Conn: c, pacer: pc, ctx: ctx, cancel: cancel}
}

func (p *paced) Read(b []byte) (int, error) {
	// A wait cut short by Close or the steal's end reads on: the stream then tells its own end.
	p.pacer.wait(p.ctx)
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
