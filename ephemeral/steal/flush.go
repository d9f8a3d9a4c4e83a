package steal

import (
	"fmt"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/netfilter"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// flushEvery is how often the flush looks again at the busy connections it left open.
const flushEvery = 200 * time.Millisecond

// startFlush moves the connections open before the redirect onto it (a client's keep-alive pool
// would otherwise keep using them, unseen, for as long as it likes): each is reset once idle
// (netfilter.Flush), looked at again every flushEvery for up to FlushWindow, with an EventFlush
// per port whenever something changed. Busy ones are reset too, at the first look, only with
// Spec.FlushConnections. It stops when the steal starts ending.
func (s *Steal) startFlush(ports []uint16) {
	if s.cfg.Spec.KeepOpen {
		close(s.flushDone)
		return
	}
	go func() {
		defer close(s.flushDone)
		s.flush(ports)
	}()
}

func (s *Steal) flush(ports []uint16) {
	window := s.cfg.FlushWindow
	if window <= 0 {
		window = wire.FlushWindow
	}
	deadline := time.Now().Add(window)
	busy := s.cfg.Spec.FlushConnections
	left := map[uint16]int{}
	t := time.NewTicker(flushEvery)
	defer t.Stop()
	for {
		var counts map[uint16]netfilter.FlushCounts
		err := s.inNetns(func() error {
			var err error
			counts, _, err = s.cfg.Flush(ports, netfilter.PassMark, busy)
			return err
		})
		if err != nil {
			// The redirect works without it; only already-open connections stay with the app.
			s.events(wire.StealEvent{Kind: wire.EventWarning, Message: fmt.Sprintf("could not reset the connections open before the steal: %v", err)})
			return
		}
		busy = false
		over := !time.Now().Before(deadline)
		waiting := false
		for _, p := range ports {
			c, before := counts[p], left[p]
			left[p] = c.Left
			done := c.Left == 0 || over
			if c.Idle > 0 || c.Busy > 0 || c.Left != before || (done && before > 0) {
				s.events(wire.StealEvent{Kind: wire.EventFlush, Port: int(p), Flushed: c.Idle, Reset: c.Busy, Left: c.Left, Done: done})
			}
			waiting = waiting || !done
		}
		if !waiting {
			return
		}
		select {
		case <-t.C:
		case <-s.drain.Done():
			return
		}
	}
}

// inNetns runs f in the pod's network namespace.
func (s *Steal) inNetns(f func() error) error {
	if s.cfg.InNetns != nil {
		return s.cfg.InNetns(f)
	}
	return f()
}
