package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
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

// fakePod is the pod as the main process sees it: a number of live sessions and a target process.
type fakePod struct {
	sessions atomic.Int32
	targetUp atomic.Bool
	polls    atomic.Int32 // how often the main process looked at the sessions
}

func newFakePod() *fakePod {
	p := &fakePod{}
	p.targetUp.Store(true)
	return p
}

func (p *fakePod) env() env {
	return env{
		sessions: func() int { p.polls.Add(1); return int(p.sessions.Load()) },
		alive:    func(int) func() bool { return p.targetUp.Load },
		poll:     5 * time.Millisecond,
	}
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
		act        func(cancel context.CancelCauseFunc, pod *fakePod)
		wantReason string
	}{
		{
			name:       "idle timeout without sessions",
			args:       []string{"--idle-timeout=50ms"},
			act:        func(context.CancelCauseFunc, *fakePod) {},
			wantReason: `reason="idle timeout"`,
		},
		{
			name:       "target process gone",
			args:       []string{"--idle-timeout=0"},
			act:        func(_ context.CancelCauseFunc, p *fakePod) { p.targetUp.Store(false) },
			wantReason: `reason="target process 1 is gone"`,
		},
		{
			name:       "canceled",
			args:       []string{"--idle-timeout=0"},
			act:        func(cancel context.CancelCauseFunc, _ *fakePod) { cancel(errors.New("told to stop")) },
			wantReason: `reason="told to stop"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			pod := newFakePod()
			var stderr syncBuffer
			done := startRun(ctx, tt.args, pod.env(), &stderr)
			waitFor(t, "start line", func() bool { return strings.Contains(stderr.String(), "agent started") })
			tt.act(cancel, pod)
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

// The idle clock runs only while no session is alive: a long session never gets cut off.
func TestRunStaysWhileSessionsLive(t *testing.T) {
	pod := newFakePod()
	pod.sessions.Store(1)
	var stderr syncBuffer
	const idle = 100 * time.Millisecond
	e := pod.env()
	done := startRun(context.Background(), []string{"--idle-timeout=" + idle.String()}, e, &stderr)
	// A ticker never fires early: this many looks at a live session span four idle timeouts at least,
	// however slowly they come.
	looks := int32(4 * idle / e.poll)
	waitFor(t, fmt.Sprintf("%d looks at the live session", looks), func() bool {
		select {
		case err := <-done:
			t.Fatalf("run returned %v with a session alive, after %d looks", err, pod.polls.Load())
		default:
		}
		return pod.polls.Load() >= looks
	})
	pod.sessions.Store(0)
	if err := waitResult(t, done); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), `reason="idle timeout"`) {
		t.Errorf("stderr lacks the idle timeout reason:\n%s", stderr.String())
	}
}

// TestRunSignal sends the test process a real SIGTERM, caught by the same NotifyContext that
// main uses, so the process survives it.
func TestRunSignal(t *testing.T) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	var stderr syncBuffer
	done := startRun(ctx, []string{"--idle-timeout=0"}, newFakePod().env(), &stderr)
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
	if err := run(context.Background(), []string{"--version"}, newFakePod().env(), &stderr); err != nil {
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
	} {
		var stderr syncBuffer
		err := run(context.Background(), args, newFakePod().env(), &stderr)
		if !errors.Is(err, errUsage) {
			t.Errorf("run(%q) = %v, want a usage error", args, err)
		}
		if stderr.String() == "" {
			t.Errorf("run(%q) explained nothing on stderr", args)
		}
	}
}

// countSessions and procAlive read the real /proc: a process whose argv is
// `.../trafficlab-agent attach` counts, and its exit is seen.
func TestProcObservesRealProcesses(t *testing.T) {
	dir := t.TempDir()
	// sh runs the script named by its first argument, so argv can be exactly what the plugin's exec
	// produces while the process is only a shell waiting on sleep.
	if err := os.WriteFile(filepath.Join(dir, "attach"), []byte("sleep 30\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh")
	cmd.Args = []string{filepath.Join(dir, "trafficlab-agent"), "attach"}
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	pid := cmd.Process.Pid
	// A /proc that shows only this child, through a link to its real entry: agent sessions of a
	// cluster running on the same machine must not change the count.
	proc := t.TempDir()
	if err := os.Symlink(filepath.Join("/proc", strconv.Itoa(pid)), filepath.Join(proc, strconv.Itoa(pid))); err != nil {
		t.Fatal(err)
	}
	alive := procAlive("/proc")(pid)
	if !alive() {
		t.Fatal("a running process reported gone")
	}
	// Right after Start the child may still be the forked test binary, not yet exec'd into its argv.
	waitFor(t, "the session process to show its argv", func() bool { return countSessions(proc) == 1 })
	cmd.Process.Kill()
	cmd.Wait()
	if alive() {
		t.Error("a reaped process reported alive")
	}
	if got := countSessions(proc); got != 0 {
		t.Errorf("countSessions after exit = %d, want 0", got)
	}
}

func TestCountSessions(t *testing.T) {
	proc := t.TempDir()
	write := func(pid, cmdline string) {
		if err := os.MkdirAll(filepath.Join(proc, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(proc, pid, "cmdline"), []byte(cmdline), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("1", "/app/server\x00--port=80\x00")
	write("7", "/trafficlab-agent\x00--idle-timeout=10m0s\x00")
	write("12", "/trafficlab-agent\x00attach\x00")
	write("13", "/trafficlab-agent\x00attach\x00--dial-timeout=5s\x00")
	write("14", "/trafficlab-agent\x00relay\x00127.0.0.1:4000\x00")
	write("self", "/trafficlab-agent\x00attach\x00")
	if got := countSessions(proc); got != 2 {
		t.Errorf("countSessions = %d, want 2", got)
	}
}

func TestStartTime(t *testing.T) {
	proc := t.TempDir()
	os.MkdirAll(filepath.Join(proc, "42"), 0o755)
	// The command name may hold spaces and parentheses; field 22 counts from after the last ")".
	stat := "42 (my (odd) app) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 50"
	os.WriteFile(filepath.Join(proc, "42", "stat"), []byte(stat), 0o644)
	if got := startTime(proc, 42); got != "98765" {
		t.Errorf("startTime = %q, want 98765", got)
	}
	if got := startTime(proc, 43); got != "" {
		t.Errorf("startTime of a missing process = %q, want empty", got)
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
