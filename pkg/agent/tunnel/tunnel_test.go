// The plugin's tunnel against the real agent session code, joined by in-memory pipes where the exec
// stream would be and by loopback TCP where port-forward would be.
package tunnel_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/attach"
	"github.com/trafficlab/kubectl-trafficlab/internal/loopbacktest"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/tunnel"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// agentExec runs the agent's session in-process, as `kubectl exec` would run it in the pod.
type agentExec struct {
	mu     sync.Mutex
	frozen chan struct{} // closed: the "network" drops everything from here on
	ended  chan error
}

func newAgentExec() *agentExec {
	return &agentExec{ended: make(chan error, 1)}
}

func (a *agentExec) StartControl(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer) error {
	err := attach.Run(ctx, attach.Config{
		Version: "test",
		In:      a.cut(stdin),
		Out:     stdout,
		Log:     slog.New(slog.NewTextHandler(stderr, nil)),
	})
	a.ended <- err
	return err
}

// cut returns a reader that stops delivering (without EOF) once freeze is called: a network cut as the
// agent sees it, where the exec stream stays open but nothing arrives.
func (a *agentExec) cut(r io.Reader) io.Reader {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.frozen = make(chan struct{})
	frozen := a.frozen
	pr, pw := io.Pipe()
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			select {
			case <-frozen:
				return
			default:
			}
			if n > 0 {
				pw.Write(buf[:n])
			}
			if err != nil {
				pw.CloseWithError(err)
				return
			}
		}
	}()
	return pr
}

func (a *agentExec) freeze() {
	a.mu.Lock()
	defer a.mu.Unlock()
	close(a.frozen)
}

// loopbackData reaches the agent's data port the way the kubelet does: a TCP connection to the pod's
// loopback.
type loopbackData struct{}

func (loopbackData) OpenData(ctx context.Context, port int) (io.ReadWriteCloser, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", itoa(port)))
}

func itoa(n int) string { return (&net.TCPAddr{Port: n}).String()[1:] }

func connect(t *testing.T, cfg tunnel.Config) (*tunnel.Tunnel, *agentExec) {
	t.Helper()
	a := newAgentExec()
	cfg.Control = a
	cfg.Data = loopbackData{}
	cfg.Version = "test"
	c, err := tunnel.Connect(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, a
}

func echoServer(t *testing.T) string {
	t.Helper()
	// Serve's close after the half-close changes nothing the client sees: the client's side ended
	// first (io.Copy saw its EOF), so the close only frees the socket, which this echo used to leak.
	return loopbacktest.Serve(t, func(c net.Conn) {
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	}).String()
}

func TestDialThroughAgent(t *testing.T) {
	addr := echoServer(t)
	for _, tc := range []struct {
		name string
		cfg  tunnel.Config
	}{
		{"one data connection, no compression", tunnel.Config{}},
		{"three data connections, s2", tunnel.Config{DataConns: 3, Compression: []wire.Compression{wire.CompressionS2}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := connect(t, tc.cfg)
			if w := c.Welcome(); w.DataPort == 0 || w.SessionID == "" {
				t.Fatalf("welcome = %+v", w)
			}
			var wg sync.WaitGroup
			for range 50 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					payload := make([]byte, 256<<10)
					rand.Read(payload)
					s, err := c.Dial(context.Background(), "tcp", addr)
					if err != nil {
						t.Error(err)
						return
					}
					defer s.Close()
					go func() {
						s.Write(payload)
						s.(interface{ CloseWrite() error }).CloseWrite()
					}()
					got, err := io.ReadAll(s)
					if err != nil {
						t.Error(err)
						return
					}
					if sha256.Sum256(got) != sha256.Sum256(payload) {
						t.Errorf("echo differs: %d bytes back of %d", len(got), len(payload))
					}
				}()
			}
			wg.Wait()
		})
	}
}

func TestDialFailureKeepsSession(t *testing.T) {
	c, _ := connect(t, tunnel.Config{})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	_, err := c.Dial(context.Background(), "tcp", closed)
	if !errors.Is(err, wire.ErrRefused) {
		t.Fatalf("dial of a closed port: %v, want refused", err)
	}
	s, err := c.Dial(context.Background(), "tcp", echoServer(t))
	if err != nil {
		t.Fatalf("the session should survive a failed dial: %v", err)
	}
	s.Close()
}

func TestUDPThroughAgent(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(bytes.ToUpper(buf[:n]), from)
		}
	}()
	c, _ := connect(t, tunnel.Config{})
	s, err := c.Dial(context.Background(), "udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, msg := range []string{"one", "two", "three"} {
		if err := wire.WriteDatagram(s, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2048)
		n, err := wire.ReadDatagram(s, buf)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(buf[:n]); got != string(bytes.ToUpper([]byte(msg))) {
			t.Errorf("datagram = %q", got)
		}
	}
}

// A plugin that says goodbye releases the agent's session at once: its data port closes.
func TestCloseReleasesAgentSession(t *testing.T) {
	c, a := connect(t, tunnel.Config{})
	port := c.Welcome().DataPort
	c.Close()
	select {
	case err := <-a.ended:
		if err != nil {
			t.Errorf("agent session after bye: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("agent session still running 5s after the plugin closed")
	}
	if conn, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", itoa(port))); err == nil {
		conn.Close()
		t.Error("agent's data port still accepts connections after the session ended")
	}
}

// A cut network delivers nothing and no EOF: both ends must notice by heartbeat within the deadline.
func TestNetworkCutEndsBothSides(t *testing.T) {
	c, a := connect(t, tunnel.Config{HeartbeatInterval: 50 * time.Millisecond, HeartbeatDeadline: 400 * time.Millisecond})
	a.freeze()
	select {
	case err := <-a.ended:
		if !errors.Is(err, wire.ErrPeerLost) {
			t.Errorf("agent ended with %v, want peer lost", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("agent did not notice the cut within 5s")
	}
	select {
	case <-c.Done():
		if c.Err() == nil {
			t.Error("plugin side ended without a reason")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("plugin did not notice the end within 5s")
	}
	if _, err := c.Dial(context.Background(), "tcp", "127.0.0.1:1"); err == nil {
		t.Error("dial after the session ended should fail")
	}
}

func TestMain(m *testing.M) {
	os.Exit(m.Run())
}

// TestDialContextUDP: a "udp" conn from DialContext keeps datagram boundaries through the agent.
func TestDialContextUDP(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(append([]byte("echo:"), buf[:n]...), from)
		}
	}()
	c, _ := connect(t, tunnel.Config{})
	conn, err := c.DialContext(context.Background(), "udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, msg := range []string{"a", "", "three"} {
		if _, err := conn.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 100)
		n, err := conn.Read(buf)
		if err != nil || string(buf[:n]) != "echo:"+msg {
			t.Fatalf("read %q, %v; want %q", buf[:n], err, "echo:"+msg)
		}
	}
	if _, err := c.DialContext(context.Background(), "ip", "1.2.3.4:1"); err == nil {
		t.Error("dial of network ip succeeded")
	}
}
