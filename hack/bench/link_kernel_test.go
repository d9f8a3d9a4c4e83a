//go:build linux && kernel

package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestKernelLink brings a 100mbit/30ms link up in a namespace the bench makes, with toxiproxy in
// front of a local HTTP server standing for the apiserver: the preflight finds the rate on the veth
// each way and the round trip through the proxy, a request from the namespace reaches the server
// only through the proxy, and after down() the veth, its qdiscs and toxiproxy are gone.
func TestKernelLink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatalf("kernel test: needs root, running as uid %d", os.Geteuid())
	}
	out, err := exec.Command(filepath.Join("..", "tools", "install.sh"), "toxiproxy-server").Output()
	if err != nil {
		t.Fatalf("hack/tools/install.sh toxiproxy-server: %v", err)
	}
	toxiproxy := strings.TrimSpace(string(out))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "upstream") })}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	spec, err := parseLink("100mbit/30ms")
	if err != nil {
		t.Fatal(err)
	}
	l, err := upLink(ctx, spec, toxiproxy, ln.Addr().String())
	if err != nil {
		t.Fatalf("upLink: %v", err)
	}
	downed := false
	t.Cleanup(func() {
		if !downed {
			l.down()
		}
	})
	if _, err := l.preflight(ctx); err != nil {
		t.Errorf("preflight: %v", err)
	}

	// Through the proxy, the namespace gets the server's answer.
	c, err := l.ns.dial(ctx, l.proxyAddr)
	if err != nil {
		t.Fatalf("dial the proxy from the namespace: %v", err)
	}
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("answer through the proxy: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	c.Close()
	if string(body) != "upstream" {
		t.Errorf("answer through the proxy: %q, want %q", body, "upstream")
	}
	// The server itself is not reachable from the namespace: no route to the host's loopback.
	if c, err := l.ns.dial(ctx, ln.Addr().String()); err == nil {
		c.Close()
		t.Errorf("the namespace reached %s without the proxy", ln.Addr())
	}

	toxi := l.toxiproxy
	l.down()
	downed = true
	if err := exec.Command("ip", "link", "show", linkHostIf).Run(); err == nil {
		t.Errorf("veth %s still there after down()", linkHostIf)
	}
	if err := toxi.Process.Signal(syscall.Signal(0)); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("toxiproxy still running after down(): signal 0 gave %v", err)
	}
}
