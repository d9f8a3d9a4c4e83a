package deliver

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/internal/tunneltest"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// closedPort is a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func echo(t *testing.T, st io.ReadWriteCloser, msg string) {
	t.Helper()
	if _, err := st.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(st, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo = %q, %v; want %q", buf, err, msg)
	}
}

// TestServerSteal: a stolen connection reaches the local process over TCP; a local process that is
// down and a port that is not stolen are refused to the agent with the reason.
func TestServerSteal(t *testing.T) {
	down := closedPort(t)
	agent, plugin := tunneltest.Pipe(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := &Server{Kind: wire.KindIncoming, Locals: map[int]string{80: tunneltest.Echo(t).String(), 81: down}}
	go s.Serve(ctx, plugin)

	st, err := agent.Open(ctx, wire.OpenRequest{Kind: wire.KindIncoming, Network: wire.NetworkTCP, Address: "10.0.0.1:80", Port: 80, Peer: "10.0.0.2:1234"})
	if err != nil {
		t.Fatal(err)
	}
	echo(t, st, "ping")
	st.Close()

	_, err = agent.Open(ctx, wire.OpenRequest{Kind: wire.KindIncoming, Network: wire.NetworkTCP, Address: "10.0.0.1:81", Port: 81})
	if err == nil || !strings.Contains(err.Error(), "local process at "+down) {
		t.Errorf("open to a closed local port: %v, want the local refusal", err)
	}
	_, err = agent.Open(ctx, wire.OpenRequest{Kind: wire.KindIncoming, Network: wire.NetworkTCP, Address: "10.0.0.1:82", Port: 82})
	if err == nil || !strings.Contains(err.Error(), "port 82 is not stolen by this session") {
		t.Errorf("open for a port not stolen: %v", err)
	}
	_, err = agent.Open(ctx, wire.OpenRequest{Kind: wire.KindMirrored, Network: wire.NetworkTCP, Address: "10.0.0.1:80", Port: 80})
	if err == nil || !strings.Contains(err.Error(), `stream kind "mirrored"`) {
		t.Errorf("a mirrored stream to a steal: %v, want it refused", err)
	}
}

// TestServerMirrorDialer: a mirror's streams go through the verb's dialer (exec's reaches into its
// command's namespace) with the local address and the pod port; a steal's stream is refused.
func TestServerMirrorDialer(t *testing.T) {
	agent, plugin := tunneltest.Pipe(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type dialed struct {
		addr string
		port int
	}
	var mu sync.Mutex
	var got []dialed
	s := &Server{Kind: wire.KindMirrored, Locals: map[int]string{8080: "127.0.0.1:9090"},
		Dial: func(_ context.Context, addr string, port int) (net.Conn, error) {
			mu.Lock()
			got = append(got, dialed{addr, port})
			mu.Unlock()
			a, b := net.Pipe()
			go func() { defer b.Close(); _, _ = io.Copy(b, b) }()
			return a, nil
		}}
	go s.Serve(ctx, plugin)

	st, err := agent.Open(ctx, wire.OpenRequest{Kind: wire.KindMirrored, Network: wire.NetworkTCP, Address: "10.0.0.1:8080", Port: 8080})
	if err != nil {
		t.Fatal(err)
	}
	echo(t, st, "copy")
	st.Close()
	mu.Lock()
	if len(got) != 1 || got[0] != (dialed{"127.0.0.1:9090", 8080}) {
		t.Errorf("dialed %+v, want 127.0.0.1:9090 for pod port 8080", got)
	}
	mu.Unlock()

	_, err = agent.Open(ctx, wire.OpenRequest{Kind: wire.KindIncoming, Network: wire.NetworkTCP, Address: "10.0.0.1:8080", Port: 8080})
	if err == nil || !strings.Contains(err.Error(), `stream kind "incoming"`) {
		t.Errorf("a stolen stream to a mirror: %v, want it refused", err)
	}
	_, err = agent.Open(ctx, wire.OpenRequest{Kind: wire.KindMirrored, Network: wire.NetworkTCP, Address: "10.0.0.1:8081", Port: 8081})
	if err == nil || !strings.Contains(err.Error(), "port 8081 is not mirrored by this session") {
		t.Errorf("open for a port not mirrored: %v", err)
	}
}

// TestServerDialError: the dialer's refusal reaches the agent with the local address.
func TestServerDialError(t *testing.T) {
	agent, plugin := tunneltest.Pipe(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := &Server{Kind: wire.KindIncoming, Locals: map[int]string{80: "127.0.0.1:8080"},
		Dial: func(context.Context, string, int) (net.Conn, error) { return nil, errors.New("no namespace") }}
	go s.Serve(ctx, plugin)
	_, err := agent.Open(ctx, wire.OpenRequest{Kind: wire.KindIncoming, Network: wire.NetworkTCP, Address: "10.0.0.1:80", Port: 80})
	if err == nil || !strings.Contains(err.Error(), "local process at 127.0.0.1:8080: no namespace") {
		t.Errorf("open with a failing dialer: %v", err)
	}
}

// TestServerEndClosesStreams: when the delivery's context ends, the joined streams end too, so the
// agent's side sees the connection go.
func TestServerEndClosesStreams(t *testing.T) {
	agent, plugin := tunneltest.Pipe(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := &Server{Kind: wire.KindIncoming, Locals: map[int]string{80: tunneltest.Echo(t).String()}}
	served := make(chan struct{})
	go func() { defer close(served); s.Serve(ctx, plugin) }()
	st, err := agent.Open(ctx, wire.OpenRequest{Kind: wire.KindIncoming, Network: wire.NetworkTCP, Address: "10.0.0.1:80", Port: 80})
	if err != nil {
		t.Fatal(err)
	}
	echo(t, st, "before")
	cancel()
	<-served
	// A reset is as good as an end here: either way the read returns, where it would wait for ever
	// on a stream still joined to the echo server.
	ended := make(chan struct{})
	go func() { defer close(ended); _, _ = io.ReadAll(st) }()
	select {
	case <-ended:
	case <-time.After(time.Minute):
		t.Fatal("the stream is still open a minute after the delivery ended")
	}
}
