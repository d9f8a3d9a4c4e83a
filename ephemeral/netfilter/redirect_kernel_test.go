//go:build linux && kernel

package netfilter

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
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
)

const (
	appPort    = 8080
	appPort2   = 8443
	listenPort = 15001
	testMark   = PassMark
)

var kernelRedirect = Redirect{Ports: []uint16{appPort, appPort2}, ListenPort: listenPort, Mark: testMark}

// stealNet is a pod netns with the app on appPort and appPort2 and the agent's listener on
// listenPort, all dual-stack wildcard listeners, joined over veth to a client netns.
type stealNet struct {
	pod, client  *testnet.NS
	podV4, podV6 netip.Addr
}

func newStealNet(t *testing.T) *stealNet {
	t.Helper()
	n := &stealNet{
		pod:    testnet.New(t),
		client: testnet.New(t),
		podV4:  netip.MustParseAddr("10.77.0.1"), podV6: netip.MustParseAddr("fd77::1"),
	}
	testnet.Connect(t,
		n.pod, []netip.Prefix{netip.MustParsePrefix("10.77.0.1/24"), netip.MustParsePrefix("fd77::1/64")},
		n.client, []netip.Prefix{netip.MustParsePrefix("10.77.0.2/24"), netip.MustParsePrefix("fd77::2/64")})
	for _, p := range []int{appPort, appPort2} {
		serveLines(t, n.pod.Listen(t, "tcp", fmt.Sprintf(":%d", p)), func(net.Conn) string { return "app" })
	}
	serveLines(t, n.pod.Listen(t, "tcp", fmt.Sprintf(":%d", listenPort)), func(c net.Conn) string {
		orig, err := OriginalDst(c.(*net.TCPConn))
		if err != nil {
			return "agent without original destination: " + err.Error()
		}
		return "agent " + orig.String()
	})
	return n
}

// serveLines answers every line on every connection with reply(conn), until the test ends.
func serveLines(t *testing.T, l net.Listener, reply func(net.Conn) string) {
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
					if _, err := io.WriteString(c, reply(c)+"\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// dial connects from ns, through PassDialer if mark is PassMark (the only mark the agent sets),
// else unmarked. The connection is closed when the test ends.
func dial(t *testing.T, ns *testnet.NS, addr netip.AddrPort, mark uint32, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	d := &net.Dialer{Timeout: timeout}
	switch mark {
	case 0:
	case PassMark:
		d = PassDialer(timeout)
	default:
		t.Fatalf("dial with mark %#x: the agent dials with PassMark or none", mark)
	}
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = d.Dial("tcp", addr.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c, nil
}

// exchange sends a line on c and returns the answer.
func exchangeLine(c net.Conn) (string, error) {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}

// ask dials addr from ns and returns the first answer.
func ask(t *testing.T, ns *testnet.NS, addr netip.AddrPort, mark uint32) string {
	t.Helper()
	c, err := dial(t, ns, addr, mark, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s from netns %q (mark %#x): %v", addr, ns.Name, mark, err)
	}
	defer c.Close()
	reply, err := exchangeLine(c)
	if err != nil {
		t.Fatalf("exchange with %s from netns %q (mark %#x): %v", addr, ns.Name, mark, err)
	}
	return reply
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

var (
	lo4 = netip.MustParseAddr("127.0.0.1")
	lo6 = netip.MustParseAddr("::1")
)

// sessionTables returns the names of the trafficlab tables in ns, with " owner" after owned ones.
func sessionTables(t *testing.T, ns *testnet.NS) []string {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns.Handle())))
	if err != nil {
		t.Fatalf("nftables conn: %v", err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	var out []string
	for _, tb := range tables {
		if strings.HasPrefix(tb.Name, TablePrefix) {
			name := tb.Name
			if ownedTable(tb) {
				name += " owner"
			}
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// openIn opens the redirect in ns, closing it when the test ends.
func openIn(t *testing.T, ns *testnet.NS, id string, r Redirect) *Owned {
	t.Helper()
	var o *Owned
	if err := ns.Do(func() error {
		var err error
		o, err = Open(id, r)
		return err
	}); err != nil {
		t.Fatalf("Open(%q): %v", id, err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

func TestKernelRedirect(t *testing.T) {
	n := newStealNet(t)

	// Without the table the app answers on every path.
	for _, a := range []netip.AddrPort{ap(n.podV4, appPort), ap(n.podV6, appPort)} {
		if got := ask(t, n.client, a, 0); got != "app" {
			t.Fatalf("before Open, %s answered %q", a, got)
		}
	}

	o := openIn(t, n.pod, "steal", kernelRedirect)
	if !o.KernelOwned() {
		t.Errorf("KernelOwned() = false on kernel %s", kernelRelease(t))
	}
	if got := sessionTables(t, n.pod); !slices.Equal(got, []string{"trafficlab_steal owner"}) {
		t.Errorf("tables = %v, want the owned session table", got)
	}

	t.Run("from outside the pod", func(t *testing.T) {
		for _, a := range []netip.AddrPort{
			ap(n.podV4, appPort), ap(n.podV6, appPort), ap(n.podV4, appPort2), ap(n.podV6, appPort2),
		} {
			if got, want := ask(t, n.client, a, 0), "agent "+a.String(); got != want {
				t.Errorf("%s answered %q, want %q", a, got, want)
			}
		}
	})
	t.Run("from inside the pod", func(t *testing.T) {
		for _, a := range []netip.AddrPort{
			ap(lo4, appPort), ap(lo6, appPort), ap(n.podV4, appPort), ap(n.podV6, appPort2),
		} {
			if got, want := ask(t, n.pod, a, 0), "agent "+a.String(); got != want {
				t.Errorf("%s answered %q, want %q", a, got, want)
			}
		}
	})
	t.Run("marked sockets reach the app", func(t *testing.T) {
		for _, a := range []netip.AddrPort{
			ap(lo4, appPort), ap(lo6, appPort), ap(n.podV4, appPort), ap(n.podV6, appPort2),
		} {
			if got := ask(t, n.pod, a, testMark); got != "app" {
				t.Errorf("%s with mark %#x answered %q, want the app", a, testMark, got)
			}
		}
	})
	t.Run("listener not reachable directly", func(t *testing.T) {
		for _, c := range []struct {
			ns   *testnet.NS
			addr netip.AddrPort
		}{
			{n.client, ap(n.podV4, listenPort)},
			{n.client, ap(n.podV6, listenPort)},
			{n.pod, ap(lo4, listenPort)},
		} {
			conn, err := dial(t, c.ns, c.addr, 0, time.Second)
			var ne net.Error
			if err == nil {
				conn.Close()
			}
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Errorf("dial %s from netns %q: %v, want a timeout (SYN dropped)", c.addr, c.ns.Name, err)
			}
		}
		// While redirected connections to the same listener keep working.
		if got, want := ask(t, n.client, ap(n.podV4, appPort), 0), "agent "+ap(n.podV4, appPort).String(); got != want {
			t.Errorf("redirected: %q, want %q", got, want)
		}
	})
	t.Run("other sockets cannot change or sweep the owned table", func(t *testing.T) {
		c, err := nftables.New(nftables.WithNetNSFd(int(n.pod.Handle())))
		if err != nil {
			t.Fatal(err)
		}
		if err := Delete(c, "steal"); !errors.Is(err, unix.EPERM) {
			t.Errorf("Delete from another socket = %v, want EPERM", err)
		}
		deleted, err := Sweep(c, func(string) bool { return false })
		if err != nil || len(deleted) != 0 {
			t.Errorf("Sweep = %v, %v; want the owned table left alone", deleted, err)
		}
	})
	t.Run("a second session cannot take the name", func(t *testing.T) {
		err := n.pod.Do(func() error {
			o2, err := Open("steal", Redirect{Ports: []uint16{9}, ListenPort: 10, Mark: 1})
			if err == nil {
				o2.Close()
			}
			return err
		})
		// EPERM: the kernel will not even show an owned table to another socket for changes.
		if !errors.Is(err, unix.EPERM) {
			t.Errorf("second Open = %v, want EPERM", err)
		}
	})

	t.Run("close", func(t *testing.T) {
		for range 2 {
			if err := o.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
		}
		if got := sessionTables(t, n.pod); len(got) != 0 {
			t.Errorf("tables after Close: %v", got)
		}
		for _, a := range []netip.AddrPort{ap(n.podV4, appPort), ap(n.podV6, appPort)} {
			if got := ask(t, n.client, a, 0); got != "app" {
				t.Errorf("after Close, %s answered %q, want the app", a, got)
			}
		}
		if got := ask(t, n.pod, ap(lo4, appPort), 0); got != "app" {
			t.Errorf("after Close, 127.0.0.1 answered %q, want the app", got)
		}
	})
}

func kernelRelease(t *testing.T) string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(u.Release[:])
}

// helperEnv names the netns in which the test binary, run again by
// TestKernelOwnedTableDiesWithProcess, opens a table as the session process it then SIGKILLs.
const helperEnv = "TRAFFICLAB_NETFILTER_TEST_HELPER_NETNS"

// TestMain makes the test binary that helper when helperEnv is set; the helper is no test of its
// own, so a plain run never reports it.
func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		os.Exit(helperOpen(name))
	}
	os.Exit(m.Run())
}

// helperOpen opens a table in the named netns, prints "ready" and waits until it is killed; should
// the parent die first, its end of the stdin pipe closes and so does the helper.
func helperOpen(name string) int {
	// Stays locked: the thread must not return to the pool in the other netns.
	runtime.LockOSThread()
	h, err := netns.GetFromName(name)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	if err := netns.Set(h); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	if _, err := Open("killed", kernelRedirect); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

func TestKernelOwnedTableDiesWithProcess(t *testing.T) {
	n := newStealNet(t)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"="+n.pod.Name)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper: %v", err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})

	lines := make(chan string)
	go func() {
		defer close(lines)
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			lines <- s.Text()
		}
	}()
	timeout := time.After(30 * time.Second)
wait:
	for {
		select {
		case line, ok := <-lines:
			switch {
			case !ok:
				t.Fatal("helper exited before it was ready")
			case line == "ready":
				break wait
			case strings.HasPrefix(line, "error:"):
				t.Fatalf("helper: %s", line)
			}
		case <-timeout:
			t.Fatal("helper not ready after 30s")
		}
	}

	if got := sessionTables(t, n.pod); !slices.Equal(got, []string{"trafficlab_killed owner"}) {
		t.Fatalf("tables with the helper running: %v", got)
	}
	a := ap(n.podV4, appPort)
	if got, want := ask(t, n.client, a, 0), "agent "+a.String(); got != want {
		t.Fatalf("with the helper running, %s answered %q, want %q", a, got, want)
	}

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for len(sessionTables(t, n.pod)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("tables 10s after SIGKILL: %v", sessionTables(t, n.pod))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := ask(t, n.client, a, 0); got != "app" {
		t.Errorf("after SIGKILL, %s answered %q, want the app", a, got)
	}
}

func TestKernelFlush(t *testing.T) {
	n := newStealNet(t)
	keep := func(ns *testnet.NS, a netip.AddrPort, mark uint32) net.Conn {
		t.Helper()
		c, err := dial(t, ns, a, mark, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %s: %v", a, err)
		}
		if got, err := exchangeLine(c); err != nil || got != "app" {
			t.Fatalf("before Open, %s answered %q, %v", a, got, err)
		}
		return c
	}
	// Connections open before the steal: two clients outside the pod, one inside, and one of
	// the agent's own pass-through connections (marked).
	old4 := keep(n.client, ap(n.podV4, appPort), 0)
	old6 := keep(n.client, ap(n.podV6, appPort), 0)
	oldLocal := keep(n.pod, ap(lo4, appPort), 0)
	passThrough := keep(n.pod, ap(lo4, appPort), testMark)
	otherPort := keep(n.client, ap(n.podV4, appPort2), 0)

	openIn(t, n.pod, "flush", kernelRedirect)
	// Open connections keep going to the app. Conntrack was off in this netns until the table's
	// NAT chains needed it, so it picks each of them up mid-stream now: the SYN match is what
	// keeps them from being redirected.
	for name, c := range map[string]net.Conn{"IPv4": old4, "IPv6": old6, "in the pod": oldLocal, "pass-through": passThrough} {
		if got, err := exchangeLine(c); err != nil || got != "app" {
			t.Fatalf("after Open, the old %s connection answered %q, %v; want the app", name, got, err)
		}
	}
	stolen, err := dial(t, n.client, ap(n.podV4, appPort), 0, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := exchangeLine(stolen); err != nil || !strings.HasPrefix(got, "agent") {
		t.Fatalf("new connection answered %q, %v; want the agent", got, err)
	}

	var sockets, entries int
	if err := n.pod.Do(func() error {
		var err error
		sockets, entries, err = Flush([]uint16{appPort}, testMark)
		return err
	}); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	t.Logf("Flush destroyed %d sockets (SOCK_DESTROY works on %s) and deleted %d conntrack entries", sockets, kernelRelease(t), entries)
	// The app's side of old4, old6 and oldLocal.
	if sockets != 3 || entries != 3 {
		t.Errorf("Flush = %d sockets, %d entries; want 3, 3", sockets, entries)
	}

	for name, c := range map[string]net.Conn{"IPv4 client": old4, "IPv6 client": old6, "client in the pod": oldLocal} {
		got, err := exchangeLine(c)
		var ne net.Error
		if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			t.Errorf("%s after Flush: %q, %v; want a reset", name, got, err)
		}
	}
	for name, c := range map[string]net.Conn{"pass-through": passThrough, "other port": otherPort} {
		if got, err := exchangeLine(c); err != nil || got != "app" {
			t.Errorf("%s after Flush: %q, %v; want the app", name, got, err)
		}
	}
	if got, err := exchangeLine(stolen); err != nil || !strings.HasPrefix(got, "agent") {
		t.Errorf("stolen connection after Flush: %q, %v; want the agent", got, err)
	}
	if got, want := ask(t, n.client, ap(n.podV4, appPort), 0), "agent "+ap(n.podV4, appPort).String(); got != want {
		t.Errorf("reconnect after Flush: %q, want %q", got, want)
	}
	if got, want := ask(t, n.client, ap(n.podV6, appPort), 0), "agent "+ap(n.podV6, appPort).String(); got != want {
		t.Errorf("reconnect after Flush: %q, want %q", got, want)
	}
}

// TestKernelFallbackTable runs the table a kernel without the owner flag gets: it redirects the
// same, Close deletes it, and Guard deletes it once the session process is gone.
func TestKernelFallbackTable(t *testing.T) {
	n := newStealNet(t)
	openPlain := func(id string) *Owned {
		t.Helper()
		var o *Owned
		if err := n.pod.Do(func() error {
			c, err := dialNetfilter()
			if err != nil {
				return err
			}
			o, err = open(c, id, kernelRedirect, false)
			if err != nil {
				c.Close()
			}
			return err
		}); err != nil {
			t.Fatalf("open %q without owner flag: %v", id, err)
		}
		t.Cleanup(func() { o.Close() })
		if o.KernelOwned() {
			t.Fatalf("KernelOwned() = true")
		}
		return o
	}
	a := ap(n.podV6, appPort)

	o := openPlain("plain")
	if got := sessionTables(t, n.pod); !slices.Equal(got, []string{"trafficlab_plain"}) {
		t.Fatalf("tables: %v", got)
	}
	if got, want := ask(t, n.client, a, 0), "agent "+a.String(); got != want {
		t.Fatalf("%s answered %q, want %q", a, got, want)
	}
	if err := o.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := sessionTables(t, n.pod); len(got) != 0 {
		t.Fatalf("tables after Close: %v", got)
	}

	// The session process stands in as a sleep; the table's socket stays open in this process,
	// as it would in a session that hangs rather than dies.
	openPlain("guarded")
	session := exec.Command("sleep", "60")
	if err := session.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = session.Process.Kill()
		_ = session.Wait()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	guarded := make(chan error, 1)
	go func() {
		guarded <- n.pod.Do(func() error { return Guard(ctx, "guarded", session.Process.Pid) })
	}()
	select {
	case err := <-guarded:
		t.Fatalf("Guard returned %v while the session runs", err)
	case <-time.After(500 * time.Millisecond):
	}
	if got := sessionTables(t, n.pod); !slices.Equal(got, []string{"trafficlab_guarded"}) {
		t.Fatalf("tables while the session runs: %v", got)
	}
	if err := session.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-guarded; err != nil {
		t.Fatalf("Guard: %v", err)
	}
	if got := sessionTables(t, n.pod); len(got) != 0 {
		t.Fatalf("tables after Guard: %v", got)
	}
	if got := ask(t, n.client, a, 0); got != "app" {
		t.Errorf("after Guard, %s answered %q, want the app", a, got)
	}
}

// socketMark reads c's SO_MARK back from the kernel.
func socketMark(t *testing.T, c net.Conn) int {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mark int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		mark, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK)
	}); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatalf("getsockopt SO_MARK: %v", serr)
	}
	return mark
}

// PassDialer's sockets carry PassMark from before their SYN: with the redirect in place, the same
// addresses dialed without it reach the agent's listener, and through it the app.
func TestKernelPassDialer(t *testing.T) {
	n := newStealNet(t)
	openIn(t, n.pod, "pass", kernelRedirect)
	for _, a := range []netip.AddrPort{ap(lo4, appPort), ap(lo6, appPort2), ap(n.podV4, appPort), ap(n.podV6, appPort)} {
		for _, c := range []struct {
			mark uint32
			want string
		}{
			{0, "agent " + a.String()},
			{PassMark, "app"},
		} {
			conn, err := dial(t, n.pod, a, c.mark, 5*time.Second)
			if err != nil {
				t.Fatalf("dial %s (mark %#x): %v", a, c.mark, err)
			}
			if got := socketMark(t, conn); got != int(c.mark) {
				t.Errorf("%s: SO_MARK = %#x, want %#x", a, got, c.mark)
			}
			if got, err := exchangeLine(conn); err != nil || got != c.want {
				t.Errorf("%s (mark %#x) answered %q, %v; want %q", a, c.mark, got, err, c.want)
			}
		}
	}
}
