package steal

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// teeQueue bounds the chunks of one connection waiting for the mirror. The relay never waits for
// it: a chunk that finds it full is not copied, and the mirror is told how many bytes it missed.
const teeQueue = 256

// teeChunk is one read of either side, or the end of a direction.
type teeChunk struct {
	dir     capture.Direction
	data    []byte
	missing int
	end     bool
	t       time.Time
}

// tee hands a relayed connection's bytes to a mirror's handler on a goroutine of its own, in order.
type tee struct {
	h       capture.StreamHandler
	q       chan teeChunk
	missing [2]int  // bytes not copied since the last chunk that was, per direction
	ended   [2]bool // the direction's end is queued
	done    chan struct{}
}

func newTee(h capture.StreamHandler) *tee {
	t := &tee{h: h, q: make(chan teeChunk, teeQueue), done: make(chan struct{})}
	go t.run()
	return t
}

func (t *tee) run() {
	defer close(t.done)
	for c := range t.q {
		if c.missing > 0 {
			t.h.Gap(c.dir, c.missing, c.t)
		}
		if c.end {
			t.h.End(c.dir, capture.EndFIN, c.t)
			continue
		}
		t.h.Data(c.dir, c.data, c.t)
	}
}

// offer copies p without ever blocking the relay. Each direction is offered by its own relay
// goroutine, so missing[dir] has one writer.
func (t *tee) offer(dir capture.Direction, p []byte) {
	c := teeChunk{dir: dir, data: append([]byte(nil), p...), missing: t.missing[dir], t: time.Now()}
	select {
	case t.q <- c:
		t.missing[dir] = 0
	default:
		t.missing[dir] += len(p)
	}
}

// end marks a direction's end, without blocking either: an end that finds the queue full is sent by
// close, once the relay is over.
func (t *tee) end(dir capture.Direction) {
	select {
	case t.q <- teeChunk{dir: dir, end: true, missing: t.missing[dir], t: time.Now()}:
		t.ended[dir] = true
	default:
	}
}

// close sends the ends not sent yet (a relay that failed has none) and waits for the handler.
func (t *tee) close() {
	for _, dir := range []capture.Direction{capture.ClientToServer, capture.ServerToClient} {
		if !t.ended[dir] {
			t.q <- teeChunk{dir: dir, end: true, missing: t.missing[dir], t: time.Now()}
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
	t := newTee(h)
	_ = wire.Join(&teeSide{Conn: cn.client, t: t, dir: capture.ClientToServer}, &teeSide{Conn: app, t: t, dir: capture.ServerToClient})
	t.close()
}
