//go:build linux && kernel

package testnet

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netns"
)

func TestOwnerPID(t *testing.T) {
	tests := []struct {
		name    string
		wantPID int
		wantOK  bool
	}{
		{"tltest-123-abcd", 123, true},
		{"tltest-1-x", 1, true},
		{"tltest-123", 0, false},
		{"tltest-abc-1", 0, false},
		{"tltest--1", 0, false},
		{"tltest-0-a", 0, false},
		{"cni-123-abcd", 0, false},
		{"tltest123-a", 0, false},
	}
	for _, tt := range tests {
		pid, ok := ownerPID(tt.name)
		if diff := cmp.Diff([]any{tt.wantPID, tt.wantOK}, []any{pid, ok}); diff != "" {
			t.Errorf("ownerPID(%q) (-want +got):\n%s", tt.name, diff)
		}
	}
}

func TestUniqueNameRoundTrips(t *testing.T) {
	name, err := uniqueName()
	if err != nil {
		t.Fatal(err)
	}
	if pid, ok := ownerPID(name); !ok || pid != os.Getpid() {
		t.Errorf("ownerPID(%q) = %d, %v; want %d, true", name, pid, ok, os.Getpid())
	}
}

func TestKernelNamespaceLifecycle(t *testing.T) {
	var name string
	t.Run("inner", func(t *testing.T) {
		ns := New(t)
		name = ns.Name
		if _, err := os.Stat(filepath.Join(netnsDir, name)); err != nil {
			t.Fatalf("namespace not mounted: %v", err)
		}
		before, err := netns.Get()
		if err != nil {
			t.Fatal(err)
		}
		defer before.Close()

		var inside netns.NsHandle
		if err := ns.Do(func() error {
			var err error
			inside, err = netns.Get()
			return err
		}); err != nil {
			t.Fatalf("Do: %v", err)
		}
		defer inside.Close()
		if !inside.Equal(ns.Handle()) {
			t.Errorf("Do ran in %v, want %v", inside, ns.Handle())
		}

		after, err := netns.Get()
		if err != nil {
			t.Fatal(err)
		}
		defer after.Close()
		if !after.Equal(before) {
			t.Errorf("thread left in %v after Do, want %v", after, before)
		}

		wantErr := errors.New("boom")
		if err := ns.Do(func() error { return wantErr }); !errors.Is(err, wantErr) {
			t.Errorf("Do = %v, want f's error", err)
		}
	})
	if name == "" {
		t.Fatal("the inner test made no namespace")
	}
	if _, err := os.Stat(filepath.Join(netnsDir, name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace %q still mounted after the test: %v", name, err)
	}
}

func TestKernelSweepRemovesDeadRunsOnly(t *testing.T) {
	RequireRoot(t)
	// A process that has exited stands in for a crashed test binary.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := fmt.Sprintf("%s%d-leftover", Prefix, cmd.Process.Pid)
	alive := fmt.Sprintf("%s%d-inuse", Prefix, os.Getpid())
	for _, name := range []string{dead, alive} {
		h, err := newNamed(name)
		if err != nil {
			t.Fatal(err)
		}
		h.Close()
		t.Cleanup(func() { _ = deleteNamed(name) })
	}
	// A run killed between creating the file and mounting the namespace leaves a plain file.
	unmounted := fmt.Sprintf("%s%d-unmounted", Prefix, cmd.Process.Pid)
	if err := os.WriteFile(filepath.Join(netnsDir, unmounted), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deleteNamed(unmounted) })

	New(t)

	for _, name := range []string{dead, unmounted} {
		if _, err := os.Stat(filepath.Join(netnsDir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("leftover %q of a dead process survived the sweep: %v", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(netnsDir, alive)); err != nil {
		t.Errorf("namespace %q of a live process was swept: %v", alive, err)
	}
}

func TestKernelConnectCarriesTraffic(t *testing.T) {
	a, b := New(t), New(t)
	aEnd, bEnd := Connect(t,
		a, []netip.Prefix{netip.MustParsePrefix("10.99.0.1/24"), netip.MustParsePrefix("fd00:99::1/64")},
		b, []netip.Prefix{netip.MustParsePrefix("10.99.0.2/24"), netip.MustParsePrefix("fd00:99::2/64")})
	if aEnd.Index == 0 || bEnd.Index == 0 {
		t.Fatalf("links without index: %+v %+v", aEnd, bEnd)
	}

	for _, addr := range []string{"10.99.0.1:7", "[fd00:99::1]:7"} {
		t.Run(addr, func(t *testing.T) {
			l := a.Listen(t, "tcp", addr)
			go echoOnce(l)

			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := b.DialContext(ctx, "tcp", addr)
			if err != nil {
				t.Fatalf("dial %s from netns %q: %v", addr, b.Name, err)
			}
			defer c.Close()
			if _, err := io.WriteString(c, "ping\n"); err != nil {
				t.Fatal(err)
			}
			got, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || got != "ping\n" {
				t.Fatalf("echo = %q, %v", got, err)
			}
		})
	}

	// The addresses exist only inside the test namespaces. (A dial from the host proves
	// nothing: some VMs accept every outgoing TCP connection in a transparent proxy.)
	hostAddrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, ha := range hostAddrs {
		if p, err := netip.ParsePrefix(ha.String()); err == nil && (p.Addr() == netip.MustParseAddr("10.99.0.1") || p.Addr() == netip.MustParseAddr("fd00:99::1")) {
			t.Errorf("host namespace has the test address %s", p)
		}
	}
}

func echoOnce(l net.Listener) {
	c, err := l.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return
	}
	_, _ = io.WriteString(c, line)
}

func TestProcessAlive(t *testing.T) {
	if !processAlive(os.Getpid()) {
		t.Error("own process reported dead")
	}
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Not yet reaped: a zombie, which must count as dead.
	deadline := time.Now().Add(5 * time.Second)
	for processAlive(cmd.Process.Pid) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if processAlive(cmd.Process.Pid) {
		t.Error("exited, unreaped child reported alive")
	}
	cmd.Wait()
	if processAlive(cmd.Process.Pid) {
		t.Error("reaped child reported alive")
	}
}
