//go:build linux && kernel

// Package testnet gives kernel tests throwaway network namespaces, so they can create links,
// addresses, nftables tables and packet sockets without touching the host's network.
//
// The package builds only with the kernel tag, and so do the tests that use it: a kernel test in
// an untagged file does not compile, and `go test -tags kernel` (hack/test-kernel.sh) is what
// selects them. They call RequireRoot or New first, which fail (never skip) the test when the
// process cannot do what it asks. Namespaces are created with `ip netns add` (iproute2),
// everything else through netlink.
package testnet

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	// Prefix starts the name of every namespace this package creates. The name goes on with the
	// creating process's PID, which is what lets a later run tell a crashed run's leftovers from a
	// namespace that a test binary running in parallel (go test runs packages concurrently) still
	// uses.
	Prefix = "tltest-"

	// netnsDir is where named namespaces are bind-mounted, the same place `ip netns` uses.
	netnsDir = "/run/netns"
)

// RequireRoot fails the test unless the process runs as root. A kernel test that was asked for
// (the kernel tag) and cannot run is a failure, so that a run without root never passes as green.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("kernel test: needs root, running as uid %d", os.Geteuid())
	}
}

// NS is a named network namespace that exists for the duration of one test.
type NS struct {
	// Name is the namespace's name as `ip netns` shows it.
	Name string

	handle netns.NsHandle
	nl     *netlink.Handle

	mu      sync.Mutex
	nextIfc int
}

// New creates a fresh named network namespace with lo up, and removes it when the test ends,
// whether or not it passed. It first sweeps namespaces that crashed earlier runs left behind.
// It fails the test unless RequireRoot allows it.
func New(t testing.TB) *NS {
	t.Helper()
	RequireRoot(t)
	sweep(t)

	name, err := uniqueName()
	if err != nil {
		t.Fatalf("testnet: %v", err)
	}
	handle, err := newNamed(name)
	if err != nil {
		t.Fatalf("testnet: create netns %q: %v", name, err)
	}
	ns := &NS{Name: name, handle: handle}
	t.Cleanup(func() {
		if ns.nl != nil {
			ns.nl.Close()
		}
		ns.handle.Close()
		if err := deleteNamed(name); err != nil {
			t.Errorf("testnet: delete netns %q: %v", name, err)
		}
	})

	ns.nl, err = netlink.NewHandleAt(handle)
	if err != nil {
		t.Fatalf("testnet: netlink handle in netns %q: %v", name, err)
	}
	lo, err := ns.nl.LinkByName("lo")
	if err != nil {
		t.Fatalf("testnet: find lo in netns %q: %v", name, err)
	}
	if err := ns.nl.LinkSetUp(lo); err != nil {
		t.Fatalf("testnet: set lo up in netns %q: %v", name, err)
	}
	return ns
}

// Handle is the namespace's file descriptor, for APIs that take one (nftables.WithNetNSFd,
// netlink.NewHandleAt). It stays valid until the test ends; do not close it.
func (n *NS) Handle() netns.NsHandle { return n.handle }

// Netlink is a netlink handle that works inside the namespace. Do not close it.
func (n *NS) Netlink() *netlink.Handle { return n.nl }

// Do runs f on the calling goroutine's OS thread while that thread is switched into the
// namespace, then switches it back. Sockets that f creates stay in the namespace for their whole
// life, so a listener made inside Do can be served from any goroutine afterwards. Goroutines that
// f starts run on other threads and therefore NOT in the namespace.
func (n *NS) Do(f func() error) error {
	// Namespaces belong to threads, not goroutines: without the lock the scheduler could move
	// the goroutine, or run another goroutine on the switched thread.
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(n.handle); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %q: %w", n.Name, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// Keep the thread locked: the runtime ends a locked thread when its goroutine exits,
			// so no other goroutine can ever run in the wrong namespace.
			return
		}
		runtime.UnlockOSThread()
	}()
	return f()
}

// Listen is net.Listen inside the namespace. The listener is closed when the test ends.
func (n *NS) Listen(t testing.TB, network, address string) net.Listener {
	t.Helper()
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, address)
		return err
	})
	if err != nil {
		t.Fatalf("testnet: listen on %s %q in netns %q: %v", network, address, n.Name, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// DialContext dials from inside the namespace; it fits http.Transport.DialContext.
func (n *NS) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// newIfcName returns an interface name that is unused in this namespace.
func (n *NS) newIfcName() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	name := fmt.Sprintf("veth%d", n.nextIfc)
	n.nextIfc++
	return name
}

// uniqueName returns tltest-<pid>-<random>.
func uniqueName() (string, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random netns name: %w", err)
	}
	return Prefix + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b[:]), nil
}

// newNamed creates a named namespace with `ip netns add` and opens it.
//
// iproute2 first turns /run/netns into a shared bind mount of itself. A namespace mounted
// before that happens (vishvananda/netns.NewNamed does not do it) ends up hidden under the
// bind mount as soon as any later `ip netns add` on the host creates it, and can then be
// neither listed nor deleted. Going through ip keeps our mounts where ip and everybody else
// expect them.
func newNamed(name string) (netns.NsHandle, error) {
	out, err := exec.Command("ip", "netns", "add", name).CombinedOutput()
	if err != nil {
		return netns.None(), fmt.Errorf("ip netns add %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		_ = deleteNamed(name)
		return netns.None(), fmt.Errorf("open netns %q: %w", name, err)
	}
	return h, nil
}

// deleteNamed removes a named namespace's mount and file. Unlike netns.DeleteNamed it also
// removes a file whose mount is already gone, which a run killed halfway through leaves.
func deleteNamed(name string) error {
	p := filepath.Join(netnsDir, name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %q: %w", p, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// sweep deletes namespaces whose creating process is gone. Earlier runs that crashed or were
// killed before their cleanups ran leave them behind.
func sweep(t testing.TB) {
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return // no named namespaces at all yet
	}
	for _, e := range entries {
		pid, ok := ownerPID(e.Name())
		if !ok || processAlive(pid) {
			continue
		}
		if err := deleteNamed(e.Name()); err != nil {
			t.Logf("testnet: remove leftover netns %q: %v", filepath.Join(netnsDir, e.Name()), err)
			continue
		}
		t.Logf("testnet: removed leftover netns %q of dead process %d", e.Name(), pid)
	}
}

// ownerPID extracts the PID from a name made by uniqueName.
func ownerPID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok {
		return 0, false
	}
	pidText, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(pidText)
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

func processAlive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A killed test binary stays a zombie until its parent reaps it, and its namespaces are
	// leftovers already. The state follows the parenthesised command name, which may itself
	// contain parentheses.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return true
	}
	state := stat[i+2]
	return state != 'Z' && state != 'X'
}
