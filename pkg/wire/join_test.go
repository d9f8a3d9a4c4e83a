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

	"github.com/trafficlab/kubectl-trafficlab/internal/loopbacktest"
)

// forwardChain builds the whole path a forwarded connection takes: local client → plugin listener →
// tunnel → agent → backend, with Join on both ends, and returns the plugin listener's address.
func forwardChain(t *testing.T, backend func(net.Conn)) string {
	t.Helper()
	backendAddr := loopbacktest.Serve(t, backend).String()
	client, server := tunnelPair(t, transports()[1], DefaultMuxConfig())
	serve(t, server, handlers{backendAddr: func(st *Stream) {
		conn, err := net.Dial("tcp", backendAddr)
		if err != nil {
			st.Close()
			return
		}
		_ = Join(st, conn)
	}})
	// Join closes c itself before it returns; Serve's close after it finds c closed already.
	return loopbacktest.Serve(t, func(c net.Conn) {
		st, err := client.Open(context.Background(), dialReq(backendAddr, CompressionS2))
		if err != nil {
			return // Serve closes c
		}
		_ = Join(c, st)
	}).String()
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
