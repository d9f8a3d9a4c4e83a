package mirror

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/lineout"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// counts keeps what the agent counted: the final counts once they come, and meanwhile the latest
// partial ones, which it sends every second.
type counts struct {
	mu    sync.Mutex
	last  *wire.MirrorStats
	final chan *wire.MirrorStats // gets the final counts; closed when the events end
}

func newCounts() *counts { return &counts{final: make(chan *wire.MirrorStats, 1)} }

// add takes one counts event; only the event reader calls it.
func (c *counts) add(s *wire.MirrorStats) {
	if s == nil {
		return
	}
	if s.Partial {
		c.mu.Lock()
		c.last = s
		c.mu.Unlock()
		return
	}
	select {
	case c.final <- s:
	default:
	}
}

// end says no more events will come; only the event reader calls it, after its last add.
func (c *counts) end() { close(c.final) }

// wait returns the final counts, or else, once they cannot come or d has passed, the latest
// partial ones; nil when the agent sent none.
func (c *counts) wait(d time.Duration) *wire.MirrorStats {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case s, ok := <-c.final:
		if ok {
			return s
		}
	case <-t.C:
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// printer writes one line per mirrored request (with --diff, per request that differs); the lines
// leave in batches (lineout).
// The printers of a workload's pods share one sink and name their pod.
type printer struct {
	*sink
	pod string
}

// sink is where the lines of every pod of a session go, one at a time.
type sink struct {
	mu       sync.Mutex
	out      *lineout.Writer
	json     bool
	diffOnly bool
}

func newPrinter(out io.Writer, asJSON, diffOnly bool) *printer {
	return &printer{sink: &sink{out: lineout.New(out), json: asJSON, diffOnly: diffOnly}}
}

// forPod is a printer to the same sink whose lines name pod.
func (p *printer) forPod(pod string) *printer { return &printer{sink: p.sink, pod: pod} }

// podEvent is a JSON line of a workload's pod: the event and the pod it came from.
type podEvent struct {
	Pod string `json:"pod"`
	wire.MirrorEvent
}

// flush writes what is buffered; the mirror's end calls it before its summary.
func (p *printer) flush() { _ = p.out.Flush() }

func (p *printer) print(ev wire.MirrorEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.json {
		if p.pod != "" {
			_ = json.NewEncoder(p.out).Encode(podEvent{Pod: p.pod, MirrorEvent: ev})
			return
		}
		_ = json.NewEncoder(p.out).Encode(ev)
		return
	}
	now := time.Now().Format("15:04:05")
	if p.pod != "" {
		// As kubectl logs --prefix names a line's pod.
		now = "[pod/" + p.pod + "] " + now
	}
	// Every string in an event may carry what a client of the pod sent, and a terminal obeys the
	// control sequences in it: each is escaped (lineout.Escape). JSON escapes them itself.
	esc := lineout.Escape
	switch ev.Kind {
	case wire.EventWarning:
		fmt.Fprintf(p.out, "%s warning: %s\n", now, esc(ev.Message))
	case wire.EventCopied:
		fmt.Fprintf(p.out, "%s %s -> port %d: connection copied, %d B sent, %d B answered, %s\n",
			now, esc(ev.Peer), ev.Port, ev.BytesIn, ev.BytesOut, ev.Duration.Std().Round(time.Millisecond))
	case wire.EventMirrored:
		if p.diffOnly && len(ev.Differences) == 0 && ev.Error == "" && ev.Message == "" {
			return
		}
		line := fmt.Sprintf("%s %s %s %s", now, esc(ev.Peer), esc(ev.Method), esc(ev.Path))
		switch {
		case ev.Error != "":
			line += " -> no answer: " + esc(ev.Error)
		default:
			line += fmt.Sprintf(" -> %d, %d B, %s", ev.Status, ev.BytesOut, fmtDuration(ev.Duration.Std()))
		}
		if len(ev.Differences) > 0 {
			line += "; differs: " + esc(strings.Join(ev.Differences, "; "))
		}
		if ev.Message != "" {
			line += " (" + esc(ev.Message) + ")"
		}
		fmt.Fprintln(p.out, line)
	}
}

func fmtDuration(d time.Duration) string {
	if d < time.Millisecond {
		return d.Round(time.Microsecond).String()
	}
	return d.Round(100 * time.Microsecond).String()
}
