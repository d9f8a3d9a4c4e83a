package wire

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// stealEventsGolden has one event of every kind a steal sends, with the bytes each must have on the
// wire. Plugins and agents of one version interoperate, so these bytes change only with the protocol:
// field names, their order, omitempty, and encoding/json's escaping (<, >, & and U+2028 as \u
// escapes) are all part of them.
var stealEventsGolden = []golden[StealEvent]{
	{
		StealEvent{Kind: EventReady, Flushed: 2, KernelOwned: true},
		`{"kind":"ready","flushed":2,"kernelOwned":true}`,
	},
	{
		StealEvent{Kind: EventReady},
		`{"kind":"ready"}`,
	},
	{
		StealEvent{Kind: EventRequest, Port: 80, Peer: "10.0.0.2:4000", Proto: "HTTP/1.1", Method: "GET", Path: "/search?q=<b>&x=1", Status: 200, Stolen: true, Duration: 3, BytesIn: 10, BytesOut: 20},
		`{"kind":"request","port":80,"peer":"10.0.0.2:4000","proto":"HTTP/1.1","method":"GET","path":"/search?q=\u003cb\u003e\u0026x=1","status":200,"stolen":true,"durationMs":3,"bytesIn":10,"bytesOut":20}`,
	},
	{
		StealEvent{Kind: EventConnection, Port: 5432, Peer: "[fd00::2]:51000", Proto: "tcp", Stolen: true, Duration: 1500, BytesIn: 1 << 40, BytesOut: 7},
		`{"kind":"connection","port":5432,"peer":"[fd00::2]:51000","proto":"tcp","stolen":true,"durationMs":1500,"bytesIn":1099511627776,"bytesOut":7}`,
	},
	{
		StealEvent{Kind: EventWarning, Message: "local process refused \"GET /\"\u2028é\n"},
		`{"kind":"warning","message":"local process refused \"GET /\"\u2028é\n"}`,
	},
}

// mirrorEventsGolden is stealEventsGolden for a mirror.
var mirrorEventsGolden = []golden[MirrorEvent]{
	{
		MirrorEvent{Kind: EventReady},
		`{"kind":"ready"}`,
	},
	{
		MirrorEvent{Kind: EventMirrored, Port: 8080, Peer: "10.0.0.2:4000", Proto: "HTTP/1.1", Method: "POST", Path: "/a?b=<c>", Status: 201, PodStatus: 200, Duration: 12, BytesIn: 300, BytesOut: 40, Differences: []string{"status 201, pod 200", "header \"Etag\""}},
		`{"kind":"mirrored","port":8080,"peer":"10.0.0.2:4000","proto":"HTTP/1.1","method":"POST","path":"/a?b=\u003cc\u003e","status":201,"podStatus":200,"durationMs":12,"bytesIn":300,"bytesOut":40,"differences":["status 201, pod 200","header \"Etag\""]}`,
	},
	{
		MirrorEvent{Kind: EventMirrored, Port: 8080, Proto: "h2c", Method: "GET", Path: "/", Error: "dial tcp 10.1.0.9:80: connection refused"},
		`{"kind":"mirrored","port":8080,"proto":"h2c","method":"GET","path":"/","error":"dial tcp 10.1.0.9:80: connection refused"}`,
	},
	{
		MirrorEvent{Kind: EventCopied, Port: 6379, Peer: "10.0.0.3:3000", Proto: "tcp", Duration: 2, BytesIn: 5, BytesOut: 9},
		`{"kind":"copied","port":6379,"peer":"10.0.0.3:3000","proto":"tcp","durationMs":2,"bytesIn":5,"bytesOut":9}`,
	},
	{
		MirrorEvent{Kind: EventWarning, Message: "copies fall behind & are dropped"},
		`{"kind":"warning","message":"copies fall behind \u0026 are dropped"}`,
	},
	{
		MirrorEvent{Kind: EventStats, Stats: &MirrorStats{}},
		`{"kind":"stats","stats":{"connections":0,"requests":0,"mirrored":0,"answered":0,"kernelDropped":0}}`,
	},
	{
		MirrorEvent{Kind: EventStats, Stats: &MirrorStats{
			Connections: 1, Requests: 2, Probes: 3, Unselected: 4, SampledOut: 5, Mirrored: 6, Answered: 7, Differ: 8,
			DroppedMidStream: 9, DroppedGap: 10, DroppedSlow: 11, DroppedRefused: 12, DroppedUpgrade: 13, DroppedTooLarge: 14,
			DroppedOverBudget: 20,
			Failed:            15, KernelReceived: 16, KernelDropped: 17, EventsDropped: 18, AgentMaxRSS: 19, Partial: true,
		}},
		`{"kind":"stats","stats":{"connections":1,"requests":2,"probes":3,"unselected":4,"sampledOut":5,"mirrored":6,"answered":7,"differ":8,"droppedMidStream":9,"droppedGap":10,"droppedSlow":11,"droppedRefused":12,"droppedUpgrade":13,"droppedTooLarge":14,"droppedOverBudget":20,"failed":15,"kernelReceived":16,"kernelDropped":17,"eventsDropped":18,"agentMaxRss":19,"partial":true}}`,
	},
}

// golden is one event and its line on the wire.
type golden[E Event] struct {
	ev   E
	line string
}

// checkGolden writes the events, compares the bytes with the golden lines, and reads the golden
// lines back into the events.
func checkGolden[E Event](t *testing.T, events []golden[E]) {
	t.Helper()
	var buf, want bytes.Buffer
	w := NewLineWriter[E](&buf)
	var evs []E
	for _, g := range events {
		if err := w.Write(g.ev); err != nil {
			t.Fatalf("Write(%+v): %v", g.ev, err)
		}
		want.WriteString(g.line + "\n")
		evs = append(evs, g.ev)
	}
	if diff := cmp.Diff(want.String(), buf.String()); diff != "" {
		t.Errorf("bytes on the wire (-want +got):\n%s", diff)
	}
	r := NewLineReader[E](&want)
	var got []E
	for {
		ev, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Read after %d events: %v", len(got), err)
		}
		got = append(got, ev)
	}
	if diff := cmp.Diff(evs, got); diff != "" {
		t.Errorf("events read back (-want +got):\n%s", diff)
	}
}

func TestStealEventsGolden(t *testing.T) { checkGolden(t, stealEventsGolden) }

func TestMirrorEventsGolden(t *testing.T) { checkGolden(t, mirrorEventsGolden) }

// A reader of one version meets fields it does not know from a newer writer, and lines cut short
// when the agent dies mid-write: the first are ignored, the second is an error, not a made-up event.
func TestEventsReaderTolerance(t *testing.T) {
	r := NewLineReader[StealEvent](strings.NewReader(`{"kind":"request","port":80,"fromTheFuture":{"x":[1]}}` + "\n" + `{"kind":"warn`))
	ev, err := r.Read()
	if err != nil {
		t.Fatalf("Read with an unknown field: %v", err)
	}
	if diff := cmp.Diff(StealEvent{Kind: EventRequest, Port: 80}, ev); diff != "" {
		t.Errorf("event with an unknown field (-want +got):\n%s", diff)
	}
	if ev, err := r.Read(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("Read of a cut line = %+v, %v; want io.ErrUnexpectedEOF", ev, err)
	}
}
