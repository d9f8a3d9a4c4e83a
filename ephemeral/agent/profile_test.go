package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime/pprof"
	"strings"
	"testing"
	"time"
)

// startMain runs a main process's server on the session socket of agent name.
func startMain(t *testing.T, name string) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socketName(name), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(serveSession, slog.New(slog.NewTextHandler(io.Discard, nil)))
	go srv.Serve(context.Background(), ln)
	t.Cleanup(func() {
		ln.Close()
		srv.Wait(time.Minute)
	})
}

// decodeProfile returns the uncompressed protobuf of a pprof profile.
func decodeProfile(t *testing.T, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("profile of %d bytes is not gzip: %v", len(b), err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("profile: %v", err)
	}
	return raw
}

// `trafficlab-agent profile` gets the main process's CPU profile and its heap profile, in pprof's
// format, through the session socket.
func TestProfile(t *testing.T) {
	name := testName(t)
	startMain(t, name)

	// The profiler is the process's: while one runs (here the test's own, in the same process as
	// the server) a request is refused, not queued.
	if err := pprof.StartCPUProfile(io.Discard); err != nil {
		t.Fatal(err)
	}
	err := runProfile([]string{"--name=" + name, "--seconds=1"}, io.Discard, io.Discard)
	pprof.StopCPUProfile()
	if err == nil || !strings.Contains(err.Error(), "cpu profile") {
		t.Errorf("a CPU profile while another runs = %v, want refused", err)
	}

	var cpu, errOut bytes.Buffer
	if err := runProfile([]string{"--name=" + name, "--seconds=1"}, &cpu, &errOut); err != nil {
		t.Fatalf("cpu profile: %v (stderr %q)", err, errOut.String())
	}
	if raw := decodeProfile(t, cpu.Bytes()); !bytes.Contains(raw, []byte("nanoseconds")) {
		t.Errorf("cpu profile has no sample type in nanoseconds: %q", raw[:min(len(raw), 200)])
	}

	var heap bytes.Buffer
	if err := runProfile([]string{"--name=" + name, "--kind=heap"}, &heap, io.Discard); err != nil {
		t.Fatalf("heap profile: %v", err)
	}
	if raw := decodeProfile(t, heap.Bytes()); !bytes.Contains(raw, []byte("inuse_space")) {
		t.Errorf("heap profile has no inuse_space: %q", raw[:min(len(raw), 200)])
	}
}

func TestProfileUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"--kind=goroutine"}, {"--seconds=0"}, {"--seconds=301"}, {"extra"}} {
		var stderr syncBuffer
		if _, err := profileFlags(args, &stderr); !errors.Is(err, errUsage) || stderr.String() == "" {
			t.Errorf("profileFlags(%q) = %v with stderr %q, want an explained usage error", args, err, stderr.String())
		}
	}
}
