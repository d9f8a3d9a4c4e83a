package loopback

import (
	"net"
	"slices"
	"testing"
)

// TestHostPorts: listeners on loopback and on every address are found, the command's view
// of localhost then matches this machine's.
func TestHostPorts(t *testing.T) {
	for _, l := range []struct{ network, addr string }{{"tcp4", "127.0.0.1:0"}, {"tcp4", "0.0.0.0:0"}, {"tcp", ":0"}, {"tcp6", "[::1]:0"}} {
		network, addr := l.network, l.addr
		ln, err := net.Listen(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		port := ln.Addr().(*net.TCPAddr).Port
		if !slices.Contains(HostPorts(), port) {
			t.Errorf("%s listener on %s (port %d) not found", network, addr, port)
		}
	}
}
