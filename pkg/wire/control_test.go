package wire

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock fires timers only when the test advances it, so heartbeat tests run instantly and
// deterministically.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	timers  []*fakeTimer
	created chan struct{}
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Unix(1_700_000_000, 0), created: make(chan struct{}, 64)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	t := &fakeTimer{clock: c, when: c.now.Add(d), active: true, ch: make(chan time.Time, 1)}
	c.timers = append(c.timers, t)
	c.mu.Unlock()
	c.created <- struct{}{}
	return t
}

// waitTimers blocks until n timers exist, so Advance cannot race the code under test.
func (c *fakeClock) waitTimers(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-c.created:
		case <-time.After(10 * time.Second):
			t.Fatal("timers never created")
		}
	}
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	for _, t := range c.timers {
		if t.active && !t.when.After(c.now) {
			t.active = false
			select {
			case t.ch <- c.now:
			default:
			}
		}
	}
	c.mu.Unlock()
}

type fakeTimer struct {
	clock  *fakeClock
	when   time.Time
	active bool
	ch     chan time.Time
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.clock.mu.Lock()
	defer t.clock.mu.Unlock()
	was := t.active
	t.active = false
	return was
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.clock.mu.Lock()
	defer t.clock.mu.Unlock()
	was := t.active
	t.active, t.when = true, t.clock.now.Add(d)
	return was
}

// controlPair connects a plugin Control and an agent Control with two pipes, as the exec stream does.
func controlPair(t *testing.T, pluginCfg, agentCfg ControlConfig) (plugin, agent *Control, closeAll func()) {
	t.Helper()
	toAgentR, toAgentW := io.Pipe()
	toPluginR, toPluginW := io.Pipe()
	pluginCfg.Role, agentCfg.Role = RolePlugin, RoleAgent
	plugin = NewControl(toPluginR, toAgentW, pluginCfg)
	agent = NewControl(toAgentR, toPluginW, agentCfg)
	closeAll = func() {
		toAgentW.Close()
		toPluginW.Close()
		toAgentR.Close()
		toPluginR.Close()
	}
	t.Cleanup(closeAll)
	return plugin, agent, closeAll
}

func handshake(t *testing.T, plugin, agent *Control, opts SessionOptions) (Hello, Welcome) {
	t.Helper()
	ctx := context.Background()
	secret := testSecret(t)
	type res struct {
		h   Hello
		err error
	}
	hc := make(chan res, 1)
	go func() {
		h, err := agent.ReadHello(ctx)
		if err == nil {
			err = agent.Welcome(Welcome{SessionID: "s-1", DataPort: 41234, DataKeyPin: fixedPin(), AgentPID: 7, Kinds: []string{KindDial}})
		}
		hc <- res{h, err}
	}()
	w, err := plugin.Hello(ctx, Hello{Secret: secret, Options: opts, DataConns: 1})
	if err != nil {
		t.Fatalf("plugin handshake: %v", err)
	}
	r := <-hc
	if r.err != nil {
		t.Fatalf("agent handshake: %v", r.err)
	}
	if !r.h.Secret.Equal(secret) {
		t.Error("secret changed in transit")
	}
	return r.h, w
}

func TestControlHandshake(t *testing.T) {
	plugin, agent, _ := controlPair(t, ControlConfig{Version: "v1.2.3"}, ControlConfig{Version: "v1.2.4"})
	h, w := handshake(t, plugin, agent, SessionOptions{HeartbeatInterval: 250, HeartbeatDeadline: 2000})
	if h.Protocol != Protocol || h.Version != "v1.2.3" {
		t.Errorf("hello: protocol %d version %q", h.Protocol, h.Version)
	}
	if w.Protocol != Protocol || w.Version != "v1.2.4" || w.DataPort != 41234 || w.SessionID != "s-1" || w.AgentPID != 7 {
		t.Errorf("welcome: %+v", w)
	}
	if agent.HeartbeatInterval() != 250*time.Millisecond || agent.HeartbeatDeadline() != 2*time.Second {
		t.Errorf("agent did not adopt the plugin's heartbeat options: %v, %v", agent.HeartbeatInterval(), agent.HeartbeatDeadline())
	}
}

func TestControlMismatch(t *testing.T) {
	t.Run("agent newer", func(t *testing.T) {
		plugin, _, _ := controlPair(t, ControlConfig{}, ControlConfig{})
		// A future agent refuses our Hello and names its own protocol.
		startFakeAgent(t, plugin, Error{Code: CodeProtocolMismatch, Message: "plugin speaks protocol 2, this agent speaks 3", Protocol: 3, Version: "v9.0.0"})
	})
	t.Run("agent older (plugin side)", func(t *testing.T) {
		plugin, _, _ := controlPair(t, ControlConfig{}, ControlConfig{})
		startFakeAgent(t, plugin, Welcome{Protocol: 0, Version: "v0.0.1"})
	})
	t.Run("plugin newer (agent side)", func(t *testing.T) {
		_, agent, _ := controlPair(t, ControlConfig{}, ControlConfig{Version: "v1.0.0"})
		h := Hello{Protocol: Protocol + 1, Version: "v2.0.0", Secret: testSecret(t)}
		reply := sendRawHello(t, agent, h)
		_, err := agent.ReadHello(context.Background())
		want := "plugin speaks protocol 3, this agent speaks 2 (plugin v2.0.0): the agent image is older: use the agent image released with this plugin (drop --agent-image or pull the matching tag)"
		if err == nil || err.Error() != want || !errors.Is(err, ErrProtocolMismatch) {
			t.Errorf("agent error:\n got %v\nwant %s", err, want)
		}
		// The plugin must hear about it, with our protocol number, to print its own advice.
		m := <-reply
		if e, ok := m.(Error); !ok || e.Code != CodeProtocolMismatch || e.Protocol != Protocol || e.Version != "v1.0.0" {
			t.Errorf("agent replied %#v", m)
		}
	})
	t.Run("plugin older (agent side)", func(t *testing.T) {
		_, agent, _ := controlPair(t, ControlConfig{}, ControlConfig{})
		sendRawHello(t, agent, Hello{Protocol: 0, Secret: testSecret(t), DataConns: 1})
		_, err := agent.ReadHello(context.Background())
		want := "plugin speaks protocol 0, this agent speaks 2: upgrade kubectl-trafficlab"
		if err == nil || err.Error() != want {
			t.Errorf("agent error:\n got %v\nwant %s", err, want)
		}
	})
}

// startFakeAgent answers the plugin's Hello with reply and checks the plugin's error message.
func startFakeAgent(t *testing.T, plugin *Control, reply Message) {
	t.Helper()
	// The plugin writes to plugin.w (an io.PipeWriter whose reader is the agent's input) and reads
	// plugin.r. Replace both with fresh pipes we drive by hand.
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	plugin.r, plugin.w = outR, inW
	t.Cleanup(func() { inR.Close(); outW.Close() })
	go func() {
		var magic [4]byte
		_, _ = io.ReadFull(inR, magic[:])
		_, _ = ReadMessage(inR)
		buf, _ := AppendFrame([]byte(ControlMagic), reply)
		_, _ = outW.Write(buf)
		_, _ = io.Copy(io.Discard, inR)
	}()
	_, err := plugin.Hello(context.Background(), Hello{Secret: testSecret(t)})
	var want string
	switch reply.(type) {
	case Error:
		want = "agent speaks protocol 3, this plugin speaks 2 (agent v9.0.0): upgrade kubectl-trafficlab"
	case Welcome:
		want = "agent speaks protocol 0, this plugin speaks 2 (agent v0.0.1): the agent image is older: use the agent image released with this plugin (drop --agent-image or pull the matching tag)"
	}
	if err == nil || err.Error() != want || !errors.Is(err, ErrProtocolMismatch) {
		t.Errorf("plugin error:\n got %v\nwant %s", err, want)
	}
}

// sendRawHello feeds h to the agent as a plugin would and returns the agent's first reply.
func sendRawHello(t *testing.T, agent *Control, h Hello) <-chan Message {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	agent.r, agent.w = inR, outW
	t.Cleanup(func() { inW.Close(); outR.Close() })
	go func() {
		buf, _ := AppendFrame([]byte(ControlMagic), h)
		_, _ = inW.Write(buf)
	}()
	reply := make(chan Message, 1)
	go func() {
		var magic [4]byte
		_, _ = io.ReadFull(outR, magic[:])
		m, _ := ReadMessage(outR)
		reply <- m
	}()
	return reply
}

func TestControlHeartbeatLoss(t *testing.T) {
	clk := newFakeClock()
	plugin, agent, _ := controlPair(t, ControlConfig{Clock: clk}, ControlConfig{Clock: newFakeClock()})
	handshake(t, plugin, agent, SessionOptions{})
	// The agent stays silent (its Run never starts), as if the network were cut; the plugin's
	// heartbeats still need a reader so the pipe does not block.
	go func() { _, _ = io.Copy(io.Discard, agent.r) }()
	done := make(chan error, 1)
	go func() { done <- plugin.Run(context.Background()) }()
	clk.waitTimers(t, 2)
	clk.Advance(DefaultHeartbeatDeadline - time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Run returned %v before the deadline", err)
	default:
	}
	clk.Advance(time.Millisecond)
	select {
	case err := <-done:
		var lost *PeerLostError
		if !errors.As(err, &lost) || !errors.Is(err, ErrPeerLost) {
			t.Fatalf("Run: %v, want *PeerLostError", err)
		}
		if lost.Silence != DefaultHeartbeatDeadline {
			t.Errorf("reported after %v of silence, want exactly the deadline %v", lost.Silence, DefaultHeartbeatDeadline)
		}
		if !strings.Contains(err.Error(), "no heartbeat from the peer for 5s") {
			t.Errorf("message %q", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("peer loss not reported at the deadline")
	}
}

func TestControlHeartbeatKeepsAlive(t *testing.T) {
	clk := newFakeClock()
	plugin, agent, _ := controlPair(t, ControlConfig{Clock: clk}, ControlConfig{Clock: newFakeClock()})
	handshake(t, plugin, agent, SessionOptions{})
	seen := make(chan FrameType, 1)
	plugin.afterHandle = func(ft FrameType) { seen <- ft }
	go func() { _, _ = io.Copy(io.Discard, agent.r) }()
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- plugin.Run(ctx) }()
	clk.waitTimers(t, 2)
	// Twenty seconds of fake time with a heartbeat from the agent every second: never lost.
	for i := range 20 {
		if err := agent.Send(Heartbeat{Seq: uint64(i)}); err != nil {
			t.Fatal(err)
		}
		if ft := <-seen; ft != FrameHeartbeat {
			t.Fatalf("handled %v", ft)
		}
		clk.Advance(time.Second)
	}
	select {
	case err := <-done:
		t.Fatalf("Run ended with %v although heartbeats kept coming", err)
	default:
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run after cancel: %v", err)
	}
}

func TestControlEnds(t *testing.T) {
	tests := []struct {
		name string
		end  func(agent *Control, closeAll func())
		want error
	}{
		{"bye", func(a *Control, _ func()) { _ = a.Bye("user pressed ctrl-c") }, ErrBye},
		{"error", func(a *Control, _ func()) { _ = a.Send(Error{Code: CodeInternal, Message: "nft failed"}) }, ErrInternal},
		{"eof", func(a *Control, _ func()) { a.w.(io.Closer).Close() }, ErrPeerClosed},
		{"garbage", func(a *Control, _ func()) { _, _ = a.w.Write([]byte{0x7e, 0, 0, 0, 0}) }, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plugin, agent, closeAll := controlPair(t, ControlConfig{Clock: newFakeClock()}, ControlConfig{Clock: newFakeClock()})
			handshake(t, plugin, agent, SessionOptions{})
			go func() { _, _ = io.Copy(io.Discard, agent.r) }()
			done := make(chan error, 1)
			go func() { done <- plugin.Run(context.Background()) }()
			tt.end(agent, closeAll)
			select {
			case err := <-done:
				if !errors.Is(err, tt.want) {
					t.Errorf("Run: %v, want %v", err, tt.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not end")
			}
		})
	}
}

func TestControlBadMagic(t *testing.T) {
	r, w := io.Pipe()
	c := NewControl(r, io.Discard, ControlConfig{Role: RolePlugin})
	go func() { _, _ = w.Write([]byte("exec format error\n")); w.Close() }()
	_, err := c.Hello(context.Background(), Hello{Secret: testSecret(t)})
	if !errors.Is(err, ErrBadMagic) || !strings.Contains(err.Error(), `"exec"`) {
		t.Errorf("got %v, want ErrBadMagic quoting the bytes", err)
	}
}

// TestControlRealClock: with the system clock, both ends send heartbeats on their interval and take
// the other's (the deadline is far off: losing the peer is TestControlRealClockLoss's, and the exact
// timing the fake clock tests').
func TestControlRealClock(t *testing.T) {
	cfg := ControlConfig{HeartbeatInterval: 20 * time.Millisecond, HeartbeatDeadline: time.Hour}
	plugin, agent, _ := controlPair(t, cfg, cfg)
	handshake(t, plugin, agent, SessionOptions{})
	const beats = 5
	pluginGot, agentGot := make(chan FrameType, beats), make(chan FrameType, beats)
	count := func(got chan FrameType) func(FrameType) {
		return func(ft FrameType) {
			select {
			case got <- ft:
			default:
			}
		}
	}
	plugin.afterHandle, agent.afterHandle = count(pluginGot), count(agentGot)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 2)
	go func() { errc <- plugin.Run(ctx) }()
	go func() { errc <- agent.Run(ctx) }()
	for _, got := range []chan FrameType{pluginGot, agentGot} {
		for range beats {
			select {
			case ft := <-got:
				if ft != FrameHeartbeat {
					t.Fatalf("handled %v, want heartbeats only", ft)
				}
			case err := <-errc:
				t.Fatalf("Run ended early: %v", err)
			case <-time.After(time.Minute):
				t.Fatalf("fewer than %d heartbeats in a minute at a 20ms interval", beats)
			}
		}
	}
	_ = plugin.Bye("done")
	if err := <-errc; !errors.Is(err, ErrBye) {
		t.Errorf("agent Run: %v, want ErrBye", err)
	}
}

// TestControlRealClockLoss: with the system clock, a silent peer is reported lost, after at least the
// deadline of silence.
func TestControlRealClockLoss(t *testing.T) {
	plugin, agent, _ := controlPair(t, ControlConfig{HeartbeatInterval: 20 * time.Millisecond, HeartbeatDeadline: 100 * time.Millisecond}, ControlConfig{})
	handshake(t, plugin, agent, SessionOptions{})
	go func() { _, _ = io.Copy(io.Discard, agent.r) }() // the agent's Run never starts: it stays silent
	done := make(chan error, 1)
	go func() { done <- plugin.Run(context.Background()) }()
	select {
	case err := <-done:
		var lost *PeerLostError
		if !errors.As(err, &lost) || lost.Deadline != 100*time.Millisecond || lost.Silence < lost.Deadline {
			t.Errorf("Run: %v, want *PeerLostError after at least the 100ms deadline of silence", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("a silent peer was not reported lost")
	}
}
