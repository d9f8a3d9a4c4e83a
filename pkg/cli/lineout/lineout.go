// Package lineout is what the verbs' text output needs: lines gathered into fewer writes, and what
// traffic put in them escaped (Escape). At thousands of lines a second (a mirror's copies, a steal's
// requests, a dump's exchanges), a write per line is a system call in the plugin and a wake-up of
// whatever reads the output (a terminal, jq, a pipe) per line; lines that come within Delay of the
// first unwritten one share a write instead, and nobody watching can tell 20 ms.
package lineout

import (
	"bufio"
	"io"
	"sync"
	"time"
)

// Delay is how long a line may wait for others to share its write.
const Delay = 20 * time.Millisecond

// size is the buffer; a burst larger than this is written as it fills.
const size = 64 << 10

// Writer buffers what is written to it and writes it out at most Delay after the first byte not yet
// written. Safe for concurrent use. Flush before printing anything that must come after the lines
// (a summary) and before exit.
type Writer struct {
	mu    sync.Mutex
	buf   *bufio.Writer
	timer *time.Timer
	armed bool
}

// New returns a Writer that writes to w.
func New(w io.Writer) *Writer {
	l := &Writer{buf: bufio.NewWriterSize(w, size)}
	l.timer = time.AfterFunc(time.Hour, func() { _ = l.Flush() })
	l.timer.Stop()
	return l
}

// Write buffers p. An error of an earlier, timed write is returned here: bufio.Writer keeps it.
func (l *Writer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.armed {
		l.armed = true
		l.timer.Reset(Delay)
	}
	return l.buf.Write(p)
}

// Flush writes what is buffered now.
func (l *Writer) Flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.armed = false
	l.timer.Stop()
	return l.buf.Flush()
}
