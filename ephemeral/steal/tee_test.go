package steal

import (
	"sync"
	"testing"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/budget"
)

// slowCopy is a mirror that takes nothing until it is let go, then counts what it gets.
type slowCopy struct {
	let      chan struct{}
	mu       sync.Mutex
	data     int
	missing  int
	overGaps int
	ends     int
}

func (s *slowCopy) Data(_ capture.Direction, p []byte, _ time.Time) {
	<-s.let
	s.mu.Lock()
	s.data += len(p)
	s.mu.Unlock()
}

func (s *slowCopy) Gap(_ capture.Direction, n int, _ time.Time) {
	s.mu.Lock()
	s.missing += n
	s.mu.Unlock()
}

func (s *slowCopy) GapOverBudget(dir capture.Direction, n int, t time.Time) {
	s.mu.Lock()
	s.overGaps++
	s.mu.Unlock()
	s.Gap(dir, n, t)
}

func (s *slowCopy) End(capture.Direction, capture.EndReason, time.Time) {
	s.mu.Lock()
	s.ends++
	s.mu.Unlock()
}

// TestTeeStaysUnderTheBudget: with a copy that does not keep up, the tee queues no more than the
// memory budget leaves (not its 256 chunks of up to 32 KiB per connection), counts the rest as a gap
// of the budget's, and gives every reserved byte back.
func TestTeeStaysUnderTheBudget(t *testing.T) {
	const room = 1 << 20
	b, err := budget.New(budget.MinLimit, budget.Options{Usage: func() (int64, error) { return budget.MinLimit - room, nil }})
	if err != nil {
		t.Fatal(err)
	}
	h := &slowCopy{let: make(chan struct{})}
	tee := newTee(h, b, nil)
	chunk := make([]byte, 32<<10)
	const chunks = 200 // 6.25 MiB: fits the queue's 256 chunks, not the budget
	for range chunks {
		// What the relay does with each read; the app's side never waits for the copy.
		tee.offer(capture.ClientToServer, chunk)
		if r := b.Reserved(); r > room {
			t.Fatalf("the tee holds %d bytes, over the %d the budget leaves", r, room)
		}
	}
	tee.end(capture.ClientToServer)
	close(h.let)
	tee.close()
	total := chunks * len(chunk)
	if h.data > room+len(chunk) {
		t.Errorf("the copy got %d bytes queued while it was stalled, want at most the budget's %d", h.data, room)
	}
	if h.data+h.missing != total || h.overGaps == 0 {
		t.Errorf("copy got %d bytes + %d missing (%d gaps of the budget), want %d in all, the rest the budget's", h.data, h.missing, h.overGaps, total)
	}
	if r := b.Reserved(); r != 0 {
		t.Errorf("%d bytes still reserved after the tee closed", r)
	}
}
