package steal

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/budget"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// teeQueue bounds the chunks of one connection waiting for the mirror. The relay never waits for
// it: a chunk that finds it full is not copied, and the mirror is told how many bytes it missed. The
// bytes queued across connections are bounded by the agent's memory budget: a chunk is copied only
// once it is reserved there, and released when the mirror has had it.
const teeQueue = 256

// budgetGapper is a handler told that a gap comes from the memory budget, not from a full queue.
type budgetGapper interface {
	GapOverBudget(dir capture.Direction, missing int, t time.Time)
}

// teeChunk is one read of either side, or the end of a direction.
type teeChunk struct {
	dir     capture.Direction
	data    []byte
	missing int
	// overBudget says the memory budget refused some of the missing bytes.
	overBudget bool
	end        bool
	t          time.Time
}

// tee hands a relayed connection's bytes to a mirror's handler on a goroutine of its own, in order.
type tee struct {
	h       capture.StreamHandler
	budget  *budget.Budget
	q       chan teeChunk
	missing [2]int  // bytes not copied since the last chunk that was, per direction
	refused [2]bool // the budget refused some of missing
	ended   [2]bool // the direction's end is queued
	done    chan struct{}
}

func newTee(h capture.StreamHandler, b *budget.Budget) *tee {
	t := &tee{h: h, budget: b, q: make(chan teeChunk, teeQueue), done: make(chan struct{})}
	go t.run()
	return t
}

func (t *tee) run() {
	defer close(t.done)
	for c := range t.q {
		if c.missing > 0 {
			if bg, ok := t.h.(budgetGapper); ok && c.overBudget {
				bg.GapOverBudget(c.dir, c.missing, c.t)
			} else {
				t.h.Gap(c.dir, c.missing, c.t)
			}
		}
		if c.end {
			t.h.End(c.dir, capture.EndFIN, c.t)
			continue
		}
		t.h.Data(c.dir, c.data, c.t)
		t.budget.Release(len(c.data))
	}
}

// chunk is the next chunk of dir, carrying the bytes missed before it.
func (t *tee) chunk(dir capture.Direction) teeChunk {
	return teeChunk{dir: dir, missing: t.missing[dir], overBudget: t.refused[dir], t: time.Now()}
}

// sent clears what a queued chunk carried.
func (t *tee) sent(dir capture.Direction) { t.missing[dir], t.refused[dir] = 0, false }

// offer copies p without ever blocking the relay. Each direction is offered by its own relay
// goroutine, so missing[dir] and refused[dir] have one writer.
func (t *tee) offer(dir capture.Direction, p []byte) {
	if !t.budget.Reserve(len(p)) {
		t.missing[dir] += len(p)
		t.refused[dir] = true
		return
	}
	c := t.chunk(dir)
	c.data = append([]byte(nil), p...)
	select {
	case t.q <- c:
		t.sent(dir)
	default:
		t.budget.Release(len(p))
		t.missing[dir] += len(p)
	}
}

// end marks a direction's end, without blocking either: an end that finds the queue full is sent by
// close, once the relay is over.
func (t *tee) end(dir capture.Direction) {
	c := t.chunk(dir)
	c.end = true
	select {
	case t.q <- c:
		t.ended[dir] = true
		t.sent(dir)
	default:
	}
}

// close sends the ends not sent yet (a relay that failed has none) and waits for the handler.
func (t *tee) close() {
	for _, dir := range []capture.Direction{capture.ClientToServer, capture.ServerToClient} {
		if !t.ended[dir] {
			c := t.chunk(dir)
			c.end = true
			t.q <- c
		}
	}
	close(t.q)
	<-t.done
}

// teeSide is one side of a relayed connection whose reads are copied to the tee.
type teeSide struct {
	net.Conn
	t   *tee
	dir capture.Direction
}

func (s *teeSide) Read(p []byte) (int, error) {
	n, err := s.Conn.Read(p)
	if n > 0 {
		s.t.offer(s.dir, p[:n])
	}
	if errors.Is(err, io.EOF) && !s.t.ended[s.dir] {
		s.t.end(s.dir)
	}
	return n, err
}

func (s *teeSide) CloseWrite() error {
	if cw, ok := s.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return s.Close()
}

// teeThrough relays the connection to the app unchanged and copies both directions to the mirror.
func (s *Steal) teeThrough(cn conn) {
	app, err := s.dialApp(s.ctx, cn)
	if err != nil {
		s.cfg.Log.Warn("mirror: the app refused a redirected connection", "peer", cn.peer, "err", err)
		_ = cn.client.SetLinger(0)
		return
	}
	peer, _ := netip.ParseAddrPort(cn.peer)
	h := s.cfg.Tee(capture.Flow{Client: netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port()), Server: cn.orig})
	if h == nil {
		_ = wire.Join(cn.client, app)
		return
	}
	t := newTee(h, s.cfg.Budget)
	_ = wire.Join(&teeSide{Conn: cn.client, t: t, dir: capture.ClientToServer}, &teeSide{Conn: app, t: t, dir: capture.ServerToClient})
	t.close()
}
