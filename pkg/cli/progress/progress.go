// Package progress prints the steps of a long command with the time since it started, such as
// "[ 0.42s] adding agent trafficlab-abcde to pod default/web".
package progress

import (
	"fmt"
	"io"
	"time"
)

// Printer writes timed step lines. A nil *Printer prints nothing, so code that reports progress does
// not need to know whether -q was given.
type Printer struct {
	out   io.Writer
	start time.Time
	now   func() time.Time
}

// New returns a Printer that measures from now; it returns nil (silent) when quiet is set.
func New(out io.Writer, quiet bool) *Printer {
	if quiet || out == nil {
		return nil
	}
	return &Printer{out: out, start: time.Now(), now: time.Now}
}

// Stepf prints one step line. Write errors are ignored: progress is advisory and stderr may be closed.
func (p *Printer) Stepf(format string, args ...any) {
	if p == nil {
		return
	}
	elapsed := p.now().Sub(p.start).Seconds()
	_, _ = fmt.Fprintf(p.out, "[%5.2fs] %s\n", elapsed, fmt.Sprintf(format, args...))
}
