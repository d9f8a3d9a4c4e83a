package wire

import (
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// maxBatch bounds the bytes waiting while a write is in flight; past it the writer waits, which is
// the back-pressure yamux expects from a slow connection.
const maxBatch = 1 << 20

// batcher is group commit for the data connection: yamux's send loop hands it frames, and while one
// write is on its way through the port-forward chain (apiserver, kubelet, runtime: each write is a
// message every hop handles), the frames that arrive meanwhile are joined into the next write. Idle,
// a frame leaves at once; under load, many small frames (a mirror's requests, a busy port-forward)
// cross the chain as a few large ones. Without it the chain's per-message cost bounded the rate.
//
// Group commit alone does not batch when writes return at once, as they do into a socket: a
// mirror's answers, one per copied request, then crossed the chain one write each. interval spaces
// the writes out instead: a write waits until interval has passed since the one before, and what
// arrives meanwhile joins it. A frame after a quiet interval still leaves at once.
//
// A frame that finds the connection quiet (no write in flight, nothing queued, none for inlineAfter
// and the interval) is written by the caller itself: handing it to the flusher would only add a
// goroutine wake-up to its latency (BenchmarkStreamRoundTrip: ~11 µs per round trip, one hand-off
// on each end), and there is nothing to join it with. Frames that come while it is on its way queue
// behind it as they would behind the flusher's write, so a burst still crosses as few writes.
type batcher struct {
	conn     io.ReadWriteCloser
	interval atomic.Int64 // time.Duration; zero writes as soon as the previous write returned
	clock    Clock        // the waits for interval and closeFlush; a fake one in tests

	mu      sync.Mutex
	cond    *sync.Cond
	pending []byte
	spare   []byte
	last    time.Time // when the last write started
	lastEnd time.Time // when the last write returned
	writing bool      // a write is on its way, the flusher's or a caller's
	inlines int       // writes made by callers; tests read it
	err     error     // the first write error; every later Write returns it
	closing bool
	done    chan struct{}
}

// inlineAfter is how long the connection must have been quiet for a frame to be written by its caller.
// Frames of one transfer follow each other within microseconds and are joined by the flusher; a
// kept-alive request comes a round trip (hundreds of microseconds at least) after the last answer.
const inlineAfter = 50 * time.Microsecond

func newBatcher(conn io.ReadWriteCloser) *batcher { return newBatcherClock(conn, SystemClock()) }

func newBatcherClock(conn io.ReadWriteCloser, clock Clock) *batcher {
	b := &batcher{conn: conn, clock: clock, done: make(chan struct{})}
	b.cond = sync.NewCond(&b.mu)
	go b.flush()
	return b
}

// Write queues p and returns once it is queued, not sent; or, on a quiet connection, writes p itself
// and returns once the connection took it.
func (b *batcher) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.err == nil && !b.closing && len(b.pending) > 0 && len(b.pending)+len(p) > maxBatch {
		b.cond.Wait()
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.closing {
		return 0, io.ErrClosedPipe
	}
	if now := b.clock.Now(); !b.writing && len(b.pending) == 0 && b.quiet(now) {
		b.writing, b.last = true, now
		b.inlines++
		b.mu.Unlock()
		n, err := b.conn.Write(p)
		b.mu.Lock()
		b.writing, b.lastEnd = false, b.clock.Now()
		if err != nil && b.err == nil {
			b.err = err
		}
		b.cond.Broadcast() // the flusher waits for this write to end before it writes what queued behind it
		return n, err
	}
	b.pending = append(b.pending, p...)
	b.cond.Broadcast()
	return len(p), nil
}

// quiet reports whether a write may leave now without waiting for company; the caller holds mu.
func (b *batcher) quiet(now time.Time) bool {
	return now.Sub(b.lastEnd) >= inlineAfter && now.Sub(b.last) >= time.Duration(b.interval.Load())
}

func (b *batcher) flush() {
	defer close(b.done)
	b.mu.Lock()
	for {
		for b.err == nil && (b.writing || (len(b.pending) == 0 && !b.closing)) {
			b.cond.Wait()
		}
		if b.err != nil || len(b.pending) == 0 {
			b.mu.Unlock()
			return
		}
		if wait := b.last.Add(time.Duration(b.interval.Load())).Sub(b.clock.Now()); wait > 0 && !b.closing {
			b.mu.Unlock()
			<-b.clock.NewTimer(wait).C()
			b.mu.Lock()
			continue
		}
		b.last, b.writing = b.clock.Now(), true
		out := b.pending
		b.pending = b.spare[:0]
		b.mu.Unlock()
		_, err := b.conn.Write(out)
		b.mu.Lock()
		b.writing, b.lastEnd = false, b.clock.Now()
		b.spare = out[:0]
		if err != nil && b.err == nil {
			b.err = err
		}
		b.cond.Broadcast()
	}
}

// drain stops taking writes and waits until what was queued is written (or failed).
func (b *batcher) drain() error {
	b.mu.Lock()
	b.closing = true
	b.cond.Broadcast()
	b.mu.Unlock()
	<-b.done
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

func (b *batcher) Read(p []byte) (int, error) { return b.conn.Read(p) }

// closeFlush bounds how long Close waits for queued frames: a peer that stopped reading must not
// hold the session's teardown.
const closeFlush = time.Second

// Close sends what is queued (for up to closeFlush), then closes the connection.
func (b *batcher) Close() error {
	b.mu.Lock()
	b.closing = true
	b.cond.Broadcast()
	b.mu.Unlock()
	t := b.clock.NewTimer(closeFlush)
	defer t.Stop()
	select {
	case <-b.done:
	case <-t.C():
	}
	err := b.conn.Close()
	<-b.done
	return err
}

// CloseWrite sends what is queued, then half-closes the connection when it can.
func (b *batcher) CloseWrite() error {
	if err := b.drain(); err != nil {
		return err
	}
	if cw, ok := b.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
