package steal

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// ending is what a steal needs to end without failing the app's clients.
type ending struct {
	// drain is done when the steal starts ending (startDrain): filtered connections stop stealing
	// and drain (httpx.Route.Drain), and the flush stops.
	drain      context.Context
	startDrain context.CancelFunc
	// stolen are the connections handed whole to the developer's process (under Steal.mu).
	stolen map[net.Conn]bool
	// changed hears that a connection ended.
	changed chan struct{}
	// drained counts the connections relayed to the app that ended during the drain, until
	// drainOver, when what is left is reset.
	drained   atomic.Int64
	drainOver atomic.Bool
	// flushDone is closed when the flush of the connections open before the steal is over.
	flushDone chan struct{}
}

func newEnding() ending {
	drain, start := context.WithCancel(context.Background())
	return ending{
		drain: drain, startDrain: start, stolen: map[net.Conn]bool{}, changed: make(chan struct{}, 1),
		flushDone: make(chan struct{}),
	}
}

func (s *Steal) draining() bool {
	select {
	case <-s.drain.Done():
		return true
	default:
		return false
	}
}

// markStolen records c as handed to the developer's process; false once the steal is ending or while
// the plugin is away, when c goes to the app instead.
func (s *Steal) markStolen(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining() || s.away.Load() {
		return false
	}
	s.stolen[c] = true
	return true
}

// connGone is untrack's news for the drain.
func (s *Steal) connGone(stolen bool) {
	if !stolen && s.draining() && !s.drainOver.Load() {
		s.drained.Add(1)
	}
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// stopper is a redirect that can stop taking new connections while keeping those it took
// (netfilter.Owned.StopNew).
type stopper interface{ StopNew() error }

// end ends the steal in the one order that fails nothing in flight:
//
//  1. The redirect stops taking new connections (StopNew): they reach the app directly, and those
//     it took keep reaching the agent.
//  2. The connections stolen whole are reset: they were the developer's process's, which is going
//     away with the session.
//  3. The connections the agent relays to the app (a filtered steal's, the probes', a redirect
//     mirror's) drain: HTTP/1 ones answer their next response with "Connection: close", HTTP/2
//     ones get GOAWAY, then close once their streams are done; the others end when their clients
//     end them. New ones still in the listener's queue are served the same way. This lasts until
//     they are all gone or DrainWindow is over.
//  4. What is left is reset, counted (EventDrain), and only then is the table deleted: removing
//     the pod's last NAT hooks drops the NAT bindings of its connections, and a reset sent after
//     that leaves with the agent's port as its source, which the client ignores (measured: such
//     clients waited for an answer until their own timeout).
//
// A redirect that cannot stop taking new ones (a test's fake, or a failed StopNew) gets no drain:
// every connection is reset at once, as new ones would keep arriving.
func (s *Steal) end() error {
	s.mu.Lock()
	s.startDrain()
	var stolen []net.Conn
	for c := range s.stolen {
		stolen = append(stolen, c)
	}
	s.mu.Unlock()
	<-s.flushDone

	window := s.cfg.DrainWindow
	if window <= 0 {
		window = wire.DrainWindow
	}
	if st, ok := s.redirect.(stopper); !ok {
		window = 0
	} else if err := st.StopNew(); err != nil {
		s.cfg.Log.Warn("stop redirecting new connections", "err", err)
		window = 0
	}
	for _, c := range stolen {
		reset(c)
	}
	s.waitDrained(window)
	s.drainOver.Store(true)

	s.closed.Store(true)
	s.ln.Close()
	s.mu.Lock()
	left := 0
	for c := range s.conns {
		if !s.stolen[c] {
			left++
		}
		reset(c)
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	err := s.redirect.Close()
	if n := s.drained.Load(); n > 0 || left > 0 {
		ev := wire.StealEvent{Kind: wire.EventDrain, Drained: int(n), Reset: left}
		if left > 0 {
			ev.Message = fmt.Sprintf("closed %d connections to the app still busy %v after the steal ended: what was in flight on them failed", left, window)
		}
		s.events(ev)
	}
	s.cfg.Log.Info("steal ended", "drained", s.drained.Load(), "reset", left)
	return err
}

// waitDrained waits up to window for the connections the agent holds, other than stolen ones, to end.
func (s *Steal) waitDrained(window time.Duration) {
	if window <= 0 {
		return
	}
	t := time.NewTimer(window)
	defer t.Stop()
	for {
		s.mu.Lock()
		n := len(s.conns) - len(s.stolen)
		s.mu.Unlock()
		if n <= 0 {
			return
		}
		select {
		case <-s.changed:
		case <-t.C:
			return
		}
	}
}

// reset closes c with a reset, so that its client does not wait for more.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}
