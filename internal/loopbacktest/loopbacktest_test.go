package loopbacktest_test

import (
	"io"
	"net"
	"testing"

	"github.com/trafficlab/kubectl-trafficlab/internal/loopbacktest"
)

// TestServe: the handler gets the bytes a client sends, and Serve closes the connection once the
// handler returns (the client's read ends).
func TestServe(t *testing.T) {
	got := make(chan string, 1)
	addr := loopbacktest.Serve(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		got <- string(b)
	})
	c, err := net.DialTCP("tcp", nil, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "hello" {
		t.Errorf("handler read %q, want %q", s, "hello")
	}
	// Blocks until the server closes its end: Serve must close it after the handler returned.
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Errorf("after the handler returned: read %q, %v; want EOF", rest, err)
	}
}

// TestServeClosesListener: once the test that called Serve has ended, nothing listens on its
// address any more.
func TestServeClosesListener(t *testing.T) {
	var addr *net.TCPAddr
	t.Run("serve", func(t *testing.T) {
		addr = loopbacktest.Serve(t, func(net.Conn) {})
	})
	// The subtest's cleanups ran before t.Run returned, so the listener is closed: the dial is
	// refused at once (a listener left open would accept it from its backlog).
	c, err := net.DialTCP("tcp", nil, addr)
	if err == nil {
		c.Close()
		t.Fatalf("dial %s after the test ended succeeded, want refused", addr)
	}
}
