package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/trafficlab/kubectl-trafficlab/internal/loopbacktest"
)

// TestRelayGrowsItsPipes: the relay carries bytes between its pipes and the agent's port both ways,
// and the pipes it was given hold relayPipeSize, not the kernel's 64 KiB default.
func TestRelayGrowsItsPipes(t *testing.T) {
	addr := loopbacktest.Serve(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// The relay and the test close their ends: keep a descriptor of each pipe, of its read end so that
	// the copy holds no writer open (which would keep its reader from seeing EOF).
	pipes := map[string]int{}
	for name, f := range map[string]*os.File{"stdin": inR, "stdout": outR} {
		rc, err := f.SyscallConn() // not Fd, which would make the relay's end blocking
		if err != nil {
			t.Fatal(err)
		}
		var fd int
		if cerr := rc.Control(func(raw uintptr) { fd, err = unix.Dup(int(raw)) }); cerr != nil || err != nil {
			t.Fatal(cerr, err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		pipes[name] = fd
	}
	done := make(chan error, 1)
	go func() {
		done <- runRelay(context.Background(), []string{addr.String()}, inR, outW, io.Discard)
		outW.Close()
	}()
	msg := bytes.Repeat([]byte("relay "), 100_000) // more than a default pipe holds
	go func() {
		_, _ = inW.Write(msg)
		inW.Close()
	}()
	got, err := io.ReadAll(outR)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echoed %d bytes, %v; want the %d sent", len(got), err, len(msg))
	}
	if err := <-done; err != nil {
		t.Fatalf("relay: %v", err)
	}
	for name, fd := range pipes {
		n, err := unix.FcntlInt(uintptr(fd), unix.F_GETPIPE_SZ, 0)
		if err != nil || n != relayPipeSize {
			t.Errorf("%s pipe holds %d bytes (%v), want %d", name, n, err, relayPipeSize)
		}
	}
}
