package main

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestGuardUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"abc"},
		{"abc", "1", "extra"},
		{"abc", "1", "2"}, // stderr is no ready fd
		{"Bad-ID", "1"},
		{"abc", "0"},
		{"abc", "-5"},
		{"abc", "self"},
	} {
		var stderr syncBuffer
		err := runGuard(context.Background(), args, &stderr)
		if !errors.Is(err, errUsage) {
			t.Errorf("runGuard(%q) = %v, want a usage error", args, err)
		}
		if stderr.String() == "" {
			t.Errorf("runGuard(%q) explained nothing on stderr", args)
		}
	}
}

// A signal while the session runs stops the guard quietly and deletes nothing: the guard watches
// this very test process, which outlives it.
func TestGuardStopsOnSignal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var stderr syncBuffer
	if err := runGuard(ctx, []string{"abc", strconv.Itoa(os.Getpid())}, &stderr); err != nil {
		t.Fatalf("runGuard = %v, want nil", err)
	}
	if !strings.Contains(stderr.String(), "its table stays") {
		t.Errorf("stderr = %q", stderr.String())
	}
}

// The ready fd gets one byte once the guard watches, here this test process, which outlives it.
func TestGuardSaysWatching(t *testing.T) {
	rd, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	// A descriptor of its own, which runGuard closes and no *os.File finalizer closes again.
	fd, err := syscall.Dup(int(wr.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	wr.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		var stderr syncBuffer
		// runGuard takes the descriptor over, as the exec'd guard does fd 3.
		done <- runGuard(ctx, []string{"abc", strconv.Itoa(os.Getpid()), strconv.Itoa(fd)}, &stderr)
	}()
	b := make([]byte, 2)
	_ = rd.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := rd.Read(b)
	if err != nil || n != 1 {
		t.Fatalf("read ready fd = %d, %v; want one byte", n, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("runGuard = %v", err)
	}
}
