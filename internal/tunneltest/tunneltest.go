// Package tunneltest is a unit-test helper for the streams the agent opens: a real yamux tunnel over
// net.Pipe whose agent end the test plays, and a local process on a loopback listener.
package tunneltest

import (
	"io"
	"net"
	"testing"

	"github.com/trafficlab/kubectl-trafficlab/internal/loopbacktest"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Pipe returns both ends of a tunnel; both are closed when the test ends.
func Pipe(t testing.TB) (agent, plugin *wire.Mux) {
	t.Helper()
	a, b := net.Pipe()
	agent, err := wire.Server(a, wire.DefaultMuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	plugin, err = wire.Client(b, wire.DefaultMuxConfig())
	if err != nil {
		agent.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Close(); plugin.Close() })
	return agent, plugin
}

// Echo starts a local process on 127.0.0.1 that answers each connection with what it reads, and
// returns its address; it stops when the test ends.
func Echo(t testing.TB) *net.TCPAddr {
	t.Helper()
	return loopbacktest.Serve(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
}
