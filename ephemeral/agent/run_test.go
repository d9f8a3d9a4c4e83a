package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// syncBuffer lets the test read stderr while run may still be writing to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// fakeTimers are the idle timers run arms; the test fires them, so no test waits on a duration.
type fakeTimers struct {
	mu    sync.Mutex
	armed []chan time.Time
	stops atomic.Int32
	new   chan struct{}
}

func newFakeTimers() *fakeTimers { return &fakeTimers{new: make(chan struct{}, 64)} }

func (f *fakeTimers) timer(time.Duration) (<-chan time.Time, func() bool) {
	c := make(chan time.Time, 1)
	f.mu.Lock()
	f.armed = append(f.armed, c)
	f.mu.Unlock()
	f.new <- struct{}{}
	return c, func() bool { f.stops.Add(1); return true }
}

// waitArmed waits for the next timer and returns it.
func (f *fakeTimers) waitArmed(t *testing.T) chan time.Time {
	t.Helper()
	select {
	case <-f.new:
	case <-time.After(30 * time.Second):
		t.Fatal("no idle timer was armed")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.armed[len(f.armed)-1]
}

func (f *fakeTimers) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.armed)
}

// testEnv is an unprivileged main process whose sessions run serve.
func testEnv(timers *fakeTimers, serve sessionFunc) env {
	if serve == nil {
		serve = func(ctx context.Context, _ sessionIO) error {
			<-ctx.Done()
			return nil
		}
	}
	return env{
		capEff: func() (uint64, error) { return 0, nil }, newTimer: timers.timer, serve: serve,
		sweep:  func() ([]string, error) { return nil, nil },
		getenv: func(string) string { return "" },
	}
}

// testName is a session socket name of this test alone: abstract sockets are shared by the whole
// network namespace, other test processes included.
func testName(t *testing.T) string {
	return fmt.Sprintf("test-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-"))
}

func startRun(ctx context.Context, args []string, e env, stderr *syncBuffer) <-chan error {
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, e, stderr) }()
	return done
}

func waitResult(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return within 30s")
		return nil
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRunStops(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		act        func(t *testing.T, cancel context.CancelCauseFunc, timers *fakeTimers)
		wantReason string
	}{
		{
			name:       "idle timeout without sessions",
			args:       []string{"--idle-timeout=50ms"},
			act:        func(t *testing.T, _ context.CancelCauseFunc, f *fakeTimers) { f.waitArmed(t) <- time.Now() },
			wantReason: `reason="idle timeout"`,
		},
		{
			name:       "canceled",
			args:       []string{"--idle-timeout=0"},
			act:        func(_ *testing.T, cancel context.CancelCauseFunc, _ *fakeTimers) { cancel(errors.New("told to stop")) },
			wantReason: `reason="told to stop"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			timers := newFakeTimers()
			var stderr syncBuffer
			done := startRun(ctx, append(tt.args, "--name="+testName(t)), testEnv(timers, nil), &stderr)
			waitFor(t, "start line", func() bool { return strings.Contains(stderr.String(), "agent started") })
			tt.act(t, cancel, timers)
			if err := waitResult(t, done); err != nil {
				t.Fatalf("run() = %v, want nil", err)
			}
			out := stderr.String()
			for _, want := range []string{`msg="agent started"`, `msg="agent stopped"`, tt.wantReason} {
				if !strings.Contains(out, want) {
					t.Errorf("stderr lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

// With --idle-timeout=0 an unprivileged agent never arms the idle clock; a privileged one runs it,
// clamped.
func TestRunClampsPrivilegedIdleTimeout(t *testing.T) {
	timers := newFakeTimers()
	e := testEnv(timers, nil)
	e.capEff = func() (uint64, error) { return 1 << 12, nil } // CAP_NET_ADMIN
	var stderr syncBuffer
	done := startRun(context.Background(), []string{"--idle-timeout=0", "--name=" + testName(t)}, e, &stderr)
	timers.waitArmed(t) <- time.Now()
	if err := waitResult(t, done); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`msg="idle timeout clamped`, `used=10m0s`, `reason="idle timeout"`} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}

func TestClampIdle(t *testing.T) {
	const netAdmin, netRaw, chown = 1 << 12, 1 << 13, 1 << 0
	for _, tt := range []struct {
		d       time.Duration
		capEff  uint64
		want    time.Duration
		clamped bool
	}{
		{0, 0, 0, false},
		{time.Hour, chown, time.Hour, false},
		{0, netAdmin, 10 * time.Minute, true},
		{0, netRaw, 10 * time.Minute, true},
		{time.Hour, netRaw | chown, 10 * time.Minute, true},
		{time.Minute, netAdmin, time.Minute, false},
		{10 * time.Minute, netAdmin, 10 * time.Minute, false},
	} {
		got, clamped := clampIdle(tt.d, tt.capEff)
		if got != tt.want || clamped != tt.clamped {
			t.Errorf("clampIdle(%v, %#x) = %v, %v; want %v, %v", tt.d, tt.capEff, got, clamped, tt.want, tt.clamped)
		}
	}
}

// TestRunSignal sends the test process a real SIGTERM, caught by the same NotifyContext that
// main uses, so the process survives it.
func TestRunSignal(t *testing.T) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	var stderr syncBuffer
	done := startRun(ctx, []string{"--idle-timeout=0", "--name=" + testName(t)}, testEnv(newFakeTimers(), nil), &stderr)
	waitFor(t, "start line", func() bool { return strings.Contains(stderr.String(), "agent started") })
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := waitResult(t, done); err != nil {
		t.Fatalf("run() = %v, want nil", err)
	}
	if want := `reason="terminated signal received"`; !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
	}
}

func TestRunVersion(t *testing.T) {
	var stderr syncBuffer
	if err := run(context.Background(), []string{"--version"}, testEnv(newFakeTimers(), nil), &stderr); err != nil {
		t.Fatalf("run(--version) = %v", err)
	}
	if got, want := stderr.String(), devVersion+"\n"; got != want {
		t.Errorf("stderr = %q, want %q", got, want)
	}
}

func TestRunUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--no-such-flag"},
		{"--idle-timeout=-1s"},
		{"--idle-timeout=soon"},
		{"extra"},
		{"--name="},
	} {
		var stderr syncBuffer
		err := run(context.Background(), args, testEnv(newFakeTimers(), nil), &stderr)
		if !errors.Is(err, errUsage) {
			t.Errorf("run(%q) = %v, want a usage error", args, err)
		}
		if stderr.String() == "" {
			t.Errorf("run(%q) explained nothing on stderr", args)
		}
	}
}

func TestApplyMemoryLimit(t *testing.T) {
	// The limit is process-wide; put the test binary's own back afterwards.
	orig := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(orig) })

	if got := applyMemoryLimit(func(string) (string, bool) { return "", false }); got != defaultMemoryLimit {
		t.Errorf("without GOMEMLIMIT: limit = %d, want %d", got, defaultMemoryLimit)
	}

	const chosen = 123 << 20
	debug.SetMemoryLimit(chosen) // what the runtime does at start when GOMEMLIMIT is set
	if got := applyMemoryLimit(func(string) (string, bool) { return "123MiB", true }); got != chosen {
		t.Errorf("with GOMEMLIMIT: limit = %d, want %d", got, chosen)
	}
	if got := debug.SetMemoryLimit(-1); got != chosen {
		t.Errorf("with GOMEMLIMIT the limit changed to %d, want %d kept", got, chosen)
	}
}

// A NET_ADMIN agent sweeps the tables of agents that are gone before it takes its first session; one
// without NET_ADMIN cannot have left any and does not try (testEnv's sweep panics).
func TestRunSweepsAtStart(t *testing.T) {
	for _, tt := range []struct {
		name   string
		capEff uint64
		swept  int
	}{
		{name: "NET_ADMIN", capEff: 1 << 12, swept: 1},
		{name: "NET_RAW only", capEff: 1 << 13},
		{name: "no capability"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			timers := newFakeTimers()
			e := testEnv(timers, nil)
			e.capEff = func() (uint64, error) { return tt.capEff, nil }
			var swept atomic.Int32
			e.sweep = func() ([]string, error) {
				swept.Add(1)
				return []string{"inet trafficlab_dead"}, nil
			}
			var stderr syncBuffer
			done := startRun(context.Background(), []string{"--idle-timeout=1m", "--name=" + testName(t)}, e, &stderr)
			timers.waitArmed(t) <- time.Now()
			if err := waitResult(t, done); err != nil {
				t.Fatal(err)
			}
			if int(swept.Load()) != tt.swept {
				t.Errorf("swept %d times, want %d", swept.Load(), tt.swept)
			}
			if got := strings.Contains(stderr.String(), "trafficlab_dead"); got != (tt.swept > 0) {
				t.Errorf("the log names the removed table: %v, want %v:\n%s", got, tt.swept > 0, stderr.String())
			}
		})
	}
}

// The budget the plugin put in the environment is the one every session draws on; a value the agent
// cannot read stops it before it takes a session.
func TestRunMemoryBudgetFromEnv(t *testing.T) {
	timers := newFakeTimers()
	budgets := make(chan int64, 1)
	e := testEnv(timers, func(ctx context.Context, a sessionIO) error {
		budgets <- a.Budget.Limit()
		return nil
	})
	e.getenv = func(k string) string {
		if k == wire.AgentMemoryBudgetEnv {
			return "300000000"
		}
		return ""
	}
	name := testName(t)
	var stderr syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := startRun(ctx, []string{"--idle-timeout=1m", "--name=" + name}, e, &stderr)
	waitFor(t, "start line", func() bool { return strings.Contains(stderr.String(), "agent started") })
	if !strings.Contains(stderr.String(), "memory_budget=300000000") {
		t.Errorf("the start line does not give the budget:\n%s", stderr.String())
	}
	a := startAttach(t, "--name="+name)
	a.stdin.Close()
	select {
	case got := <-budgets:
		if got != 300000000 {
			t.Errorf("the session's budget is %d bytes, want the environment's 300000000", got)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no session ran")
	}
	cancel()
	if err := waitResult(t, done); err != nil {
		t.Fatal(err)
	}

	e.getenv = func(k string) string { return map[string]string{wire.AgentMemoryBudgetEnv: "lots"}[k] }
	err := waitResult(t, startRun(context.Background(), []string{"--name=" + name}, e, &stderr))
	if err == nil || !strings.Contains(err.Error(), wire.AgentMemoryBudgetEnv) {
		t.Errorf("run with an unreadable budget = %v, want an error naming %s", err, wire.AgentMemoryBudgetEnv)
	}
}

// TestRelayWhileAppServes: a terminating pod's agent holds while the app listens on a stolen port
// and returns once it does not; no stolen port, or sockets it cannot read, end the wait at once.
func TestRelayWhileAppServes(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	t.Run("until the app stops listening", func(t *testing.T) {
		timers := newFakeTimers()
		var calls atomic.Int32
		listening := func(ports []uint16) ([]uint16, error) {
			if !slices.Equal(ports, []uint16{8080, 9090}) {
				t.Errorf("asked about %v, want the stolen ports", ports)
			}
			if calls.Add(1) <= 2 {
				return []uint16{8080}, nil
			}
			return nil, nil
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			relayWhileAppServes(func() []int { return []int{8080, 9090} }, listening, timers.timer, log)
		}()
		for range 2 {
			fire := timers.waitArmed(t)
			select {
			case <-done:
				t.Fatal("returned while the app still listens")
			default:
			}
			fire <- time.Time{}
		}
		<-done
		if n := calls.Load(); n != 3 {
			t.Errorf("looked %d times, want 3", n)
		}
	})
	for name, tc := range map[string]struct {
		ports     []int
		listening func([]uint16) ([]uint16, error)
	}{
		"no stolen port": {nil, func([]uint16) ([]uint16, error) { t.Error("asked with no port"); return nil, nil }},
		"unreadable":     {[]int{8080}, func([]uint16) ([]uint16, error) { return nil, errors.New("EPERM") }},
	} {
		t.Run(name, func(t *testing.T) {
			timers := newFakeTimers()
			relayWhileAppServes(func() []int { return tc.ports }, tc.listening, timers.timer, log)
			if n := timers.count(); n != 0 {
				t.Errorf("%d timers armed, want none", n)
			}
		})
	}
}
