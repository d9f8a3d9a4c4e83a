package wire

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"time"
)

// gatedConn records each Write as one message and blocks writes until released, like a
// port-forward stream that is busy sending.
type gatedConn struct {
	mu     sync.Mutex
	writes [][]byte
	gate   chan struct{}
	err    error
	closed bool
}

func (g *gatedConn) Write(p []byte) (int, error) {
	<-g.gate
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return 0, g.err
	}
	g.writes = append(g.writes, append([]byte(nil), p...))
	return len(p), nil
}

func (g *gatedConn) Read([]byte) (int, error) { return 0, io.EOF }
func (g *gatedConn) Close() error {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	return nil
}

func (g *gatedConn) messages() [][]byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([][]byte(nil), g.writes...)
}

// TestBatcherJoinsFramesWhileAWriteIsInFlight: the first frame leaves alone; the frames queued while
// it is on its way leave together, in order.
func TestBatcherJoinsFramesWhileAWriteIsInFlight(t *testing.T) {
	g := &gatedConn{gate: make(chan struct{})}
	b := newBatcher(g)
	if _, err := b.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	// Let the flusher pick "a" up and block in Write.
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.mu.Lock()
		taken := len(b.pending) == 0
		b.mu.Unlock()
		if taken || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	for _, p := range []string{"b", "c", "d"} {
		if _, err := b.Write([]byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	close(g.gate)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	got := g.messages()
	if len(got) != 2 || string(got[0]) != "a" || string(got[1]) != "bcd" {
		t.Errorf("messages %q, want [a bcd]", got)
	}
	if !g.closed {
		t.Error("Close did not close the connection")
	}
}

// TestBatcherError: after a failed write, Write returns the error.
func TestBatcherError(t *testing.T) {
	boom := errors.New("boom")
	g := &gatedConn{gate: make(chan struct{}), err: boom}
	close(g.gate)
	b := newBatcher(g)
	_, _ = b.Write([]byte("x"))
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := b.Write([]byte("y"))
		if errors.Is(err, boom) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Write kept succeeding after the connection failed: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
	_ = b.Close()
}

// TestBatcherCloseDoesNotWaitForAStuckPeer: a write that never completes holds Close for closeFlush,
// no longer: then Close closes the connection, which ends the write.
func TestBatcherCloseDoesNotWaitForAStuckPeer(t *testing.T) {
	clk := newFakeClock()
	g := &stuckConn{unblock: make(chan struct{})}
	b := newBatcherClock(g, clk)
	_, _ = b.Write(bytes.Repeat([]byte("x"), 10))
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	clk.waitTimers(t, 1) // Close's wait for the flush
	clk.Advance(closeFlush - time.Nanosecond)
	select {
	case err := <-closed:
		t.Fatalf("Close returned %v before closeFlush passed", err)
	default:
	}
	clk.Advance(time.Nanosecond)
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close still waits for a stuck write after closeFlush")
	}
}

// stuckConn's writes block until Close, as a socket whose peer stopped reading does.
type stuckConn struct {
	once    sync.Once
	unblock chan struct{}
}

func (s *stuckConn) Write([]byte) (int, error) {
	<-s.unblock
	return 0, io.ErrClosedPipe
}
func (s *stuckConn) Read([]byte) (int, error) { return 0, io.EOF }
func (s *stuckConn) Close() error {
	s.once.Do(func() { close(s.unblock) })
	return nil
}

// stampConn records what each write carried and when, by clock, it came; every write is also
// announced on wrote.
type stampConn struct {
	clock  Clock
	wrote  chan struct{}
	mu     sync.Mutex
	writes [][]byte
	at     []time.Time
}

func (c *stampConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, append([]byte(nil), p...))
	c.at = append(c.at, c.clock.Now())
	c.mu.Unlock()
	c.wrote <- struct{}{}
	return len(p), nil
}

func (c *stampConn) Read([]byte) (int, error) { return 0, io.EOF }
func (c *stampConn) Close() error             { return nil }

// TestBatcherWriteInterval: with an interval, a frame after a quiet spell leaves at once; the frames
// that follow it within the interval wait for it to pass and leave joined, in order, one interval after
// the write before.
func TestBatcherWriteInterval(t *testing.T) {
	const interval = 20 * time.Millisecond
	clk := newFakeClock()
	c := &stampConn{clock: clk, wrote: make(chan struct{}, 8)}
	b := newBatcherClock(c, clk)
	b.interval.Store(int64(interval))
	waitWrite := func() {
		t.Helper()
		select {
		case <-c.wrote:
		case <-time.After(30 * time.Second):
			t.Fatal("no write")
		}
	}
	if _, err := b.Write([]byte("first;")); err != nil {
		t.Fatal(err)
	}
	waitWrite()
	var want bytes.Buffer
	if _, err := b.Write([]byte("0;")); err != nil {
		t.Fatal(err)
	}
	want.WriteString("0;")
	clk.waitTimers(t, 1) // the flusher waits out the interval
	for i := 1; i < 200; i++ {
		p := fmt.Appendf(nil, "%d;", i)
		want.Write(p)
		if _, err := b.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	clk.Advance(interval)
	waitWrite()
	// A quiet spell, then a frame: no wait.
	clk.Advance(time.Hour)
	if _, err := b.Write([]byte("late;")); err != nil {
		t.Fatal(err)
	}
	waitWrite()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if got, want := c.writes, [][]byte{[]byte("first;"), want.Bytes(), []byte("late;")}; !slices.EqualFunc(got, want, bytes.Equal) {
		t.Errorf("writes %q, want %q", got, want)
	}
	start := newFakeClock().Now()
	if want := []time.Time{start, start.Add(interval), start.Add(interval + time.Hour)}; !slices.Equal(c.at, want) {
		t.Errorf("writes at %v, want %v", c.at, want)
	}
}
