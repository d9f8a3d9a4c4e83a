package wire

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// Join copies a→b and b→a until both directions end, propagating half-closes: when one side's reads
// end in io.EOF, the other side's write half is closed (CloseWrite when it has one). When a direction
// fails otherwise (an abort, a reset), both sides are closed at once, and a *net.TCPConn is closed
// with a reset so that the failure stays visible end to end. Join closes a and b before returning.
func Join(a, b io.ReadWriteCloser) error {
	var wg sync.WaitGroup
	errs := make([]error, 2)
	var once sync.Once
	abort := func() {
		once.Do(func() {
			resetTCP(a)
			resetTCP(b)
			_ = a.Close()
			_ = b.Close()
		})
	}
	pipe := func(i int, dst, src io.ReadWriteCloser) {
		defer wg.Done()
		buf := joinBufs.Get().(*[]byte)
		_, err := io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *buf)
		joinBufs.Put(buf)
		if err == nil {
			err = closeWrite(dst)
		}
		if err != nil {
			errs[i] = err
			abort()
		}
	}
	wg.Add(2)
	go pipe(0, b, a)
	go pipe(1, a, b)
	wg.Wait()
	_ = a.Close()
	_ = b.Close()
	return errors.Join(errs...)
}

// closeWrite half-closes w when it can; a writer without a write half is fully closed, which is the
// best a plain io.WriteCloser can signal.
func closeWrite(w io.WriteCloser) error {
	if cw, ok := w.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil {
			return fmt.Errorf("close write: %w", err)
		}
		return nil
	}
	return w.Close()
}

// resetTCP resets a TCP connection, or one that wraps it and says so (a redirected connection
// copied to a mirror, ephemeral/steal).
func resetTCP(c io.Closer) {
	if tc, ok := c.(interface{ SetLinger(sec int) error }); ok {
		_ = tc.SetLinger(0)
	}
}

// joinBufSize is half of MaxBlockSize: two buffers per relayed connection are what the agent spends per
// stream, and 200 streams with 64 KiB buffers measured 25 MiB of the agent's memory in the pod. 32 KiB
// still keeps blocks large enough to compress well.
const joinBufSize = 32 << 10

// joinBufs lends copy buffers, so idle connections hold none.
var joinBufs = sync.Pool{New: func() any { b := make([]byte, joinBufSize); return &b }}

// writerOnly and readerOnly hide ReadFrom/WriteTo so that io.CopyBuffer uses our pooled buffer;
// *net.TCPConn's WriteTo would copy through its own.
type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }
