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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

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
	// agent is the listener on listenPort, for the unowned path to make transparent.
	agent net.Listener
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
	n.agent = n.pod.Listen(t, "tcp", fmt.Sprintf(":%d", listenPort))
	serveLines(t, n.agent, func(c net.Conn) string {
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
		d = PassDialer(timeout, nil)
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
func openIn(t *testing.T, ns *testnet.NS, id string, r Redirect, opts Options) *Owned {
	t.Helper()
	var o *Owned
	if err := ns.Do(func() error {
		var err error
		o, err = Open(id, r, opts)
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

	o := openIn(t, n.pod, "steal", kernelRedirect, Options{})
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
			o2, err := Open("steal", Redirect{Ports: []uint16{9}, ListenPort: 10, Mark: 1}, Options{})
			if err == nil {
				o2.Close()
			}
			return err
		})
		// The live token stops it before the kernel is asked.
		if !errors.Is(err, unix.EADDRINUSE) {
			t.Errorf("second Open = %v, want EADDRINUSE", err)
		}
		// And the kernel would refuse it too: it will not even show an owned table to another
		// socket for changes.
		err = n.pod.Do(func() error {
			c, err := dialNetfilter()
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = open(c, "steal", Redirect{Ports: []uint16{9}, ListenPort: 10, Mark: 1}, Options{}, nil)
			return err
		})
		if !errors.Is(err, unix.EPERM) {
			t.Errorf("second table over a new socket = %v, want EPERM", err)
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

// helperEnv names the netns in which the test binary, run again by startHelper, opens a table
// as a holder process that the test then SIGKILLs; helperModeEnv says which table (helperOwned or
// helperUnowned), or helperUID: listen, as that uid, on the socket passed as fd 3.
const (
	helperEnv     = "TRAFFICLAB_NETFILTER_TEST_HELPER_NETNS"
	helperModeEnv = "TRAFFICLAB_NETFILTER_TEST_HELPER_MODE"

	helperOwned   = "owned"
	helperUnowned = "unowned"
	helperUID     = "uid"
	// helperSeccomp, followed by a pid, runs Guard for table trafficlab_seccomp on that pid under a
	// seccomp filter that refuses pidfd_open with EPERM, as container runtimes' older default
	// profiles do; it prints "ready" once the guard watches and exits 0 once it is done.
	helperSeccomp = "seccomp"

	// otherUID is the uid of helperUID: neither root nor the agent's.
	otherUID = 4242
)

// helperRedirect is the unowned helper's redirect: appPort to a listener of its own.
var helperRedirect = Redirect{Ports: []uint16{appPort}, ListenPort: listenPort + 1, Mark: testMark}

// TestMain makes the test binary that helper when helperEnv is set; the helper is no test of its
// own, so a plain run never reports it.
func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		os.Exit(helperOpen(name, os.Getenv(helperModeEnv)))
	}
	os.Exit(m.Run())
}

// helperOpen opens a table in the named netns (or listens on fd 3), prints "ready" and waits until
// it is killed; should the parent die first, its end of the stdin pipe closes and so does the
// helper.
func helperOpen(name, mode string) int {
	fail := func(err error) int {
		fmt.Println("error:", err)
		return 1
	}
	if pid, ok := strings.CutPrefix(mode, helperSeccomp+" "); ok {
		return helperGuard(name, pid, fail)
	}
	if mode == helperUID {
		// setresuid in Go changes every thread's credentials; listen records them for SO_PEERCRED.
		if err := syscall.Setresgid(otherUID, otherUID, otherUID); err != nil {
			return fail(err)
		}
		if err := syscall.Setresuid(otherUID, otherUID, otherUID); err != nil {
			return fail(err)
		}
		if err := unix.Listen(3, 8); err != nil {
			return fail(err)
		}
		fmt.Println("ready")
		_, _ = io.Copy(io.Discard, os.Stdin)
		return 0
	}
	// Stays locked: the thread must not return to the pool in the other netns.
	runtime.LockOSThread()
	h, err := netns.GetFromName(name)
	if err != nil {
		return fail(err)
	}
	if err := netns.Set(h); err != nil {
		return fail(err)
	}
	r, opts := kernelRedirect, Options{}
	if mode == helperUnowned {
		// A listener of its own, beside the test's agent listener on listenPort.
		r = helperRedirect
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", r.ListenPort))
		if err != nil {
			return fail(err)
		}
		opts = Options{ForceUnowned: true, AllowUnowned: true, Listener: ln.(*net.TCPListener)}
	}
	if _, err := Open(mode, r, opts); err != nil {
		return fail(err)
	}
	if mode == helperUnowned {
		// A child that outlives the holder, in a session of its own as the guard is: the token
		// is close-on-exec, so the child must not keep it alive.
		child := exec.Command("sleep", "60")
		child.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := child.Start(); err != nil {
			return fail(err)
		}
		fmt.Println("ready", child.Process.Pid)
	} else {
		fmt.Println("ready")
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// refusePidfdOpen installs, for every thread of the process, a seccomp filter under which
// pidfd_open fails with EPERM; pidfd_open is 434 on every architecture.
func refusePidfdOpen() error {
	filter := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}, // seccomp_data.nr
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: unix.SYS_PIDFD_OPEN},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog))); errno != 0 {
		return fmt.Errorf("seccomp: %w", errno)
	}
	return nil
}

func helperGuard(name, pidArg string, fail func(error) int) int {
	pid, err := strconv.Atoi(pidArg)
	if err != nil {
		return fail(err)
	}
	if err := refusePidfdOpen(); err != nil {
		return fail(err)
	}
	if _, err := unix.PidfdOpen(pid, 0); !errors.Is(err, unix.EPERM) {
		if err == nil {
			err = errors.New("no error")
		}
		return fail(fmt.Errorf("pidfd_open under the filter = %w, want EPERM", err))
	}
	runtime.LockOSThread()
	h, err := netns.GetFromName(name)
	if err != nil {
		return fail(err)
	}
	if err := netns.Set(h); err != nil {
		return fail(err)
	}
	if err := Guard(context.Background(), helperSeccomp, pid, func() { fmt.Println("ready") }); err != nil {
		return fail(err)
	}
	return 0
}

// startHelper runs the test binary as a helper in mode, with extra files from fd 3 on, waits until
// it is ready, and kills it when the test ends.
func startHelper(t *testing.T, ns *testnet.NS, mode string, files ...*os.File) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"="+ns.Name, helperModeEnv+"="+mode)
	cmd.Stderr = os.Stderr
	cmd.ExtraFiles = files
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
	for {
		select {
		case line, ok := <-lines:
			switch {
			case !ok:
				t.Fatal("helper exited before it was ready")
			case line == "ready" || strings.HasPrefix(line, "ready "):
				if pid, ok := strings.CutPrefix(line, "ready "); ok {
					// The helper's child, which it leaves to the test to end.
					n, err := strconv.Atoi(pid)
					if err != nil {
						t.Fatalf("helper: %q", line)
					}
					t.Cleanup(func() { _ = syscall.Kill(n, syscall.SIGKILL) })
				}
				return cmd
			case strings.HasPrefix(line, "error:"):
				t.Fatalf("helper: %s", line)
			}
		case <-timeout:
			t.Fatal("helper not ready after 30s")
		}
	}
}

func TestKernelOwnedTableDiesWithProcess(t *testing.T) {
	n := newStealNet(t)
	cmd := startHelper(t, n.pod, helperOwned)

	if got := sessionTables(t, n.pod); !slices.Equal(got, []string{"trafficlab_owned owner"}) {
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

	openIn(t, n.pod, "flush", kernelRedirect, Options{})
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
		// They all just carried a line: busy, so reset only because busy is true.
		counts, n, err := Flush([]uint16{appPort}, testMark, true)
		sockets, entries = counts[appPort].Idle+counts[appPort].Busy, n
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

// unowned are the Options of the path a kernel without the owner flag takes, forced here because
// this kernel has the flag.
func (n *stealNet) unowned() Options {
	return Options{ForceUnowned: true, AllowUnowned: true, Listener: n.agent.(*net.TCPListener)}
}

// TestKernelUnownedTable runs the table a kernel without the owner flag gets: tproxy to the
// agent's transparent listener redirects the same connections as the owned table's NAT, each
// with its original destination, and Close deletes it.
func TestKernelUnownedTable(t *testing.T) {
	n := newStealNet(t)
	o := openIn(t, n.pod, "plain", kernelRedirect, n.unowned())
	if o.KernelOwned() {
		t.Fatal("KernelOwned() = true with ForceUnowned")
	}
	if got := sessionTables(t, n.pod); !slices.Equal(got, []string{"trafficlab_plain"}) {
		t.Fatalf("tables: %v", got)
	}
	for _, c := range []struct {
		ns   *testnet.NS
		addr netip.AddrPort
	}{
		{n.client, ap(n.podV4, appPort)}, {n.client, ap(n.podV6, appPort)}, {n.client, ap(n.podV4, appPort2)},
		{n.pod, ap(lo4, appPort)}, {n.pod, ap(lo6, appPort)}, {n.pod, ap(n.podV4, appPort2)},
	} {
		if got, want := ask(t, c.ns, c.addr, 0), "agent "+c.addr.String(); got != want {
			t.Errorf("%s from netns %q answered %q, want %q", c.addr, c.ns.Name, got, want)
		}
	}
	for _, a := range []netip.AddrPort{ap(lo4, appPort), ap(lo6, appPort2), ap(n.podV4, appPort)} {
		if got := ask(t, n.pod, a, testMark); got != "app" {
			t.Errorf("%s with mark %#x answered %q, want the app", a, testMark, got)
		}
	}
	conn, err := dial(t, n.client, ap(n.podV4, listenPort), 0, time.Second)
	var ne net.Error
	if err == nil {
		conn.Close()
	}
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("dial the listener directly: %v, want a timeout (SYN dropped)", err)
	}
	if err := o.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := sessionTables(t, n.pod); len(got) != 0 {
		t.Fatalf("tables after Close: %v", got)
	}
	if got := ask(t, n.client, ap(n.podV4, appPort), 0); got != "app" {
		t.Errorf("after Close, answered %q, want the app", got)
	}
}

// TestKernelTproxyWithoutListener pins what the unowned path relies on: once the agent's listener is
// gone, its table left behind redirects nothing, and every client reaches the app.
func TestKernelTproxyWithoutListener(t *testing.T) {
	n := newStealNet(t)
	openIn(t, n.pod, "orphan", kernelRedirect, n.unowned())
	a := ap(n.podV4, appPort)
	if got, want := ask(t, n.client, a, 0), "agent "+a.String(); got != want {
		t.Fatalf("with the listener, %s answered %q, want %q", a, got, want)
	}
	n.agent.Close()
	if got := sessionTables(t, n.pod); !slices.Equal(got, []string{"trafficlab_orphan"}) {
		t.Fatalf("tables: %v, want the table still there", got)
	}
	for _, c := range []struct {
		ns   *testnet.NS
		addr netip.AddrPort
	}{
		{n.client, ap(n.podV4, appPort)}, {n.client, ap(n.podV6, appPort)}, {n.client, ap(n.podV4, appPort2)},
		{n.pod, ap(lo4, appPort)}, {n.pod, ap(lo6, appPort)}, {n.pod, ap(n.podV6, appPort2)},
	} {
		if got := ask(t, c.ns, c.addr, 0); got != "app" {
			t.Errorf("without a listener, %s from netns %q answered %q, want the app", c.addr, c.ns.Name, got)
		}
	}
}

// TestKernelGuard deletes an unowned table once the session process is gone, whether it watches
// through a pidfd or, pidfd_open refused as a seccomp profile without it refuses it, by polling.
func TestKernelGuard(t *testing.T) {
	n := newStealNet(t)
	for _, c := range []struct {
		id   string
		open pidfdOpener
	}{
		{"pidfd", unix.PidfdOpen},
		{"polling", func(int, int) (int, error) { return -1, unix.EPERM }},
	} {
		t.Run(c.id, func(t *testing.T) {
			// The table's socket and token stay in this process, as in a session that hangs rather
			// than dies; a sleep stands in for the session process.
			openIn(t, n.pod, c.id, kernelRedirect, n.unowned())
			session := startSleeper(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			watching := make(chan struct{})
			guarded := make(chan error, 1)
			go func() {
				guarded <- n.pod.Do(func() error {
					return guard(ctx, c.id, session.Process.Pid, c.open, func() { close(watching) })
				})
			}()
			select {
			case <-watching:
			case err := <-guarded:
				t.Fatalf("guard returned %v before it watched", err)
			}
			if got := sessionTables(t, n.pod); !slices.Equal(got, []string{TablePrefix + c.id}) {
				t.Fatalf("tables while the session runs: %v", got)
			}
			if err := session.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if err := <-guarded; err != nil {
				t.Fatalf("guard: %v", err)
			}
			if got := sessionTables(t, n.pod); len(got) != 0 {
				t.Fatalf("tables after the guard: %v", got)
			}
		})
	}
}

// TestKernelGuardUnderSeccomp: a guard whose pidfd_open a seccomp profile refuses (EPERM) watches
// by polling, and deletes the table once the session process is gone.
func TestKernelGuardUnderSeccomp(t *testing.T) {
	n := newStealNet(t)
	openIn(t, n.pod, helperSeccomp, kernelRedirect, n.unowned())
	session := startSleeper(t)
	guard := startHelper(t, n.pod, fmt.Sprintf("%s %d", helperSeccomp, session.Process.Pid))
	if got := sessionTables(t, n.pod); !slices.Equal(got, []string{TablePrefix + helperSeccomp}) {
		t.Fatalf("tables while the session runs: %v", got)
	}
	if err := session.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- guard.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("guard: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("guard still running 30s after the session was killed")
	}
	if got := sessionTables(t, n.pod); len(got) != 0 {
		t.Fatalf("tables after the guard: %v", got)
	}
}

// sweepIn runs SweepStale in ns.
func sweepIn(t *testing.T, ns *testnet.NS) []string {
	t.Helper()
	var deleted []string
	if err := ns.Do(func() error {
		var err error
		deleted, err = SweepStale()
		return err
	}); err != nil {
		t.Fatalf("SweepStale: %v", err)
	}
	return deleted
}

// TestKernelSweepStale: an agent killed outright on a kernel without the owner flag (its guard
// killed with it) leaves its table; the next SweepStale finds its token gone and deletes it, while
// the table of a live holder, and an owned table, stay.
func TestKernelSweepStale(t *testing.T) {
	n := newStealNet(t)
	// A live session's unowned table, socket and token in this process, and an owned table.
	openIn(t, n.pod, "live", Redirect{Ports: []uint16{appPort2}, ListenPort: listenPort, Mark: testMark}, n.unowned())
	openIn(t, n.pod, "kept", Redirect{Ports: []uint16{9}, ListenPort: 10, Mark: testMark}, Options{})
	dead := startHelper(t, n.pod, helperUnowned)
	all := []string{"trafficlab_kept owner", "trafficlab_live", "trafficlab_unowned"}
	if got := sessionTables(t, n.pod); !slices.Equal(got, all) {
		t.Fatalf("tables with the helper running: %v", got)
	}
	if got := sweepIn(t, n.pod); len(got) != 0 {
		t.Fatalf("SweepStale with every holder alive deleted %v", got)
	}

	// Its child (see helperOpen) lives on: the token must die with the holder all the same.
	if err := dead.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = dead.Wait()
	if got := sessionTables(t, n.pod); !slices.Equal(got, all) {
		t.Fatalf("tables after SIGKILL: %v, want the unowned table left behind", got)
	}
	// Left behind, it redirects nothing: the killed holder's listener went with it.
	a := ap(n.podV4, appPort)
	if got := ask(t, n.client, a, 0); got != "app" {
		t.Errorf("after SIGKILL, %s answered %q, want the app", a, got)
	}
	if got := sweepIn(t, n.pod); !slices.Equal(got, []string{"inet trafficlab_unowned"}) {
		t.Fatalf("SweepStale deleted %v, want the dead holder's table", got)
	}
	if got := sessionTables(t, n.pod); !slices.Equal(got, all[:2]) {
		t.Fatalf("tables after SweepStale: %v", got)
	}
	if got, want := ask(t, n.client, ap(n.podV4, appPort2), 0), "agent "+ap(n.podV4, appPort2).String(); got != want {
		t.Errorf("the live session's redirect after SweepStale: %q, want %q", got, want)
	}
}

// TestKernelSweepTokenOfOtherUser: a token held by a process of another uid proves nothing (any
// process in the pod may bind the name), so its table goes.
func TestKernelSweepTokenOfOtherUser(t *testing.T) {
	n := newStealNet(t)
	c, err := nftables.New(nftables.WithNetNSFd(int(n.pod.Handle())))
	if err != nil {
		t.Fatal(err)
	}
	if err := Ensure(c, "squatted"); err != nil {
		t.Fatal(err)
	}
	// Bound here, in the pod netns, as root; the helper listens on it as otherUID, which is what
	// SO_PEERCRED reports: the credentials of listen().
	var fd int
	if err := n.pod.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrUnix{Name: "@trafficlab_squatted"})
	}); err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "token")
	defer f.Close()
	startHelper(t, n.pod, helperUID, f)
	if got := sweepIn(t, n.pod); !slices.Equal(got, []string{"inet trafficlab_squatted"}) {
		t.Fatalf("SweepStale deleted %v, want the table whose token another uid holds", got)
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
	openIn(t, n.pod, "pass", kernelRedirect, Options{})
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
