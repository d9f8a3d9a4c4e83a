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
type batcher struct {
	conn     io.ReadWriteCloser
	interval atomic.Int64 // time.Duration; zero writes as soon as the previous write returned
	last     time.Time    // when the last write started; only the flusher uses it
	clock    Clock        // the waits for interval and closeFlush; a fake one in tests

	mu      sync.Mutex
	cond    *sync.Cond
	pending []byte
	spare   []byte
	err     error // the first write error; every later Write returns it
	closing bool
	done    chan struct{}
}

func newBatcher(conn io.ReadWriteCloser) *batcher { return newBatcherClock(conn, SystemClock()) }

func newBatcherClock(conn io.ReadWriteCloser, clock Clock) *batcher {
	b := &batcher{conn: conn, clock: clock, done: make(chan struct{})}
	b.cond = sync.NewCond(&b.mu)
	go b.flush()
	return b
}

// Write queues p; it returns once p is queued, not sent.
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
	b.pending = append(b.pending, p...)
	b.cond.Broadcast()
	return len(p), nil
}

func (b *batcher) flush() {
	defer close(b.done)
	b.mu.Lock()
	for {
		for len(b.pending) == 0 && !b.closing && b.err == nil {
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
		b.last = b.clock.Now()
		out := b.pending
		b.pending = b.spare[:0]
		b.mu.Unlock()
		_, err := b.conn.Write(out)
		b.mu.Lock()
		b.spare = out[:0]
		if err != nil {
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
