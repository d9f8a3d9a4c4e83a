//go:build linux && kernel

package sandbox_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/netstack"
	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/sandbox"
)

// The kernel tests run real programs (curl, socat, getent, sh) in a sandbox, as an unprivileged
// user: run as root, a test starts itself again as nobody (childEnv names the test) and only checks
// that run's result; run as an ordinary user, it runs directly. /dev/net/tun gets the mode the
// test needs for its duration.

const (
	childEnv  = "TRAFFICLAB_SANDBOX_TEST_CHILD"
	nobody    = 65534
	tunDevice = "/dev/net/tun"
	helperArg = "__trafficlab-sandbox-helper"
	path      = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// unprivileged reports whether the calling test's body should run in this process. As root it runs
// asRoot (if set), then the test as nobody with /dev/net/tun at tunMode, reports that run, and
// returns false.
func unprivileged(t *testing.T, tunMode os.FileMode, asRoot func(*testing.T)) bool {
	t.Helper()
	if os.Getenv(childEnv) == t.Name() {
		return true
	}
	if os.Geteuid() != 0 {
		fi, err := os.Stat(tunDevice)
		if err != nil || fi.Mode().Perm() != tunMode {
			t.Fatalf("kernel test: needs %s with mode %04o, or root", tunDevice, tunMode)
		}
		return true
	}
	chmodTUN(t, tunMode)
	if asRoot != nil {
		asRoot(t)
	}
	before := processesOf(nobody)

	cmd := exec.Command("/proc/self/exe", "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), childEnv+"="+t.Name())
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.CombinedOutput()
	// Prefixed, so that test2json does not take the child's result lines for this test's.
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		b.WriteString("| " + l + "\n")
	}
	t.Logf("as uid %d:\n%s", nobody, b.String())
	if err != nil {
		t.Errorf("unprivileged run: %v", err)
	}
	// Namespaces die with their processes: none may be left.
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := newProcesses(before, processesOf(nobody))
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("processes left behind: %q", left)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

func chmodTUN(t *testing.T, mode os.FileMode) {
	t.Helper()
	fi, err := os.Stat(tunDevice)
	if err != nil {
		t.Fatalf("kernel test: %v", err)
	}
	prev := fi.Mode().Perm()
	if err := os.Chmod(tunDevice, mode); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Chmod(tunDevice, prev); err != nil {
			t.Errorf("restore mode of %s: %v", tunDevice, err)
		}
	})
}

// fakeResolverSockets gives the host nscd's and systemd-resolved's socket directories, if it has
// none, for the sandbox to hide; what it creates goes at the end of the test.
func fakeResolverSockets(t *testing.T) {
	t.Helper()
	for _, dir := range []string{"/run/nscd", "/run/systemd/resolve"} {
		if _, err := os.Stat(dir); err == nil {
			continue
		}
		top := dir
		for p := filepath.Dir(dir); p != "/"; p = filepath.Dir(p) {
			if _, err := os.Stat(p); err == nil {
				break
			}
			top = p
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(top) })
		if err := os.WriteFile(filepath.Join(dir, "socket"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// processesOf maps the PIDs of uid's processes to their command lines.
func processesOf(uid int) map[string]string {
	out := map[string]string{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", e.Name()), &st) != nil || int(st.Uid) != uid {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		out[e.Name()] = strings.ReplaceAll(string(cmdline), "\x00", " ")
	}
	return out
}

func newProcesses(before, after map[string]string) []string {
	var left []string
	for pid, cmd := range after {
		if before[pid] != cmd {
			left = append(left, pid+": "+cmd)
		}
	}
	return left
}

// routes is a Dialer that sends the sandbox's destinations to host addresses and refuses the rest.
type routes map[string]string

func (r routes) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	to, ok := r[network+" "+address]
	if !ok {
		return nil, fmt.Errorf("no route to %s %s: %w", network, address, syscall.ECONNREFUSED)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, to)
}

type result struct {
	code           int
	stdout, stderr string
}

// run runs command in a sandbox whose traffic goes to d; ready, if set, runs between setup and
// start, and during, if set, while the command runs.
func run(t *testing.T, command []string, resolvConf []byte, d netstack.Dialer, ready, during func(*sandbox.Sandbox)) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	sb, err := sandbox.New(ctx, sandbox.Config{
		Command:    command,
		Env:        []string{path, "HOME=/", "LC_ALL=C"},
		Dir:        "/",
		ResolvConf: resolvConf,
		Stdout:     &stdout,
		Stderr:     &stderr,
	})
	if err != nil {
		t.Fatalf("sandbox: %v", err)
	}
	defer sb.Close()
	ns, err := netstack.New(sb.TUN(), netstack.Config{MTU: sandbox.MTU, Dialer: d})
	if err != nil {
		t.Fatalf("netstack: %v", err)
	}
	defer ns.Close()
	if ready != nil {
		ready(sb)
	}
	if err := sb.Start(); err != nil {
		code, werr := sb.Wait()
		t.Fatalf("start: %v (wait: %d, %v; stderr %q)", err, code, werr, stderr.String())
	}
	if during != nil {
		during(sb)
	}
	code, err := sb.Wait()
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// hostHTTP serves /hello, /bytes?n=N (N zero bytes) and /sink (reads the body, answers its size)
// on the host's loopback.
func hostHTTP(t *testing.T) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "hello from the host\n") })
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		_, _ = io.CopyN(w, zeros{}, n)
	})
	mux.HandleFunc("/sink", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		_, _ = fmt.Fprintf(w, "%d\n", n)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func hostUDPEcho(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(append([]byte("echo:"), buf[:n]...), from)
		}
	}()
	return pc.LocalAddr().String()
}

// hostDNS answers A questions for names with an IPv4 address, NOERROR without answers for their
// other types, and NXDOMAIN for everything else.
func hostDNS(t *testing.T, names map[string][4]byte) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var q dnsmessage.Message
			if q.Unpack(buf[:n]) != nil || len(q.Questions) != 1 {
				continue
			}
			a := dnsmessage.Message{Header: dnsmessage.Header{ID: q.ID, Response: true, Authoritative: true}, Questions: q.Questions}
			ip, ok := names[q.Questions[0].Name.String()]
			switch {
			case !ok:
				a.RCode = dnsmessage.RCodeNameError
			case q.Questions[0].Type == dnsmessage.TypeA:
				a.Answers = []dnsmessage.Resource{{
					Header: dnsmessage.ResourceHeader{Name: q.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 5},
					Body:   &dnsmessage.AResource{A: ip},
				}}
			}
			if b, err := a.Pack(); err == nil {
				_, _ = pc.WriteTo(b, from)
			}
		}
	}()
	return pc.LocalAddr().String()
}

func TestKernelSandbox(t *testing.T) {
	if !unprivileged(t, 0o666, fakeResolverSockets) {
		return
	}
	web := hostHTTP(t)
	echo := hostUDPEcho(t)
	dns := hostDNS(t, map[string][4]byte{"svc.test.": {10, 99, 0, 5}})
	d := routes{
		"tcp 10.99.0.5:8080":  web,
		"udp 10.99.0.7:9999":  echo,
		"udp 198.18.0.1:53":   dns,
		"tcp [fd00::5]:8080":  web,
		"tcp 10.99.0.9:8080":  "127.0.0.1:1", // dialed, and refused by the host
		"udp [fd00::7]:9999":  echo,
		"tcp 198.18.0.1:8080": web,
	}
	resolv := []byte("nameserver " + sandbox.GatewayIPv4 + "\nsearch test\noptions ndots:1\n")

	t.Run("curl reaches a host server through the stack", func(t *testing.T) {
		for _, url := range []string{"http://10.99.0.5:8080/hello", "http://[fd00::5]:8080/hello"} {
			r := run(t, []string{"curl", "-sS", "--max-time", "10", url}, nil, d, nil, nil)
			if r.code != 0 || r.stdout != "hello from the host\n" {
				t.Errorf("curl %s: code %d, stdout %q, stderr %q", url, r.code, r.stdout, r.stderr)
			}
		}
	})

	t.Run("refused connections are refused", func(t *testing.T) {
		for _, url := range []string{"http://10.99.0.6:8080/", "http://10.99.0.9:8080/"} {
			// -v: curl's own message for a refusal is "Couldn't connect to server", as for others.
			// A dropped SYN would end in --max-time instead: code 28, "Connection timed out".
			r := run(t, []string{"curl", "-sSv", "--max-time", "10", url}, nil, d, nil, nil)
			if r.code != 7 || !strings.Contains(r.stderr, "Connection refused") {
				t.Errorf("curl %s: code %d, stderr %q; want 7 and \"Connection refused\"", url, r.code, r.stderr)
			}
		}
	})

	t.Run("udp datagrams round-trip", func(t *testing.T) {
		for _, to := range []string{"UDP4:10.99.0.7:9999", "UDP6:[fd00::7]:9999"} {
			r := run(t, []string{"sh", "-c", "echo ping | socat -t 1 - " + to}, nil, d, nil, nil)
			if r.code != 0 || r.stdout != "echo:ping\n" {
				t.Errorf("socat %s: code %d, stdout %q, stderr %q", to, r.code, r.stdout, r.stderr)
			}
		}
	})

	t.Run("resolv.conf is the given one and the resolver shortcuts are hidden", func(t *testing.T) {
		script := `cat /etc/resolv.conf; echo ---; for d in /run/nscd /var/run/nscd /run/systemd/resolve; do [ -d $d ] && echo "$d: $(ls -A $d | wc -l)"; done; echo ---; getent hosts svc.test; curl -sS --max-time 10 http://svc:8080/hello`
		r := run(t, []string{"sh", "-c", script}, resolv, d, nil, nil)
		parts := strings.Split(r.stdout, "---\n")
		if r.code != 0 || len(parts) != 3 {
			t.Fatalf("code %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
		if parts[0] != string(resolv) {
			t.Errorf("resolv.conf inside = %q, want %q", parts[0], resolv)
		}
		for _, l := range strings.Split(strings.TrimSpace(parts[1]), "\n") {
			if l != "" && !strings.HasSuffix(l, ": 0") {
				t.Errorf("shortcut not hidden: %q", l)
			}
		}
		if want := "10.99.0.5       svc.test\nhello from the host\n"; parts[2] != want {
			t.Errorf("name resolution through the sandbox's resolver: got %q, want %q", parts[2], want)
		}
		if host, err := os.ReadFile("/etc/resolv.conf"); err == nil && bytes.Equal(host, resolv) {
			t.Error("the host's /etc/resolv.conf changed")
		}
	})

	t.Run("network, user and capabilities inside", func(t *testing.T) {
		script := `ip -4 route; ip -6 route show default; ip -o link show ` + sandbox.TUNName + `; id -u; grep -E '^Cap(Inh|Prm|Eff|Amb)' /proc/self/status`
		r := run(t, []string{"sh", "-c", script}, nil, d, nil, nil)
		if r.code != 0 {
			t.Fatalf("code %d, stderr %q", r.code, r.stderr)
		}
		for _, want := range []string{
			"default via " + sandbox.GatewayIPv4 + " dev " + sandbox.TUNName,
			"default via " + sandbox.GatewayIPv6 + " dev " + sandbox.TUNName,
			"mtu " + strconv.Itoa(sandbox.MTU),
			"\n" + strconv.Itoa(os.Getuid()) + "\n",
			"CapInh:\t0000000000000000", "CapPrm:\t0000000000000000", "CapEff:\t0000000000000000", "CapAmb:\t0000000000000000",
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("missing %q in:\n%s", want, r.stdout)
			}
		}
	})

	t.Run("DialLoopback reaches a server the command runs on localhost", func(t *testing.T) {
		var got string
		var refusedFirst error
		during := func(sb *sandbox.Sandbox) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for ctx.Err() == nil {
				c, err := sb.DialLoopback(ctx, "tcp", 9000)
				if err != nil {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				b, _ := io.ReadAll(c)
				c.Close()
				got = string(b)
				return
			}
		}
		ready := func(sb *sandbox.Sandbox) {
			_, refusedFirst = sb.DialLoopback(context.Background(), "tcp4", 9000)
		}
		r := run(t, []string{"socat", "TCP-LISTEN:9000,bind=127.0.0.1,reuseaddr", "SYSTEM:echo from-inside"}, nil, d, ready, during)
		if r.code != 0 || got != "from-inside\n" {
			t.Errorf("code %d, got %q, stderr %q", r.code, got, r.stderr)
		}
		if !errors.Is(refusedFirst, syscall.ECONNREFUSED) {
			t.Errorf("dial before the command listened: %v, want connection refused", refusedFirst)
		}
	})

	t.Run("ListenLoopback makes a host service localhost inside", func(t *testing.T) {
		var wg sync.WaitGroup
		var lns []net.Listener
		ready := func(sb *sandbox.Sandbox) {
			for _, network := range []string{"tcp4", "tcp6"} {
				ln, err := sb.ListenLoopback(context.Background(), network, 8089)
				if err != nil {
					t.Fatalf("listen %s: %v", network, err)
				}
				lns = append(lns, ln)
				wg.Add(1)
				go func() {
					defer wg.Done()
					proxyTo(ln, web)
				}()
			}
		}
		r := run(t, []string{"sh", "-c", "curl -sS --max-time 10 http://localhost:8089/hello && curl -sS --max-time 10 http://[::1]:8089/hello"}, nil, d, ready, nil)
		for _, ln := range lns {
			ln.Close()
		}
		wg.Wait()
		if r.code != 0 || r.stdout != "hello from the host\nhello from the host\n" {
			t.Errorf("code %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
	})

	t.Run("exit codes", func(t *testing.T) {
		for _, tt := range []struct {
			command []string
			during  func(*sandbox.Sandbox)
			want    int
		}{
			{[]string{"sh", "-c", "exit 7"}, nil, 7},
			{[]string{"true"}, nil, 0},
			{[]string{"sh", "-c", "kill -KILL $$"}, nil, 137},
			{[]string{"sleep", "30"}, func(sb *sandbox.Sandbox) {
				if err := sb.Signal(syscall.SIGTERM); err != nil {
					t.Errorf("signal: %v", err)
				}
			}, 143},
		} {
			if r := run(t, tt.command, nil, d, nil, tt.during); r.code != tt.want {
				t.Errorf("%q: exit code %d, want %d (stderr %q)", tt.command, r.code, tt.want, r.stderr)
			}
		}
	})

	t.Run("a missing command fails New", func(t *testing.T) {
		_, err := sandbox.New(context.Background(), sandbox.Config{Command: []string{"no-such-command-here"}, Env: []string{path}})
		if err == nil || !strings.Contains(err.Error(), `"no-such-command-here": executable file not found`) {
			t.Errorf("New error = %v, want not found", err)
		}
	})

	t.Run("Close kills a running command", func(t *testing.T) {
		// No deadline on the sandbox's context: its end would kill the command as well.
		sb, err := sandbox.New(context.Background(), sandbox.Config{Command: []string{"sleep", "600"}, Env: []string{path}, Dir: "/"})
		if err != nil {
			t.Fatal(err)
		}
		if err := sb.Start(); err != nil {
			t.Fatal(err)
		}
		sb.Close()
		type exit struct {
			code int
			err  error
		}
		exited := make(chan exit, 1)
		go func() {
			code, err := sb.Wait()
			exited <- exit{code, err}
		}()
		select {
		case e := <-exited:
			// 137 is SIGKILL's.
			if e.err != nil || e.code != 137 {
				t.Errorf("after Close: code %d, err %v; want 137", e.code, e.err)
			}
		case <-time.After(time.Minute):
			t.Fatal("the command still runs a minute after Close")
		}
	})

	t.Run("throughput", func(t *testing.T) {
		const size = 100 << 20
		r := run(t, []string{"curl", "-sS", "--max-time", "60", "-o", "/dev/null", "-w", "%{size_download} %{speed_download}",
			fmt.Sprintf("http://10.99.0.5:8080/bytes?n=%d", size)}, nil, d, nil, nil)
		var n, speed float64
		if _, err := fmt.Sscan(r.stdout, &n, &speed); err != nil || r.code != 0 || n != size {
			t.Fatalf("download: code %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
		t.Logf("download of %d MiB through the sandbox: %.0f MB/s", size>>20, speed/1e6)
		r = run(t, []string{"sh", "-c", fmt.Sprintf("head -c %d /dev/zero | curl -sS --max-time 60 -T - -w ' %%{speed_upload}' http://10.99.0.5:8080/sink", size)}, nil, d, nil, nil)
		if _, err := fmt.Sscan(r.stdout, &n, &speed); err != nil || r.code != 0 || n != size {
			t.Fatalf("upload: code %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
		t.Logf("upload of %d MiB through the sandbox: %.0f MB/s", size>>20, speed/1e6)
	})

	t.Run("no goroutines left", func(t *testing.T) {
		before := runtime.NumGoroutine()
		r := run(t, []string{"curl", "-sS", "--max-time", "10", "http://10.99.0.5:8080/hello"}, nil, d, nil, nil)
		if r.code != 0 {
			t.Fatalf("curl: code %d, stderr %q", r.code, r.stderr)
		}
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			t.Errorf("%d goroutines after the sandbox closed, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
		}
	})

	// Everything above closed its sandbox; no TUN descriptor may be left (it would keep a namespace).
	fds, _ := os.ReadDir("/proc/self/fd")
	for _, fd := range fds {
		if target, _ := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); target == tunDevice {
			t.Errorf("descriptor %s still open on %s", fd.Name(), tunDevice)
		}
	}
}

// proxyTo serves each connection accepted on ln by the host's addr.
func proxyTo(ln net.Listener, addr string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			up, err := net.Dial("tcp", addr)
			if err != nil {
				return
			}
			defer up.Close()
			go func() {
				_, _ = io.Copy(up, c)
				_ = up.(*net.TCPConn).CloseWrite()
			}()
			_, _ = io.Copy(c, up)
		}()
	}
}

func TestKernelSandboxTUNDenied(t *testing.T) {
	if !unprivileged(t, 0o600, nil) {
		return
	}
	for name, f := range map[string]func() error{
		"Check": sandbox.Check,
		"New": func() error {
			sb, err := sandbox.New(context.Background(), sandbox.Config{Command: []string{"true"}, Env: []string{path}})
			if err == nil {
				sb.Close()
			}
			return err
		},
	} {
		err := f()
		var ue *sandbox.UnavailableError
		if !errors.As(err, &ue) {
			t.Fatalf("%s: error %v (%T), want *sandbox.UnavailableError", name, err, err)
		}
		msg := err.Error()
		if strings.Contains(msg, "\n") || !strings.Contains(msg, "--proxy") || !strings.Contains(msg, "chmod 0666 /dev/net/tun") || !strings.Contains(msg, "mode 0600") {
			t.Errorf("%s: error %q, want one line with the mode, chmod 0666 and --proxy", name, msg)
		}
		t.Logf("%s: %s", name, msg)
	}
}
