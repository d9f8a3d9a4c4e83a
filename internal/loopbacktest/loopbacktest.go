// Package loopbacktest is a unit-test helper: a TCP server on 127.0.0.1 whose per-connection
// behaviour the test gives, so that the accept loop is written once. Standard library only, so that
// tests on both sides (plugin and agent) may import it.
package loopbacktest

import (
	"net"
	"testing"
)

// Serve listens on 127.0.0.1 on a free port and runs handle for each accepted connection, each in
// its own goroutine, until the test ends, when the listener is closed. Serve closes a connection
// once handle returns, so a handler closes only when it must do so earlier (to signal the end of its
// answer before something else happens); half-closes (CloseWrite) stay the handler's. Connections
// still open when the test ends are left to their handlers, as a real server's would be.
func Serve(t testing.TB, handle func(net.Conn)) *net.TCPAddr {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed at the end of the test
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr)
}
