//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const guardTable = "tlcluster_guard"

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

var counterRE = regexp.MustCompile(`packets (\d+) bytes`)

func leakedCounter(t *testing.T) int {
	t.Helper()
	out := run(t, "nft", "list", "counter", "inet", guardTable, "leaked")
	m := counterRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no packet count in %q", out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// listenIn opens a UDP socket inside the named netns. The socket keeps its netns; the OS
// thread that entered it is never handed back to the Go scheduler (it exits with the goroutine).
func listenIn(nsName, addr string) (net.PacketConn, error) {
	type res struct {
		pc  net.PacketConn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // deliberately never unlocked
		h, err := netns.GetFromName(nsName)
		if err != nil {
			ch <- res{err: fmt.Errorf("open netns %s: %w", nsName, err)}
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			ch <- res{err: fmt.Errorf("enter netns %s: %w", nsName, err)}
			return
		}
		pc, err := net.ListenPacket("udp4", addr)
		ch <- res{pc, err}
	}()
	r := <-ch
	return r.pc, r.err
}

// TestGuardBlocksClusterRangesOnForeignInterfaces proves the guard nft table drops packets
// for cluster ranges that would leave through an interface that is not the cluster's.
// It never sends toward a real network: the only "foreign" interface is a veth into a
// network namespace made here, the sending socket is bound to that veth, and routes are
// checked before anything is sent.
func TestGuardBlocksClusterRangesOnForeignInterfaces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (netns, veth, nft)")
	}
	if out, err := exec.Command("nft", "list", "table", "inet", guardTable).CombinedOutput(); err != nil {
		t.Fatalf("guard table inet %s missing, refusing to send anything: %v: %s", guardTable, err, out)
	}
	const (
		clusterIP = "10.250.0.99"   // in the node range 10.250.0.0/24
		outsideIP = "198.51.100.10" // TEST-NET-2, not a cluster range
		port      = 9999
	)
	sfx := randSuffix()
	nsName, hostIf, nsIf := "tl-e2e-guard-"+sfx, "tlg"+sfx+"h", "tlg"+sfx+"n"

	// Cleanup is registered before each creation so a failure half-way leaves nothing.
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", hostIf).Run() // also removes its routes and neighbours
		exec.Command("ip", "netns", "del", nsName).Run()
		if out, err := exec.Command("ip", "link", "show", hostIf).CombinedOutput(); err == nil {
			t.Errorf("veth %s still present: %s", hostIf, out)
		}
		if _, err := os.Stat("/run/netns/" + nsName); err == nil {
			t.Errorf("netns %s still present", nsName)
		}
	})
	run(t, "ip", "netns", "add", nsName)
	run(t, "ip", "link", "add", hostIf, "type", "veth", "peer", "name", nsIf, "netns", nsName)
	nsExec := func(args ...string) string {
		return run(t, append([]string{"ip", "netns", "exec", nsName}, args...)...)
	}
	nsExec("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
	nsExec("ip", "link", "set", "lo", "up")
	nsExec("ip", "addr", "add", clusterIP+"/32", "dev", nsIf)
	nsExec("ip", "addr", "add", outsideIP+"/32", "dev", nsIf)
	nsExec("ip", "link", "set", nsIf, "up")
	nsExec("ip", "route", "add", "default", "dev", nsIf)
	nsMAC := strings.TrimSpace(nsExec("cat", "/sys/class/net/"+nsIf+"/address"))

	run(t, "sysctl", "-qw", "net.ipv6.conf."+hostIf+".disable_ipv6=1") // no RS/DAD chatter
	run(t, "ip", "link", "set", hostIf, "up")
	for _, ip := range []string{clusterIP, outsideIP} {
		run(t, "ip", "route", "add", ip+"/32", "dev", hostIf)
		// static neighbours: not even ARP is needed
		run(t, "ip", "neigh", "replace", ip, "lladdr", nsMAC, "dev", hostIf, "nud", "permanent")
		if out := run(t, "ip", "-o", "route", "get", ip); !strings.Contains(out, "dev "+hostIf+" ") {
			t.Fatalf("route to %s does not use %s, refusing to send: %s", ip, hostIf, out)
		}
	}

	pc, err := listenIn(nsName, fmt.Sprintf("0.0.0.0:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()

	// SO_BINDTODEVICE: whatever the routing table says, these datagrams can only leave via hostIf.
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, hostIf) }); err != nil {
			return err
		}
		return serr
	}}
	snd, err := lc.ListenPacket(context.Background(), "udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatalf("sender socket: %v", err)
	}
	defer snd.Close()

	before := leakedCounter(t)
	clusterMsg, outsideMsg := "cluster-"+sfx, "outside-"+sfx
	// The cluster datagram goes first: on the same veth it would arrive before the outside one.
	_, err = snd.WriteTo([]byte(clusterMsg), &net.UDPAddr{IP: net.ParseIP(clusterIP), Port: port})
	switch {
	case errors.Is(err, unix.EPERM):
		t.Logf("send to %s: %v (dropped by netfilter, as expected)", clusterIP, err)
	case err != nil:
		t.Fatalf("send to %s: %v", clusterIP, err)
	default:
		t.Logf("send to %s: accepted by the socket layer", clusterIP)
	}
	if _, err := snd.WriteTo([]byte(outsideMsg), &net.UDPAddr{IP: net.ParseIP(outsideIP), Port: port}); err != nil {
		t.Fatalf("send to %s: %v", outsideIP, err)
	}

	buf := make([]byte, 1500)
	if err := pc.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("datagram to %s never arrived in netns %s: %v", outsideIP, nsName, err)
		}
		msg := string(buf[:n])
		t.Logf("netns received %q from %s", msg, from)
		if msg == clusterMsg {
			t.Fatalf("datagram to cluster address %s LEFT through foreign interface %s", clusterIP, hostIf)
		}
		if msg == outsideMsg {
			break
		}
	}
	after := leakedCounter(t)
	if after <= before {
		t.Errorf("guard counter 'leaked' did not increase (%d -> %d)", before, after)
	}
	t.Logf("guard dropped %d packet(s); non-cluster datagram arrived via %s", after-before, hostIf)
}
