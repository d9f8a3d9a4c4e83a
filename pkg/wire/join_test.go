package wire

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// forwardChain builds the whole path a forwarded connection takes: local client → plugin listener →
// tunnel → agent → backend, with Join on both ends, and returns the plugin listener's address.
func forwardChain(t *testing.T, backend func(net.Conn)) string {
	t.Helper()
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bl.Close() })
	go func() {
		for {
			c, err := bl.Accept()
			if err != nil {
				return
			}
			go backend(c)
		}
	}()
	client, server := tunnelPair(t, transports()[1], DefaultMuxConfig())
	serve(t, server, handlers{bl.Addr().String(): func(st *Stream) {
		conn, err := net.Dial("tcp", bl.Addr().String())
		if err != nil {
			st.Close()
			return
		}
		_ = Join(st, conn)
	}})
	ll, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ll.Close() })
	go func() {
		for {
			c, err := ll.Accept()
			if err != nil {
				return
			}
			go func() {
				st, err := client.Open(context.Background(), dialReq(bl.Addr().String(), CompressionS2))
				if err != nil {
					c.Close()
					return
				}
				_ = Join(c, st)
			}()
		}
	}()
	return ll.Addr().String()
}

func TestJoinHalfCloseEndToEnd(t *testing.T) {
	addr := forwardChain(t, func(c net.Conn) {
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		// Reply only after the client's EOF made it through both Joins and the tunnel.
		fmt.Fprintf(c, "got %d bytes", n)
		_ = c.(*net.TCPConn).CloseWrite()
		_, _ = io.Copy(io.Discard, c)
	})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(make([]byte, 300_000)); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "got 300000 bytes" {
		t.Fatalf("reply %q, %v", got, err)
	}
}

func TestJoinResetEndToEnd(t *testing.T) {
	addr := forwardChain(t, func(c net.Conn) {
		buf := make([]byte, 5)
		_, _ = io.ReadFull(c, buf)
		_ = c.(*net.TCPConn).SetLinger(0)
		c.Close() // RST
	})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadAll(c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client read after backend reset: %v, want ECONNRESET", err)
	}
}
