package attach

import (
	"net"
	"testing"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// newTunnel is the agent's end of a tunnel over a pipe whose other end only reads.
func newTunnel(t *testing.T) *wire.Mux {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := b.Read(buf); err != nil {
				return
			}
		}
	}()
	s, err := wire.Server(a, wire.MuxConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		b.Close()
	})
	return s
}

// TestMirrorSpacesEveryTunnelWhileAnyMirrorRuns: a mirror spaces the writes of the session's
// tunnels, including one that joins while it runs, and the spacing ends with the last mirror, not
// the first to end.
func TestMirrorSpacesEveryTunnelWhileAnyMirrorRuns(t *testing.T) {
	s := &server{}
	first := newTunnel(t)
	if !s.track(first) {
		t.Fatal("track refused a tunnel")
	}
	check := func(when string, want time.Duration, tunnels ...*wire.Mux) {
		t.Helper()
		for i, tn := range tunnels {
			if got := tn.WriteInterval(); got != want {
				t.Errorf("%s: tunnel %d spaces its writes by %v, want %v", when, i, got, want)
			}
		}
	}
	check("before any mirror", 0, first)

	endA := s.mirrorStarted()
	check("one mirror running", wire.MirrorWriteInterval, first)
	late := newTunnel(t)
	s.track(late)
	check("a tunnel joined during the mirror", wire.MirrorWriteInterval, first, late)

	endB := s.mirrorStarted()
	endA()
	check("the first of two mirrors ended", wire.MirrorWriteInterval, first, late)
	endB()
	check("both mirrors ended", 0, first, late)

	after := newTunnel(t)
	s.track(after)
	check("a tunnel joined after the mirrors", 0, after)
}
