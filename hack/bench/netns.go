package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// nsThread is a network namespace owned by one OS thread of the bench: the thread unshares it and
// never leaves it, and every command and socket of the laptop side is made on that thread. No name
// is mounted under /run/netns, so nothing on the host refers to the namespace: it lives while the
// thread or a process started in it does. Commands started in it get SIGKILL when the thread ends
// (Pdeathsig), so a bench that is killed, even with SIGKILL, leaves no process behind to keep the
// namespace, its veth and their qdiscs alive.
type nsThread struct {
	jobs chan func()
	// path names the namespace for ip(8) while the thread lives (/proc/PID/task/TID/ns/net).
	path string
}

// newNSThread starts the thread and its namespace, with lo up.
func newNSThread() (*nsThread, error) {
	t := &nsThread{jobs: make(chan func())}
	ready := make(chan error, 1)
	go func() {
		// Locked and never unlocked: when this goroutine returns, the runtime ends the thread instead
		// of handing it, still in the namespace, to another goroutine.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ready <- fmt.Errorf("unshare the network namespace: %w", err)
			return
		}
		t.path = fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		ready <- nil
		for f := range t.jobs {
			f()
		}
	}()
	if err := <-ready; err != nil {
		return nil, err
	}
	if err := t.run(context.Background(), "ip", "link", "set", "lo", "up"); err != nil {
		t.close()
		return nil, err
	}
	return t, nil
}

// do runs f on the namespace's thread.
func (t *nsThread) do(f func() error) error {
	done := make(chan error, 1)
	t.jobs <- func() { done <- f() }
	return <-done
}

// start starts cmd in the namespace. A command started on the thread inherits its namespace.
func (t *nsThread) start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	return t.do(cmd.Start)
}

// run runs a command in the namespace and waits for it.
func (t *nsThread) run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	out := &limitedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := t.start(cmd); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("%s %q in the link's namespace: %w: %s", name, args, err, out.String())
	}
	return nil
}

// dial opens a TCP connection from the namespace: the socket is made on its thread, and stays in
// the namespace whichever goroutine uses it afterwards.
func (t *nsThread) dial(ctx context.Context, addr string) (net.Conn, error) {
	var c net.Conn
	err := t.do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// close ends the thread; the namespace goes with the last process in it.
func (t *nsThread) close() { close(t.jobs) }

// runHost runs a command in the bench's own (the host's) namespace and waits for it.
func runHost(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %q: %w: %s", name, args, err, out)
	}
	return nil
}

// limitedBuffer keeps the first 4 KiB written to it: enough of a failed command's message.
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := 4096 - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }
