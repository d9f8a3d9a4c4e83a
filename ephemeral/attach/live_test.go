package attach

import (
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// What `kubectl trafficlab sessions` shows of a session follows its streams: a steal and a dump while
// they run, a dial from the first on, and the bytes of its data connections.
func TestLiveInfo(t *testing.T) {
	since := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	l := newLive("0123456789ab", wire.Hello{Options: wire.SessionOptions{User: "alice", Host: "laptop"}}, since, nil)
	steal := wire.OpenRequest{Kind: wire.KindSteal, Steal: &wire.StealSpec{Ports: []int{8080, 80},
		Filter: &wire.HTTPFilter{Headers: []string{"^X-Dev: alice$"}, Methods: []string{"GET"}, Match: wire.MatchAny}}}
	dump := wire.OpenRequest{Kind: wire.KindDump, Dump: &wire.DumpSpec{Ports: []int{80}, Filter: "tcp"}}
	dial := wire.OpenRequest{Kind: wire.KindDial, Network: wire.NetworkTCP, Address: "db:5432"}
	endSteal := l.stream(&steal)
	endDump := l.stream(&dump)
	l.stream(&dial)()
	l.opened()
	// What the plugin prints a line for counts as a request: stolen requests and whole-port
	// connections, mirrored requests and copied connections; requests passed to the app do not.
	for _, e := range []wire.StealEvent{{Kind: wire.EventRequest, Stolen: true}, {Kind: wire.EventRequest}, {Kind: wire.EventConnection, Stolen: true}, {Kind: wire.EventReady}} {
		l.stealEvent(e)
	}
	for _, e := range []wire.MirrorEvent{{Kind: wire.EventMirrored}, {Kind: wire.EventCopied}, {Kind: wire.EventStats}} {
		l.mirrorEvent(e)
	}
	a, b := net.Pipe()
	defer a.Close()
	counted := l.count(b)
	go func() { _, _ = a.Write([]byte("hello")) }()
	if _, err := counted.Read(make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	want := wire.SessionInfo{ID: "0123456789ab", User: "alice", Host: "laptop", Since: since,
		Verbs:   []string{wire.KindDial, wire.KindDump, wire.KindSteal},
		Ports:   []int{80, 8080},
		Filters: []string{"expr=tcp", "header=^X-Dev: alice$", "match=any", "method=GET"},
		Bytes:   5, Connections: 2, Requests: 4}
	if diff := cmp.Diff(want, l.Info()); diff != "" {
		t.Errorf("Info with a steal, a dump and a dial (-want +got):\n%s", diff)
	}
	endSteal()
	endDump()
	want.Verbs, want.Ports, want.Filters = []string{wire.KindDial}, nil, nil
	if diff := cmp.Diff(want, l.Info()); diff != "" {
		t.Errorf("Info after the steal and dump ended (-want +got):\n%s", diff)
	}
}
