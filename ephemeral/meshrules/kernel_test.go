//go:build linux && kernel

package meshrules

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/netfilter"
	"github.com/trafficlab/kubectl-trafficlab/internal/meshtest"
	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
)

// pod is a test pod's namespace with its address, and a peer namespace beside it.
func pod(t *testing.T, dualStack bool) (*testnet.NS, *testnet.NS) {
	t.Helper()
	ns, peer := testnet.New(t), testnet.New(t)
	addrs, peerAddrs := []netip.Prefix{netip.PrefixFrom(podAddr, 24)}, []netip.Prefix{netip.MustParsePrefix("10.44.0.1/24")}
	if dualStack {
		addrs = append(addrs, netip.PrefixFrom(podAddr6, 64))
		peerAddrs = append(peerAddrs, netip.MustParsePrefix("fd44::1/64"))
	}
	testnet.Connect(t, ns, addrs, peer, peerAddrs)
	return ns, peer
}

// readRecorded reads ns's rules twice: with Read, and through a recorder that keeps what the
// kernel said (written to testdata/<golden> with -update). Both must agree.
func readRecorded(t *testing.T, ns *testnet.NS, golden string) *Rules {
	t.Helper()
	var read *Rules
	var blobs []legacyBlob
	var sock *netlink.Conn
	err := ns.Do(func() error {
		var err error
		if read, err = Read(); err != nil {
			return err
		}
		if _, blobs, err = readLegacy(); err != nil {
			return err
		}
		sock, err = netlink.Dial(unix.NETLINK_NETFILTER, nil)
		return err
	})
	if err != nil {
		t.Fatalf("read the rules in %s: %v", ns.Name, err)
	}
	defer sock.Close()
	rec := &recorder{next: forward(sock)}
	var idx ruleIndex
	c, err := nftables.New(nftables.WithTestDial(idx.wrap(rec.dial)))
	if err != nil {
		t.Fatal(err)
	}
	nft, err := readNft(c, &idx)
	if err != nil {
		t.Fatalf("read nftables through the recorder: %v", err)
	}
	var recorded Rules
	for _, b := range blobs {
		tb, err := parseLegacyBlob(b.Family, b.Table, b.Blob)
		if err != nil {
			t.Fatal(err)
		}
		recorded.Tables = append(recorded.Tables, tb)
	}
	recorded.Tables = append(recorded.Tables, nft...)
	if diff := cmp.Diff(read, &recorded, cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})); diff != "" {
		t.Fatalf("Read() and the recorded reading differ (-Read +recorded):\n%s", diff)
	}
	if *update {
		dir := goldenDir(golden)
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, b := range blobs {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("legacy-%s-%s.bin", b.Family, b.Table)), b.Blob, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "nft.bin"), rec.out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return read
}

// TestKernelRuleSets applies every sock mesh rule set (internal/meshtest) in a pod namespace,
// reads and classifies it, and checks the evaluator against the kernel: where connections to
// the pod, from the pod, and the agent's pass-back really land.
func TestKernelRuleSets(t *testing.T) {
	for _, rs := range meshtest.All {
		t.Run(string(rs), func(t *testing.T) {
			ns, peer := pod(t, rs.DualStack())
			meshtest.Apply(t, ns.Name, rs)
			rules := readRecorded(t, ns, string(rs))
			checkRuleSet(t, rs, rules)
			if rs.TPROXY() {
				return
			}
			in, err := rules.Inbound()
			if err != nil {
				t.Fatal(err)
			}
			// Listeners on every port a connection may land on; each answers with its port.
			skipped := uint16(notCaptured(rs)[1])
			for _, p := range []uint16{in.InboundPort, in.OutboundPort, 8080, skipped} {
				serve(t, ns.Listen(t, "tcp", fmt.Sprintf(":%d", p)))
			}
			serve(t, peer.Listen(t, "tcp", ":80"))
			app := netip.AddrPortFrom(podAddr, 8080)
			cases := []struct {
				name  string
				from  *testnet.NS
				src   netip.Addr
				mark  uint32
				dst   netip.AddrPort
				conn  Conn
				lands uint16
			}{
				{name: "inbound to the app's port", from: peer, dst: app, lands: in.InboundPort,
					conn: Conn{Hook: HookPrerouting, Src: netip.AddrPortFrom(netip.MustParseAddr("10.44.0.1"), 40000), Dst: app, InIface: "veth"}},
				{name: "inbound to a port the mesh skips", from: peer, dst: netip.AddrPortFrom(podAddr, skipped), lands: skipped,
					conn: Conn{Hook: HookPrerouting, Src: netip.AddrPortFrom(netip.MustParseAddr("10.44.0.1"), 40000), Dst: netip.AddrPortFrom(podAddr, skipped), InIface: "veth"}},
				{name: "outbound", from: ns, dst: netip.MustParseAddrPort("10.44.0.1:80"), lands: in.OutboundPort,
					conn: Conn{Hook: HookOutput, Src: netip.AddrPortFrom(podAddr, 40000), Dst: netip.MustParseAddrPort("10.44.0.1:80"), OutIface: "veth"}},
				{name: "the agent's pass-back", from: ns, src: passSrc(in), mark: netfilter.PassMark, dst: app, lands: 8080,
					conn: Conn{Hook: HookOutput, Src: netip.AddrPortFrom(passSrc(in), 40000), Dst: app, OutIface: "lo", Mark: netfilter.PassMark}},
			}
			for _, c := range cases {
				o, err := rules.Evaluate(c.conn)
				if err != nil {
					t.Fatalf("%s: %v", c.name, err)
				}
				want := c.conn.Dst.Port()
				if o.Fate == Captured {
					want = o.Port
				}
				if want != c.lands {
					t.Errorf("%s: evaluated %v, want it to land on port %d", c.name, o, c.lands)
				}
				if got := landsOn(t, c.from, c.src, c.mark, c.dst); got != c.lands {
					t.Errorf("%s: the kernel delivered it to port %d, want %d (evaluated %v)", c.name, got, c.lands, o)
				}
			}
		})
	}
}

func passSrc(in Inbound) netip.Addr {
	if in.PassSource.IsValid() {
		return in.PassSource
	}
	return podAddr
}

// serve answers every connection on l with l's port.
func serve(t *testing.T, l net.Listener) {
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, port)
			c.Close()
		}
	}()
}

// landsOn dials dst from ns (from src when valid, with mark) and returns the port of the
// listener that answered.
func landsOn(t *testing.T, ns *testnet.NS, src netip.Addr, mark uint32, dst netip.AddrPort) uint16 {
	t.Helper()
	var conn net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				if mark != 0 {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
				}
			})
			return errors.Join(err, serr)
		}}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
		var err error
		conn, err = d.DialContext(context.Background(), "tcp", dst.String())
		return err
	})
	if err != nil {
		t.Fatalf("dial %s from %s: %v", dst, src, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read from %s: %v", dst, err)
	}
	p, err := strconv.Atoi(string(b))
	if err != nil {
		t.Fatalf("answer %q from %s: %v", b, dst, err)
	}
	return uint16(p)
}

// nsRun runs a command in ns, failing the test if it fails.
func nsRun(t *testing.T, ns *testnet.NS, argv ...string) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, argv...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
}

// TestKernelOtherRuleSets: a pod without a mesh, and rule sets the classifier must refuse to
// guess about, named in the error.
func TestKernelOtherRuleSets(t *testing.T) {
	for _, c := range []struct {
		golden string
		rules  [][]string
	}{
		{golden: "none"},
		{golden: "unknown-legacy-statistic", rules: [][]string{{"iptables-legacy", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-m", "statistic", "--mode", "nth", "--every", "2", "--packet", "0", "-j", "REDIRECT", "--to-ports", "15006"}}},
		{golden: "unknown-nftables-numgen", rules: [][]string{{"nft", "add table inet x; add chain inet x pre { type nat hook prerouting priority -100; }; add rule inet x pre meta l4proto tcp numgen inc mod 2 == 0 redirect to :15006"}}},
		{golden: "unknown-mesh", rules: [][]string{{"iptables-nft", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "9999"}}},
	} {
		t.Run(c.golden, func(t *testing.T) {
			ns, _ := pod(t, false)
			for _, argv := range c.rules {
				nsRun(t, ns, argv...)
			}
			rules := readRecorded(t, ns, c.golden)
			checkOther(t, rules, otherRuleSets[c.golden])
		})
	}
}

// TestKernelReadWithoutNetAdmin: an agent without CAP_NET_ADMIN (NET_RAW only) cannot read the
// rules, and Read's error says so in a way the caller can test (os.ErrPermission), so that it
// decides from the pod's spec instead.
func TestKernelReadWithoutNetAdmin(t *testing.T) {
	for _, rs := range []meshtest.RuleSet{meshtest.IstioLegacy, meshtest.IstioNftables} {
		t.Run(string(rs), func(t *testing.T) {
			ns, _ := pod(t, false)
			meshtest.Apply(t, ns.Name, rs)
			_, err := readWithEffective(t, ns, func(eff uint32) uint32 { return eff &^ (1 << unix.CAP_NET_ADMIN) })
			switch {
			case err == nil:
				t.Fatal("Read() without CAP_NET_ADMIN succeeded")
			case !errors.Is(err, os.ErrPermission):
				t.Fatalf("Read() without CAP_NET_ADMIN = %v, not a permission error", err)
			}
		})
	}
}

// TestKernelReadWithNetAdminOnly: the agent of a steal has CAP_NET_ADMIN and no other capability (no
// CAP_NET_RAW, which iptables' raw socket would need): Read must work with that alone, in every form.
func TestKernelReadWithNetAdminOnly(t *testing.T) {
	for _, rs := range []meshtest.RuleSet{meshtest.IstioLegacy, meshtest.IstioDualStackLegacy, meshtest.IstioNft, meshtest.IstioNftables, meshtest.LinkerdLegacy} {
		t.Run(string(rs), func(t *testing.T) {
			ns, _ := pod(t, rs.DualStack())
			meshtest.Apply(t, ns.Name, rs)
			rules, err := readWithEffective(t, ns, func(uint32) uint32 { return 1 << unix.CAP_NET_ADMIN })
			if err != nil {
				t.Fatalf("Read() with CAP_NET_ADMIN only: %v", err)
			}
			in, err := rules.Inbound()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(wantInbound(rs), viewOf(in), cmpopts.EquateComparable(netip.Addr{})); diff != "" {
				t.Errorf("Inbound with CAP_NET_ADMIN only (-want +got):\n%s", diff)
			}
		})
	}
}

// readWithEffective runs Read in ns on a thread whose effective capabilities (the low 32, where the
// network ones are) are effective(those it has).
func readWithEffective(t *testing.T, ns *testnet.NS, effective func(uint32) uint32) (*Rules, error) {
	t.Helper()
	type result struct {
		rules *Rules
		err   error
	}
	done := make(chan result, 1)
	go func() {
		// This thread changes its capabilities and is never unlocked: the runtime ends it with the
		// goroutine, so no other goroutine runs with them or in the namespace.
		runtime.LockOSThread()
		if err := netns.Set(ns.Handle()); err != nil {
			done <- result{err: fmt.Errorf("enter the namespace: %w", err)}
			return
		}
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			done <- result{err: fmt.Errorf("capget: %w", err)}
			return
		}
		data[0].Effective, data[1].Effective = effective(data[0].Effective), 0
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			done <- result{err: fmt.Errorf("capset: %w", err)}
			return
		}
		rules, err := Read()
		done <- result{rules, err}
	}()
	r := <-done
	return r.rules, r.err
}
