package wire

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
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

// TestBatcherCloseDoesNotWaitForAStuckPeer: a write that never completes does not hold Close longer
// than closeFlush.
func TestBatcherCloseDoesNotWaitForAStuckPeer(t *testing.T) {
	g := &stuckConn{unblock: make(chan struct{})}
	b := newBatcher(g)
	_, _ = b.Write(bytes.Repeat([]byte("x"), 10))
	start := time.Now()
	_ = b.Close()
	if d := time.Since(start); d > closeFlush+time.Second {
		t.Errorf("Close took %v", d)
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

// stampConn records when each write came and what it carried.
type stampConn struct {
	mu     sync.Mutex
	writes [][]byte
	at     []time.Time
}

func (c *stampConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes = append(c.writes, append([]byte(nil), p...))
	c.at = append(c.at, time.Now())
	return len(p), nil
}

func (c *stampConn) Read([]byte) (int, error) { return 0, io.EOF }
func (c *stampConn) Close() error             { return nil }

func (c *stampConn) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.writes)
}

// TestBatcherWriteInterval: with an interval, a frame after a quiet spell leaves alone, and the
// frames that follow it closely leave spaced by at least the interval, joined, in order. Without one,
// a connection whose writes return at once gets one write per frame.
func TestBatcherWriteInterval(t *testing.T) {
	const interval = 20 * time.Millisecond
	c := &stampConn{}
	b := newBatcher(c)
	b.interval.Store(int64(interval))
	if _, err := b.Write([]byte("first;")); err != nil {
		t.Fatal(err)
	}
	for c.count() == 0 {
		runtime.Gosched()
	}
	var want bytes.Buffer
	want.WriteString("first;")
	for i := range 200 {
		p := fmt.Appendf(nil, "%d;", i)
		want.Write(p)
		if _, err := b.Write(p); err != nil {
			t.Fatal(err)
		}
		runtime.Gosched()
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if string(c.writes[0]) != "first;" {
		t.Errorf("first write %q, want the first frame alone", c.writes[0])
	}
	if got := bytes.Join(c.writes, nil); !bytes.Equal(got, want.Bytes()) {
		t.Errorf("bytes written %q, want %q", got, want.Bytes())
	}
	// Close flushes what is queued without waiting out the interval, so the last gap may be short.
	for i := 1; i < len(c.at)-1; i++ {
		if gap := c.at[i].Sub(c.at[i-1]); gap < interval {
			t.Errorf("write %d came %v after the one before, want at least %v (%d writes for 201 frames)", i, gap, interval, len(c.writes))
		}
	}
}
