package attach

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// syncBuffer is a log destination the test reads while the server may still write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines(msg string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, l := range strings.Split(s.b.String(), "\n") {
		if strings.Contains(l, `msg="`+msg+`"`) {
			out = append(out, l)
		}
	}
	return out
}

// stepClock's time moves only when the test sets it.
type stepClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *stepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *stepClock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func (c *stepClock) NewTimer(d time.Duration) wire.Timer { return wire.SystemClock().NewTimer(d) }

// dataServer runs a session's data listener as Run does, with the Hello's secret and DataConns, and
// returns its address and the function that stops it and waits for every connection's goroutine.
func dataServer(t *testing.T, hello wire.Hello, log *syncBuffer, clock wire.Clock) (s *server, addr string, key *wire.DataKey, stop func()) {
	t.Helper()
	key, err := wire.NewDataKey()
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Log:                slog.New(slog.NewTextHandler(log, nil)),
		Clock:              clock,
		RefusedLogInterval: 10 * time.Second,
		PreambleTimeout:    10 * time.Second,
		Tunnel:             wire.DefaultMuxConfig(),
	}
	s = newServer(cfg, "s-1", hello, key)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.acceptConns(ctx, ln)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			ln.Close()
			<-done
			s.closeAll()
			s.streams.Wait()
			s.refused.flush()
		})
	}
	t.Cleanup(stop)
	return s, ln.Addr().String(), key, stop
}

func dialData(t *testing.T, addr string, pin wire.KeyPin, secret wire.Secret) (*wire.Mux, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return wire.ClientTunnel(context.Background(), c, pin, secret, wire.DefaultMuxConfig())
}

// TestDataConnsCappedAtHello: the plugin opens its data connections once, so a connection beyond the
// Hello's count is refused even with the secret: whoever else learned it gets no tunnel, and so no
// stolen connection.
func TestDataConnsCappedAtHello(t *testing.T) {
	secret, err := wire.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	log := &syncBuffer{}
	s, addr, key, stop := dataServer(t, wire.Hello{Secret: secret, DataConns: 2}, log, &stepClock{now: time.Unix(1_700_000_000, 0)})
	for i := range 2 {
		m, err := dialData(t, addr, key.Pin(), secret)
		if err != nil {
			t.Fatalf("data connection %d of 2: %v", i+1, err)
		}
		defer m.Close()
	}
	m, err := dialData(t, addr, key.Pin(), secret)
	if err == nil {
		m.Close()
		t.Fatal("a third data connection was accepted; the Hello declared 2")
	}
	if !errors.Is(err, wire.ErrForbidden) {
		t.Errorf("third data connection: %v, want forbidden", err)
	}
	// Stolen connections go to the tracked tunnels (OpenIncoming): the two the plugin opened.
	tracked := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.sessions)
	}
	waitFor(t, func() bool { return s.refused.total() == 1 && tracked() >= 2 })
	if tracked := tracked(); tracked != 2 {
		t.Errorf("%d tunnels would carry stolen connections, want the plugin's 2", tracked)
	}
	stop()
	lines := log.lines(wire.LogDataConnsRefused)
	if len(lines) != 1 || !strings.Contains(lines[0], "count=1") || !strings.Contains(lines[0], "the Hello declared 2") {
		t.Errorf("refusal log lines: %q", lines)
	}
}

// TestRefusedConnsLogRateLimited: anything in the pod can connect to the data port, so refusals are
// counted and logged once per interval, not once each.
func TestRefusedConnsLogRateLimited(t *testing.T) {
	secret, err := wire.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	wrong := secret
	wrong[0] ^= 1
	log := &syncBuffer{}
	clock := &stepClock{now: time.Unix(1_700_000_000, 0)}
	s, addr, key, stop := dataServer(t, wire.Hello{Secret: secret, DataConns: 1}, log, clock)
	refuse := func(n int) {
		for range n {
			if m, err := dialData(t, addr, key.Pin(), wrong); !errors.Is(err, wire.ErrForbidden) {
				if m != nil {
					m.Close()
				}
				t.Fatalf("wrong secret: %v, want forbidden", err)
			}
		}
	}
	refuse(20)
	// The agent counts a refusal after answering it; the clock moves once all 20 are counted.
	waitFor(t, func() bool { return s.refused.total() == 20 })
	clock.add(10 * time.Second)
	refuse(1)
	stop()
	lines := log.lines(wire.LogDataConnsRefused)
	// The first refusal is logged at once; the next 19 wait for the interval and come out with the
	// 21st; nothing is left for the flush at the end.
	if len(lines) != 2 || !strings.Contains(lines[0], "count=1 ") || !strings.Contains(lines[1], "count=20 ") {
		t.Errorf("refusal log lines for 21 refusals over one interval: %q", lines)
	}
}

// waitFor polls cond, which another goroutine makes true without telling anyone.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}
