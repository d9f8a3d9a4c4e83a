package steal

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

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

// recordCopy records what a mirror gets of one connection.
type recordCopy struct {
	mu   sync.Mutex
	data [2][]byte
	ends int
}

func (r *recordCopy) Data(dir capture.Direction, p []byte, _ time.Time) {
	r.mu.Lock()
	r.data[dir] = append(r.data[dir], p...)
	r.mu.Unlock()
}

func (*recordCopy) Gap(capture.Direction, int, time.Time) {}

func (r *recordCopy) End(capture.Direction, capture.EndReason, time.Time) {
	r.mu.Lock()
	r.ends++
	r.mu.Unlock()
}

// TestMirroredConn: a redirected connection's reads (the client's bytes) and writes (its answers)
// are copied to every mirror registered when it came, a mirror that left gets nothing more, and
// reads after the relay's end (a proxy's background read) are not offered to the closed copies.
func TestMirroredConn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := &Steal{}
	a, b := &recordCopy{}, &recordCopy{}
	ma := &Mirror{s: s, tee: func(capture.Flow) capture.StreamHandler { return a }}
	mb := &Mirror{s: s, tee: func(capture.Flow) capture.StreamHandler { return b }}
	s.addMirror(ma)
	s.addMirror(mb)
	mc := s.mirror(c.(*net.TCPConn), netip.MustParseAddrPort("10.0.0.1:8080"))
	if mc == nil || len(mc.tees) != 2 {
		t.Fatalf("mirrored connection %+v, want one copy per mirror", mc)
	}
	read := func(want string) {
		t.Helper()
		buf := make([]byte, len(want))
		if _, err := io.ReadFull(mc, buf); err != nil || string(buf) != want {
			t.Fatalf("read %q, %v; want %q", buf, err, want)
		}
	}
	if _, err := client.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	read("GET / HTTP/1.1\r\n\r\n")
	if _, err := mc.Write([]byte("HTTP/1.1 200 OK\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := mb.leave(false); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write([]byte("after b left")); err != nil {
		t.Fatal(err)
	}
	read("after b left")
	mc.close()
	if _, err := client.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	read("late")
	got := func(r *recordCopy) [2]string {
		r.mu.Lock()
		defer r.mu.Unlock()
		return [2]string{string(r.data[capture.ClientToServer]), string(r.data[capture.ServerToClient])}
	}
	if diff := cmp.Diff([2]string{"GET / HTTP/1.1\r\n\r\nafter b left", "HTTP/1.1 200 OK\r\n\r\n"}, got(a)); diff != "" {
		t.Errorf("mirror a's copy (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([2]string{"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 200 OK\r\n\r\n"}, got(b)); diff != "" {
		t.Errorf("mirror b's copy, which left (-want +got):\n%s", diff)
	}
	if a.ends != 2 || b.ends != 2 {
		t.Errorf("ends: a %d, b %d; want both directions ended for each", a.ends, b.ends)
	}
	if ms := s.mirrors(); len(ms) != 1 || ms[0] != ma {
		t.Errorf("mirrors after b left: %v", ms)
	}
}
