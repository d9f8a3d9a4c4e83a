package steal

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

// printer writes one line per event: stolen requests and connections to out, in batches (lineout),
// warnings to errOut. The printers of a workload's pods share one sink and name their pod.
type printer struct {
	*sink
	pod string
}

// sink is where the lines of every pod of a session go, one at a time.
type sink struct {
	mu     sync.Mutex
	out    *lineout.Writer
	errOut io.Writer
	json   bool
	now    func() time.Time
}

func newPrinter(out, errOut io.Writer, asJSON bool) *printer {
	return &printer{sink: &sink{out: lineout.New(out), errOut: errOut, json: asJSON, now: time.Now}}
}

// forPod is a printer to the same sink whose lines name pod.
func (p *printer) forPod(pod string) *printer { return &printer{sink: p.sink, pod: pod} }

// prefix starts a text line of a pod, as kubectl logs --prefix does.
func (p *printer) prefix() string {
	if p.pod == "" {
		return ""
	}
	return "[pod/" + p.pod + "] "
}

// flush writes the lines still buffered; the steal's end calls it.
func (p *printer) flush() { _ = p.out.Flush() }

// jsonEvent is an event with the time the plugin printed it.
type jsonEvent struct {
	Time time.Time `json:"time"`
	Pod  string    `json:"pod,omitempty"`
	wire.StealEvent
}

func (p *printer) event(ev wire.StealEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ev.Kind == wire.EventWarning {
		// The lines before the warning come before it on a terminal that shows both.
		_ = p.out.Flush()
		fmt.Fprintf(p.errOut, "warning: %s%s\n", p.prefix(), lineout.Escape(ev.Message))
		if !p.json {
			return
		}
	}
	notes, warnings := connectionNotes(ev)
	if len(warnings) > 0 {
		_ = p.out.Flush()
		for _, w := range warnings {
			fmt.Fprintf(p.errOut, "warning: %s%s\n", p.prefix(), w)
		}
	}
	if ev.Kind == wire.EventRequest && !ev.Stolen {
		// Passed-through requests are the app's business; only JSON consumers see them.
		if !p.json {
			return
		}
	}
	if p.json {
		b, err := json.Marshal(jsonEvent{Time: p.now().UTC(), Pod: p.pod, StealEvent: ev})
		if err == nil {
			fmt.Fprintf(p.out, "%s\n", b)
		}
		return
	}
	ts := p.prefix() + p.now().Format("15:04:05")
	// What a client of the pod sent is escaped: a terminal obeys the control sequences in it
	// (lineout.Escape). JSON escapes them itself.
	esc := lineout.Escape
	switch ev.Kind {
	case wire.EventRequest:
		fmt.Fprintf(p.out, "%s %s %s %d %s %s (from %s)\n", ts, esc(ev.Method), esc(ev.Path), ev.Status, ev.Duration.Std(), esc(ev.Proto), esc(ev.Peer))
	case wire.EventConnection:
		fmt.Fprintf(p.out, "%s connection from %s to port %d: %s in, %s out, %s\n", ts, esc(ev.Peer), ev.Port, bytesString(ev.BytesIn), bytesString(ev.BytesOut), ev.Duration.Std())
	}
	for _, n := range notes {
		fmt.Fprintf(p.out, "%s %s\n", ts, n)
	}
}

// connectionNotes says what an EventFlush or EventDrain reports about the app's connections: notes
// for the output, warnings (requests that failed, connections the steal could not take) for the
// error output.
func connectionNotes(ev wire.StealEvent) (notes, warnings []string) {
	switch ev.Kind {
	case wire.EventFlush:
		if ev.Flushed > 0 {
			notes = append(notes, fmt.Sprintf("port %d: closed %d idle connections open before the steal; their clients reconnect into it", ev.Port, ev.Flushed))
		}
		if ev.Reset > 0 {
			warnings = append(warnings, fmt.Sprintf("reset %d busy connections to port %d (--flush-connections): their in-flight requests failed", ev.Reset, ev.Port))
		}
		switch {
		case ev.Left > 0 && ev.Done:
			warnings = append(warnings, fmt.Sprintf("port %d: %d connections open before the steal stayed busy for %v and still go to the app; --flush-connections resets them", ev.Port, ev.Left, wire.FlushWindow))
		case ev.Left > 0:
			notes = append(notes, fmt.Sprintf("port %d: %d busy connections open before the steal still go to the app; each is closed once idle, for up to %v", ev.Port, ev.Left, wire.FlushWindow))
		case ev.Done && ev.Flushed == 0 && ev.Reset == 0:
			notes = append(notes, fmt.Sprintf("port %d: no connection open before the steal is left", ev.Port))
		}
	case wire.EventShared:
		if len(ev.Sessions) > 0 {
			notes = append(notes, sharedNote(ev))
		}
	case wire.EventDrain:
		if ev.Drained > 0 {
			notes = append(notes, fmt.Sprintf("%d connections the agent relayed to the app closed gracefully after the steal", ev.Drained))
		}
		if ev.Reset > 0 {
			warnings = append(warnings, lineout.Escape(ev.Message))
		}
	}
	return notes, warnings
}

// sharedNote names the sessions that filter the same port, registered before this one: a request
// their filter matches too goes to them.
func sharedNote(ev wire.StealEvent) string {
	var who []string
	for _, o := range ev.Sessions {
		w := "session " + lineout.Escape(o.ID) + " ("
		switch {
		case o.User != "" && o.Host != "":
			w += lineout.Escape(o.User) + " on " + lineout.Escape(o.Host) + ", "
		case o.User != "":
			w += lineout.Escape(o.User) + ", "
		case o.Host != "":
			w += "on " + lineout.Escape(o.Host) + ", "
		}
		w += "filter " + lineout.Escape(o.Filter) + ", since " + o.Since.Local().Format("15:04:05") + ")"
		who = append(who, w)
	}
	them := "that session, registered"
	if len(who) > 1 {
		them = "those sessions, registered"
	}
	return fmt.Sprintf("port %d is shared with %s: a request that its filter matches too goes to %s first", ev.Port, strings.Join(who, ", "), them)
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
