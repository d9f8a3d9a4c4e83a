package steal

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/netfilter"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// flushRun runs the flush loop against scripted Flush results (the last one repeats) and returns
// its events and the busy argument of each call.
func flushRun(t *testing.T, spec wire.StealSpec, window time.Duration, script []map[uint16]netfilter.FlushCounts, err error) ([]wire.StealEvent, []bool) {
	t.Helper()
	var mu sync.Mutex
	var evs []wire.StealEvent
	var busy []bool
	s := &Steal{ending: newEnding(), cfg: Config{
		Spec:        spec,
		FlushWindow: window,
		Flush: func(ports []uint16, skipMark uint32, b bool) (map[uint16]netfilter.FlushCounts, int, error) {
			if skipMark != netfilter.PassMark {
				t.Errorf("Flush skips mark %#x, want the pass-through mark", skipMark)
			}
			mu.Lock()
			defer mu.Unlock()
			busy = append(busy, b)
			i := min(len(busy)-1, len(script)-1)
			return script[i], 0, err
		},
	}}
	s.add(&Registration{s: s, events: func(e wire.StealEvent) {
		mu.Lock()
		evs = append(evs, e)
		mu.Unlock()
	}})
	s.startFlush([]uint16{80, 443})
	select {
	case <-s.flushDone:
	case <-time.After(20 * time.Second): // a failure, not a hang
		s.startDrain()
		<-s.flushDone
		t.Fatal("the flush did not end")
	}
	return evs, busy
}

func TestFlushLoop(t *testing.T) {
	type counts = map[uint16]netfilter.FlushCounts
	flush := func(port, flushed, reset, left int, done bool) wire.StealEvent {
		return wire.StealEvent{Kind: wire.EventFlush, Port: port, Flushed: flushed, Reset: reset, Left: left, Done: done}
	}
	tests := []struct {
		name     string
		spec     wire.StealSpec
		window   time.Duration
		script   []counts
		err      error
		wantEvs  []wire.StealEvent
		wantBusy []bool
	}{
		{
			name:     "nothing open: no event, one look",
			script:   []counts{{}},
			wantBusy: []bool{false},
		},
		{
			name:   "busy ones reset as they become idle",
			window: time.Minute,
			script: []counts{
				{80: {Idle: 2, Left: 2}, 443: {Idle: 1}},
				{80: {Left: 2}},
				{80: {Idle: 1, Left: 1}},
				{80: {Idle: 1}},
			},
			wantEvs: []wire.StealEvent{
				flush(80, 2, 0, 2, false), flush(443, 1, 0, 0, true),
				flush(80, 1, 0, 1, false),
				flush(80, 1, 0, 0, true),
			},
			wantBusy: []bool{false, false, false, false},
		},
		{
			name:     "--flush-connections resets busy ones at the first look",
			spec:     wire.StealSpec{FlushConnections: true},
			script:   []counts{{80: {Idle: 1, Busy: 3}}},
			wantEvs:  []wire.StealEvent{flush(80, 1, 3, 0, true)},
			wantBusy: []bool{true},
		},
		{
			name:     "window over: what is left is reported",
			window:   time.Nanosecond,
			script:   []counts{{80: {Left: 2}}},
			wantEvs:  []wire.StealEvent{flush(80, 0, 0, 2, true)},
			wantBusy: []bool{false},
		},
		{
			name:     "a failed flush says so and stops",
			script:   []counts{nil},
			err:      errors.New("kernel built without CONFIG_INET_DIAG_DESTROY"),
			wantEvs:  []wire.StealEvent{{Kind: wire.EventWarning, Message: "could not reset the connections open before the steal: kernel built without CONFIG_INET_DIAG_DESTROY"}},
			wantBusy: []bool{false},
		},
		{
			name:   "keepOpen: never looked at",
			spec:   wire.StealSpec{KeepOpen: true},
			script: []counts{{80: {Idle: 1}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			evs, busy := flushRun(t, tt.spec, tt.window, tt.script, tt.err)
			if diff := cmp.Diff(tt.wantEvs, evs); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantBusy, busy); diff != "" {
				t.Errorf("busy arguments (-want +got):\n%s", diff)
			}
		})
	}
}
