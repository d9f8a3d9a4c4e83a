package steal

import (
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/lineout"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// printer writes one line per event: stolen requests and connections to out, in batches (lineout),
// warnings to errOut.
type printer struct {
	mu     sync.Mutex
	out    *lineout.Writer
	errOut io.Writer
	json   bool
	now    func() time.Time
}

func newPrinter(out, errOut io.Writer, asJSON bool) *printer {
	return &printer{out: lineout.New(out), errOut: errOut, json: asJSON, now: time.Now}
}

// flush writes the lines still buffered; the steal's end calls it.
func (p *printer) flush() { _ = p.out.Flush() }

// jsonEvent is an event with the time the plugin printed it.
type jsonEvent struct {
	Time time.Time `json:"time"`
	wire.StealEvent
}

func (p *printer) event(ev wire.StealEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ev.Kind == wire.EventWarning {
		// The lines before the warning come before it on a terminal that shows both.
		_ = p.out.Flush()
		fmt.Fprintf(p.errOut, "warning: %s\n", lineout.Escape(ev.Message))
		if !p.json {
			return
		}
	}
	if ev.Kind == wire.EventRequest && !ev.Stolen {
		// Passed-through requests are the app's business; only JSON consumers see them.
		if !p.json {
			return
		}
	}
	if p.json {
		b, err := json.Marshal(jsonEvent{Time: p.now().UTC(), StealEvent: ev})
		if err == nil {
			fmt.Fprintf(p.out, "%s\n", b)
		}
		return
	}
	ts := p.now().Format("15:04:05")
	// What a client of the pod sent is escaped: a terminal obeys the control sequences in it
	// (lineout.Escape). JSON escapes them itself.
	esc := lineout.Escape
	switch ev.Kind {
	case wire.EventRequest:
		fmt.Fprintf(p.out, "%s %s %s %d %s %s (from %s)\n", ts, esc(ev.Method), esc(ev.Path), ev.Status, ev.Duration.Std(), esc(ev.Proto), esc(ev.Peer))
	case wire.EventConnection:
		fmt.Fprintf(p.out, "%s connection from %s to port %d: %s in, %s out, %s\n", ts, esc(ev.Peer), ev.Port, bytesString(ev.BytesIn), bytesString(ev.BytesOut), ev.Duration.Std())
	}
}

func bytesString(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
