package tunnel_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/attach"
	"github.com/trafficlab/kubectl-trafficlab/internal/loopbacktest"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/tunnel"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// agentMain plays the agent's main process for resumable sessions: every exec'd attachment runs
// attach.Run with the one registry, over pipes that a test cuts (nothing arrives, no EOF) and makes
// again. A session whose plugin is away hangs up its attachment, which ends that exec.
type agentMain struct {
	sessions *attach.Registry
	down     atomic.Bool // exec fails, as with no route to the cluster
	execs    atomic.Int32

	mu    sync.Mutex
	cuts  []chan struct{}
	eofs  []chan struct{}
	ended chan error // the first attachment's Run: the session's own
	log   agentLog   // every attachment's log, as its stderr carries it
}

// agentLog keeps the agent's log lines for a test to wait on.
type agentLog struct {
	mu      sync.Mutex
	b       []byte
	changed chan struct{}
}

func (l *agentLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.b = append(l.b, p...)
	l.mu.Unlock()
	select {
	case l.changed <- struct{}{}:
	default:
	}
	return len(p), nil
}

// wait returns once the log holds s.
func (l *agentLog) wait(t *testing.T, s string) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		found := strings.Contains(string(l.b), s)
		l.mu.Unlock()
		if found {
			return
		}
		select {
		case <-l.changed:
		case <-deadline.C:
			l.mu.Lock()
			t.Logf("agent log:\n%s", l.b)
			l.mu.Unlock()
			t.Fatalf("the agent did not log %q within 10s", s)
		}
	}
}

func newAgentMain() *agentMain {
	return &agentMain{sessions: attach.NewRegistry(), ended: make(chan error, 16), log: agentLog{changed: make(chan struct{}, 1)}}
}

func (a *agentMain) StartControl(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer) error {
	if a.down.Load() {
		return errors.New("dial tcp: connect: network is unreachable")
	}
	a.execs.Add(1)
	cut, eof := make(chan struct{}), make(chan struct{})
	a.mu.Lock()
	a.cuts = append(a.cuts, cut)
	a.eofs = append(a.eofs, eof)
	a.mu.Unlock()
	hungUp := make(chan struct{})
	var once sync.Once
	run := make(chan error, 1)
	go func() {
		run <- attach.Run(context.WithoutCancel(ctx), attach.Config{
			Version:  "test",
			In:       cutReader(stdin, cut, eof),
			Out:      stdout,
			Log:      slog.New(slog.NewTextHandler(io.MultiWriter(stderr, &a.log), nil)),
			Sessions: a.sessions,
			Hangup:   func() { once.Do(func() { close(hungUp) }) },
		})
	}()
	select {
	case err := <-run:
		a.ended <- err
		return err
	case <-hungUp:
		// The relay's end: the attachment's Run goes on without it, as the main process's does.
		go func() { a.ended <- <-run }()
		return io.EOF
	case <-ctx.Done():
		go func() { a.ended <- <-run }()
		return ctx.Err()
	}
}

// cut stops every live attachment's input: a network cut as the agent sees it.
func (a *agentMain) cut() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.cuts {
		select {
		case <-c:
		default:
			close(c)
		}
	}
}

// crash ends every live attachment's input cleanly: the plugin's process gone, its exec stream
// closed by its kernel.
func (a *agentMain) crash() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.eofs {
		select {
		case <-c:
		default:
			close(c)
		}
	}
}

func cutReader(r io.Reader, cut, eof <-chan struct{}) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		<-eof
		pw.Close()
	}()
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			select {
			case <-cut:
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

func resumable(t *testing.T, grace time.Duration) (*tunnel.Tunnel, *agentMain, chan tunnel.Event) {
	t.Helper()
	a := newAgentMain()
	events := make(chan tunnel.Event, 16)
	c, err := tunnel.Connect(context.Background(), tunnel.Config{
		Control: a, Data: loopbackData{}, Version: "test",
		HeartbeatInterval: 50 * time.Millisecond, HeartbeatDeadline: 300 * time.Millisecond,
		ReconnectGrace: grace, RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond,
		Notify: func(e tunnel.Event) { events <- e },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, a, events
}

func next(t *testing.T, events <-chan tunnel.Event, want tunnel.EventKind) tunnel.Event {
	t.Helper()
	select {
	case e := <-events:
		if e.Kind != want {
			t.Fatalf("tunnel event %+v, want kind %d", e, want)
		}
		return e
	case <-time.After(10 * time.Second):
		t.Fatalf("no tunnel event of kind %d within 10s", want)
	}
	return tunnel.Event{}
}

func echoOnce(t *testing.T, c *tunnel.Tunnel, addr, msg string) {
	t.Helper()
	s, err := c.Dial(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatalf("dial through the agent: %v", err)
	}
	defer s.Close()
	if _, err := s.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo read %q, %v; want %q", buf, err, msg)
	}
}

// TestReconnectResumesSession: a cut tunnel is made again by itself and resumes the same session;
// a dial during the cut waits for it and goes through.
func TestReconnectResumesSession(t *testing.T) {
	addr := echoServer(t)
	c, a, events := resumable(t, 30*time.Second)
	if c.ReconnectGrace() != 30*time.Second {
		t.Fatalf("agent adopted a grace of %v, want 30s", c.ReconnectGrace())
	}
	echoOnce(t, c, addr, "before")
	a.down.Store(true)
	a.cut()
	next(t, events, tunnel.Reconnecting)
	// A dial while the tunnel is down waits for it.
	dialed := make(chan error, 1)
	go func() {
		s, err := c.Dial(context.Background(), "tcp", addr)
		if err == nil {
			s.Close()
		}
		dialed <- err
	}()
	a.down.Store(false)
	e := next(t, events, tunnel.Reconnected)
	if e.Away <= 0 {
		t.Errorf("reconnected after %v", e.Away)
	}
	if err := <-dialed; err != nil {
		t.Errorf("dial made during the reconnect: %v", err)
	}
	echoOnce(t, c, addr, "after")
	if a.execs.Load() < 2 {
		t.Errorf("%d execs, want a new one for the resume", a.execs.Load())
	}
	if n := a.sessions.Len(); n != 1 {
		t.Errorf("agent holds %d resumable sessions, want the one resumed", n)
	}
	// Twice: the resumed session goes away and comes back as the first did.
	a.cut()
	next(t, events, tunnel.Reconnecting)
	next(t, events, tunnel.Reconnected)
	echoOnce(t, c, addr, "again")
	if c.Err() != nil {
		t.Fatalf("tunnel ended: %v", c.Err())
	}
	c.Close()
	select {
	case <-a.ended:
	case <-time.After(10 * time.Second):
		t.Fatal("agent session still running 10s after the plugin closed")
	}
	waitFor(t, "the agent releases the session after bye", func() bool { return a.sessions.Len() == 0 })
}

// TestReconnectPastGrace: a plugin away longer than the grace finds the session forgotten, says so,
// and the tunnel ends with ErrForgotten.
// TestPluginGoneEndsAtOnce: a session's exec stream that ends cleanly (the plugin crashed or was
// killed: its kernel closed its connections) releases the session at once, its grace notwithstanding:
// only a plugin that cannot be heard (asleep, cut off) is waited for.
func TestPluginGoneEndsAtOnce(t *testing.T) {
	_, a, _ := resumable(t, time.Minute)
	a.down.Store(true)
	a.crash()
	waitFor(t, "the agent to release the session", func() bool { return a.sessions.Len() == 0 })
}

func TestReconnectPastGrace(t *testing.T) {
	c, a, events := resumable(t, 200*time.Millisecond)
	a.down.Store(true)
	a.cut()
	next(t, events, tunnel.Reconnecting)
	waitFor(t, "the agent forgets the session", func() bool { return a.sessions.Len() == 0 })
	a.down.Store(false)
	next(t, events, tunnel.Forgotten)
	<-c.Done()
	var fe *tunnel.ForgottenError
	if !errors.As(c.Err(), &fe) || !errors.Is(c.Err(), tunnel.ErrForgotten) {
		t.Fatalf("tunnel ended with %v, want the agent forgot the session", c.Err())
	}
	if want := "the agent forgot the session after 200ms away; start it again"; fe.Error() != want {
		t.Errorf("error %q, want %q", fe.Error(), want)
	}
	select {
	case err := <-a.ended:
		if err == nil {
			t.Error("the forgotten session's Run ended without saying why")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the forgotten session's Run did not end")
	}
}

// TestResumeNeedsToken: the session id alone resumes nothing (anyone who may exec into the agent
// could read it); neither does a wrong token, and both get the same refusal as an unknown id.
func TestResumeNeedsToken(t *testing.T) {
	c, a, _ := resumable(t, 30*time.Second)
	id := c.Welcome().SessionID
	wrong, err := wire.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		resume wire.Resume
	}{
		{"wrong token", wire.Resume{SessionID: id, Token: wrong}},
		{"unknown id", wire.Resume{SessionID: "000000000000", Token: wrong}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := helloResume(t, a, tc.resume)
			if !errors.Is(err, wire.ErrSessionGone) {
				t.Fatalf("resume answered %v, want session gone", err)
			}
		})
	}
	// The owner's tunnel is untouched.
	echoOnce(t, c, echoServer(t), "still")
}

// helloResume sends a resuming Hello to the agent as a new attachment would, and returns its answer.
func helloResume(t *testing.T, a *agentMain, r wire.Resume) error {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	defer inW.Close()
	defer outR.Close()
	go func() {
		err := attach.Run(context.Background(), attach.Config{Version: "test", In: inR, Out: outW, Sessions: a.sessions})
		outW.CloseWithError(err)
	}()
	ctrl := wire.NewControl(outR, inW, wire.ControlConfig{Role: wire.RolePlugin, Version: "test"})
	secret, err := wire.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = ctrl.Hello(ctx, wire.Hello{Secret: secret, DataConns: 1, Resume: &r})
	return err
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDumpEndsWithTunnel: a session that ran a dump, whose pcapng stream cannot resume (it would
// have a hole), ends with its tunnel as without a grace, rather than reconnect without it.
func TestDumpEndsWithTunnel(t *testing.T) {
	c, a, events := resumable(t, 30*time.Second)
	// Whether the agent can capture here does not matter: asking pins the session.
	if s, err := c.Dump(context.Background(), wire.DumpSpec{Ports: []int{8080}}); err == nil {
		s.Close()
	}
	a.cut()
	select {
	case <-c.Done():
	case e := <-events:
		t.Fatalf("tunnel event %+v, want the session to end", e)
	case <-time.After(10 * time.Second):
		t.Fatal("the tunnel did not end within 10s of the cut")
	}
	if errors.Is(c.Err(), tunnel.ErrForgotten) || c.Err() == nil {
		t.Errorf("tunnel ended with %v, want the lost tunnel", c.Err())
	}
}

// TestMirrorResumes: a mirror's stream outlives a cut as a steal's does: the session resumes, the
// agent's mirror goes on, and the requests it sees while the plugin is away are dropped and
// counted, not copied; its counts come on the resumed stream, the final ones when the plugin ends
// it. The agent sniffs (NET_RAW: the unit tests run as root) a port of a local server of the
// test's, which nothing else uses.
func TestMirrorResumes(t *testing.T) {
	app := loopbacktest.Serve(t, func(c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
				return
			}
		}
	})
	c, a, events := resumable(t, 30*time.Second)
	st, err := c.Mirror(context.Background(), wire.MirrorSpec{Ports: []int{app.Port}})
	if err != nil {
		t.Fatalf("mirror: %v", err)
	}
	defer st.Close()
	stats := make(chan wire.MirrorStats, 64)
	go func() {
		defer close(stats)
		r := wire.NewLineReader[wire.MirrorEvent](st)
		for {
			ev, err := r.Read()
			if err != nil {
				t.Logf("the mirror's stream ended: %v", err)
				return
			}
			if ev.Kind == wire.EventStats && ev.Stats != nil {
				stats <- *ev.Stats
			}
		}
	}()
	a.down.Store(true)
	a.cut()
	next(t, events, tunnel.Reconnecting)
	a.log.wait(t, "mirror away")
	const away = 5
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	for i := range away {
		resp, err := hc.Get(fmt.Sprintf("http://%s/away-%d", app, i))
		if err != nil {
			t.Fatalf("request to the app while the plugin is away: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	a.down.Store(false)
	next(t, events, tunnel.Reconnected)
	a.log.wait(t, "mirror resumed")
	// The counts so far come on the resumed stream, once the capture has seen the requests.
	deadline := time.NewTimer(15 * time.Second)
	defer deadline.Stop()
	for seen := false; !seen; {
		select {
		case s, ok := <-stats:
			if !ok {
				t.Fatalf("the mirror's stream ended after the resume: %v", c.Err())
			}
			seen = s.DroppedAway == away
		case <-deadline.C:
			t.Fatalf("no counts with the %d requests made while away on the resumed stream within 15s", away)
		}
	}
	if err := st.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var final *wire.MirrorStats
	for s := range stats {
		if !s.Partial {
			final = &s
		}
	}
	if final == nil {
		t.Fatal("no final counts after the plugin ended the mirror")
	}
	if final.DroppedAway != away || final.Requests != away || final.Mirrored != 0 {
		t.Errorf("final counts: %d requests, %d mirrored, %d dropped while away; want %d, 0, %d", final.Requests, final.Mirrored, final.DroppedAway, away, away)
	}
	if c.Err() != nil {
		t.Errorf("tunnel ended: %v", c.Err())
	}
}

// recordingData opens data connections as loopbackData does and keeps them, for a test to cut one.
type recordingData struct {
	mu    sync.Mutex
	conns []io.Closer
}

func (r *recordingData) OpenData(ctx context.Context, port int) (io.ReadWriteCloser, error) {
	c, err := loopbackData{}.OpenData(ctx, port)
	if err == nil {
		r.mu.Lock()
		r.conns = append(r.conns, c)
		r.mu.Unlock()
	}
	return c, err
}

// TestReconnectAfterDataConnLoss: one data connection lost while the control channel lives is a
// lost tunnel too (the streams on it are gone): the plugin resumes the session on a new link, which
// the agent hands over even before it has seen the old control channel end.
func TestReconnectAfterDataConnLoss(t *testing.T) {
	addr := echoServer(t)
	a := newAgentMain()
	data := &recordingData{}
	events := make(chan tunnel.Event, 16)
	c, err := tunnel.Connect(context.Background(), tunnel.Config{
		Control: a, Data: data, Version: "test", DataConns: 2,
		ReconnectGrace: 30 * time.Second, RetryMin: 20 * time.Millisecond,
		Notify: func(e tunnel.Event) { events <- e },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	echoOnce(t, c, addr, "before")
	data.mu.Lock()
	data.conns[1].Close()
	data.mu.Unlock()
	next(t, events, tunnel.Reconnecting)
	next(t, events, tunnel.Reconnected)
	echoOnce(t, c, addr, "after")
	if n := a.sessions.Len(); n != 1 {
		t.Errorf("agent holds %d resumable sessions, want the one resumed", n)
	}
}
