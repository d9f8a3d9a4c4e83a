//go:build linux && kernel

package netfilter

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
)

// TestKernelStopNew: once the rules are gone, new connections reach the app, and the ones the
// redirect took still reach the agent until Close, with the owned table's NAT and with tproxy.
func TestKernelStopNew(t *testing.T) {
	for _, unowned := range []bool{false, true} {
		t.Run(map[bool]string{false: "owned", true: "unowned"}[unowned], func(t *testing.T) {
			n := newStealNet(t)
			opts := Options{}
			if unowned {
				opts = n.unowned()
			}
			o := openIn(t, n.pod, "stopnew", kernelRedirect, opts)
			taken := map[string]net.Conn{}
			for name, a := range map[string]struct {
				from *testnet.NS
				to   netip.AddrPort
			}{
				"IPv4 client": {n.client, ap(n.podV4, appPort)},
				"IPv6 client": {n.client, ap(n.podV6, appPort)},
				"in the pod":  {n.pod, ap(lo4, appPort)},
			} {
				c, err := dial(t, a.from, a.to, 0, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if got, err := exchangeLine(c); err != nil || !strings.HasPrefix(got, "agent") {
					t.Fatalf("%s before StopNew: %q, %v; want the agent", name, got, err)
				}
				taken[name] = c
			}
			if err := o.StopNew(); err != nil {
				t.Fatalf("StopNew: %v", err)
			}
			if got := sessionTables(t, n.pod); len(got) != 1 {
				t.Errorf("tables after StopNew: %v, want the session's", got)
			}
			for name, c := range taken {
				if got, err := exchangeLine(c); err != nil || !strings.HasPrefix(got, "agent") {
					t.Errorf("%s taken before StopNew: %q, %v; want the agent still", name, got, err)
				}
			}
			for _, a := range []netip.AddrPort{ap(n.podV4, appPort), ap(n.podV6, appPort)} {
				if got := ask(t, n.client, a, 0); got != "app" {
					t.Errorf("new connection to %s after StopNew: %q, want the app", a, got)
				}
			}
			if got := ask(t, n.pod, ap(lo4, appPort), 0); got != "app" {
				t.Errorf("new connection in the pod after StopNew: %q, want the app", got)
			}
			if err := o.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestKernelFlushIdle: Flush resets only the idle connections unless told to reset busy ones, and
// counts each kind per port.
func TestKernelFlushIdle(t *testing.T) {
	n := newStealNet(t)
	// A port whose app reads nothing: a request sent there stays in its receive queue, busy.
	const deafPort = 9099
	deaf := n.pod.Listen(t, "tcp", fmt.Sprintf(":%d", deafPort))
	go func() {
		for {
			c, err := deaf.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	idle, err := dial(t, n.client, ap(n.podV4, appPort), 0, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := exchangeLine(idle); err != nil || got != "app" {
		t.Fatalf("idle-to-be connection: %q, %v", got, err)
	}
	busy, err := dial(t, n.client, ap(n.podV4, deafPort), 0, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(busy, "unread request\n"); err != nil {
		t.Fatal(err)
	}
	ports := []uint16{appPort, deafPort}
	flush := func(withBusy bool) map[uint16]FlushCounts {
		t.Helper()
		var counts map[uint16]FlushCounts
		if err := n.pod.Do(func() error {
			var err error
			counts, _, err = Flush(ports, testMark, withBusy)
			return err
		}); err != nil {
			t.Fatalf("Flush: %v", err)
		}
		return counts
	}
	// Until IdleAfter has passed the answered connection is busy too; the wait is on what Flush sees.
	var counts map[uint16]FlushCounts
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		counts = flush(false)
		if counts[appPort].Idle > 0 || time.Now().After(deadline) {
			break
		}
		if counts[appPort].Left != 1 {
			t.Fatalf("before IdleAfter: %+v, want the app port's connection left, busy", counts)
		}
	}
	if got, want := counts[appPort], (FlushCounts{Idle: 1}); got != want {
		t.Errorf("port %d: %+v, want %+v", appPort, got, want)
	}
	if got, want := counts[deafPort], (FlushCounts{Left: 1}); got != want {
		t.Errorf("port %d (unread request): %+v, want %+v", deafPort, got, want)
	}
	if got, err := exchangeLine(idle); err == nil {
		t.Errorf("idle connection after Flush answered %q, want a reset", got)
	}
	if got, want := flush(true)[deafPort], (FlushCounts{Busy: 1}); got != want {
		t.Errorf("port %d with busy: %+v, want %+v", deafPort, got, want)
	}
	_ = busy.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := busy.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("busy connection after Flush with busy: %v, want a reset", err)
	}
}
