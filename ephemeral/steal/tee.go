package steal

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/budget"
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
	// m is the mirror copied to: nothing more is queued once it has left.
	m *Mirror
}

func newTee(h capture.StreamHandler, b *budget.Budget, m *Mirror) *tee {
	t := &tee{h: h, budget: b, q: make(chan teeChunk, teeQueue), done: make(chan struct{}), m: m}
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
	if t.m != nil && !t.m.copying() {
		return
	}
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

// Mirror is a redirect mirror registered on a port's dispatcher: every connection accepted while
// it is registered is copied to the handler its Tee returns (nil: no copy), until it leaves.
type Mirror struct {
	s    *Steal
	tee  func(capture.Flow) capture.StreamHandler
	left atomic.Bool
}

// mirrors is the mirrors registered now; never modified in place.
func (s *Steal) mirrors() []*Mirror {
	if p := s.mirrorRegs.Load(); p != nil {
		return *p
	}
	return nil
}

func (s *Steal) addMirror(m *Mirror) {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	ms := append(slices.Clone(s.mirrors()), m)
	s.mirrorRegs.Store(&ms)
}

func (s *Steal) removeMirror(m *Mirror) {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	ms := slices.DeleteFunc(slices.Clone(s.mirrors()), func(x *Mirror) bool { return x == m })
	s.mirrorRegs.Store(&ms)
}

// leave unregisters m: the connections it copies stop being copied at once, the relays carry on.
// The last registration's leave ends the steal, as Registration.leave does. Idempotent.
func (m *Mirror) leave(last bool) error {
	if m.left.Swap(true) {
		return nil
	}
	m.s.removeMirror(m)
	if last {
		return m.s.Close()
	}
	return nil
}

// copying reports whether m takes copies now. A mirror whose plugin is away still does: it drops
// whole requests itself (ephemeral/mirror), so that the connections' copies have no holes.
func (m *Mirror) copying() bool { return !m.left.Load() }

// clientConn is a redirected connection as the dispatcher serves it: the client's *net.TCPConn, or
// a mirroredConn around it.
type clientConn interface {
	net.Conn
	CloseWrite() error
	SetLinger(sec int) error
}

// mirroredConn is a redirected client connection whose bytes both ways are copied to the mirrors
// registered when it was accepted: what the client sent (its reads) and what it was answered (its
// writes), whoever answered. It is the tee before the routing: a request a session steals is copied
// with the session's answer, one the app answers with the app's, as the client saw them. It embeds
// net.Conn, not *net.TCPConn, so that no ReadFrom or WriteTo can go around the copy.
type mirroredConn struct {
	net.Conn
	tcp  *net.TCPConn
	tees []*tee
	// rd and wr make one offerer per direction; they are not held across the connection's own
	// Read and Write, so that close never waits for a read that blocks. closed (under both) ends
	// the offers: a proxy's background read may return after the relay is over.
	rd, wr sync.Mutex
	closed bool
}

// mirror wraps c in a mirroredConn when a mirror copies it; nil when none does.
func (s *Steal) mirror(c *net.TCPConn, orig netip.AddrPort) *mirroredConn {
	ms := s.mirrors()
	if len(ms) == 0 {
		return nil
	}
	var client netip.AddrPort
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		client = netip.AddrPortFrom(a.AddrPort().Addr().Unmap(), a.AddrPort().Port())
	}
	flow := capture.Flow{Client: client, Server: orig}
	mc := &mirroredConn{Conn: c, tcp: c}
	for _, m := range ms {
		if !m.copying() {
			continue
		}
		if h := m.tee(flow); h != nil {
			mc.tees = append(mc.tees, newTee(h, s.cfg.Budget, m))
		}
	}
	if len(mc.tees) == 0 {
		return nil
	}
	return mc
}

func (c *mirroredConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.rd.Lock()
	defer c.rd.Unlock()
	if c.closed {
		return n, err
	}
	for _, t := range c.tees {
		if n > 0 {
			t.offer(capture.ClientToServer, p[:n])
		}
		if errors.Is(err, io.EOF) && !t.ended[capture.ClientToServer] {
			t.end(capture.ClientToServer)
		}
	}
	return n, err
}

// Write offers what it wrote once the write is done: a client's write that blocks must not hold
// the copy of the other writers (HTTP/2's frames come from one writer, HTTP/1's in turn).
func (c *mirroredConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.wr.Lock()
	defer c.wr.Unlock()
	if n > 0 && !c.closed {
		for _, t := range c.tees {
			t.offer(capture.ServerToClient, p[:n])
		}
	}
	return n, err
}

func (c *mirroredConn) CloseWrite() error {
	err := c.tcp.CloseWrite()
	c.wr.Lock()
	defer c.wr.Unlock()
	if c.closed {
		return err
	}
	for _, t := range c.tees {
		if !t.ended[capture.ServerToClient] {
			t.end(capture.ServerToClient)
		}
	}
	return err
}

func (c *mirroredConn) SetLinger(sec int) error { return c.tcp.SetLinger(sec) }

// close ends the copies, once the connection's relay is over.
func (c *mirroredConn) close() {
	c.rd.Lock()
	c.wr.Lock()
	c.closed = true
	c.wr.Unlock()
	c.rd.Unlock()
	for _, t := range c.tees {
		t.close()
	}
}
