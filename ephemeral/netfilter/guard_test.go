package netfilter

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startSleeper starts a child that lives until killed (or a minute passes), and reaps it when the
// test ends.
func startSleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sleep: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

func TestWaitExit(t *testing.T) {
	refused := func(errno unix.Errno) pidfdOpener {
		return func(int, int) (int, error) { return -1, errno }
	}
	for name, wait := range map[string]func(ctx context.Context, pid int) error{
		"pidfd": func(ctx context.Context, pid int) error { return waitExit(ctx, pid, unix.PidfdOpen, func() {}) },
		"proc":  func(ctx context.Context, pid int) error { return pollProc(ctx, pid, func() {}) },
		// A seccomp profile without pidfd_open answers EPERM; kernels before 5.3 ENOSYS.
		"pidfd_open refused by seccomp": func(ctx context.Context, pid int) error {
			return waitExit(ctx, pid, refused(unix.EPERM), func() {})
		},
		"pidfd_open missing": func(ctx context.Context, pid int) error {
			return waitExit(ctx, pid, refused(unix.ENOSYS), func() {})
		},
		"out of file descriptors": func(ctx context.Context, pid int) error {
			return waitExit(ctx, pid, refused(unix.EMFILE), func() {})
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Run("returns when the process exits", func(t *testing.T) {
				cmd := startSleeper(t)
				done := make(chan error, 1)
				go func() { done <- wait(context.Background(), cmd.Process.Pid) }()
				select {
				case err := <-done:
					t.Fatalf("returned %v while the process runs", err)
				case <-time.After(3 * procPollInterval):
				}
				// Killed but not reaped: a zombie has exited all the same.
				if err := cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
				select {
				case err := <-done:
					if err != nil {
						t.Fatalf("wait = %v", err)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("still waiting 10s after the process was killed")
				}
			})
			t.Run("gives up when ctx ends", func(t *testing.T) {
				cmd := startSleeper(t)
				ctx, cancel := context.WithTimeout(context.Background(), 2*procPollInterval)
				defer cancel()
				if err := wait(ctx, cmd.Process.Pid); !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("wait = %v, want deadline exceeded", err)
				}
			})
			t.Run("process already gone", func(t *testing.T) {
				cmd := startSleeper(t)
				pid := cmd.Process.Pid
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := wait(ctx, pid); err != nil {
					t.Fatalf("wait = %v", err)
				}
			})
		})
	}
}

func TestProcStart(t *testing.T) {
	start, alive := procStart(os.Getpid())
	if !alive || start == "" {
		t.Fatalf("procStart(self) = %q, %v", start, alive)
	}
	if again, _ := procStart(os.Getpid()); again != start {
		t.Errorf("start time changed: %q, then %q", start, again)
	}
}

func TestGuardRejectsBadInput(t *testing.T) {
	ctx := context.Background()
	if err := Guard(ctx, "Bad", os.Getpid(), nil); err == nil {
		t.Error("Guard accepted a bad id")
	}
	if err := Guard(ctx, "abc", 0, nil); err == nil {
		t.Error("Guard accepted pid 0")
	}
}

// waitExit says it watches once it does, whichever way it watches, and before the process exits:
// that is what tells startGuard that the table is guarded.
func TestWaitExitSaysWatching(t *testing.T) {
	for name, open := range map[string]pidfdOpener{
		"pidfd":   unix.PidfdOpen,
		"polling": func(int, int) (int, error) { return -1, unix.EPERM },
	} {
		t.Run(name, func(t *testing.T) {
			cmd := startSleeper(t)
			watching := make(chan struct{})
			done := make(chan error, 1)
			go func() {
				done <- waitExit(context.Background(), cmd.Process.Pid, open, func() { close(watching) })
			}()
			select {
			case <-watching:
			case err := <-done:
				t.Fatalf("waitExit returned %v without saying it watches", err)
			case <-time.After(10 * time.Second):
				t.Fatal("not watching after 10s")
			}
			_ = cmd.Process.Kill()
			if err := <-done; err != nil {
				t.Fatalf("waitExit = %v", err)
			}
		})
	}
}
