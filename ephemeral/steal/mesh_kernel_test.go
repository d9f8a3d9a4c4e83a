//go:build linux && kernel

package steal

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/netfilter"
	"github.com/trafficlab/kubectl-trafficlab/internal/meshtest"
	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// sidecarEnv makes the test binary, run again by startSidecar, a service mesh's sidecar proxy:
// "UID INBOUND SOURCES UPSTREAM" (SOURCES comma-separated, or "-": the kernel's choice; UPSTREAM
// "orig", the original destination, or "localhost", the loopback address of its family).
const sidecarEnv = "TRAFFICLAB_STEAL_TEST_SIDECAR"

// meshPreamble is what a mesh peer sends before its first byte of payload, and what the sidecar
// takes off: it stands for the mTLS that the real sidecar ends. A redirect that took the mesh's
// connection before the sidecar would hand it on, and neither the app nor the local process would
// understand the request that follows.
const meshPreamble = "MESH\n"

// runSidecar is the sidecar: as uid, it listens on the inbound port the mesh's rules redirect to,
// says "conn" on stdout for every connection it accepts, takes the preamble off, and relays the
// rest to the connection's original destination, from the source of its family (Istio's
// 127.0.0.6, ::6) or, without one, from the address the kernel picks (the pod IP, as Linkerd's
// proxy does).
func runSidecar(arg string) int {
	fail := func(err error) int {
		fmt.Println("error:", err)
		return 1
	}
	f := strings.Fields(arg)
	if len(f) != 4 {
		return fail(fmt.Errorf("sidecar arguments %q", arg))
	}
	uid, err := strconv.Atoi(f[0])
	if err != nil {
		return fail(err)
	}
	var sources []netip.Addr
	if f[2] != "-" {
		for _, a := range strings.Split(f[2], ",") {
			src, err := netip.ParseAddr(a)
			if err != nil {
				return fail(err)
			}
			sources = append(sources, src)
		}
	}
	// A subprocess of its own: setresuid in Go changes every thread's credentials, and the
	// sockets made after it are the proxy's, which the mesh's rules and the redirect tell by uid.
	if err := syscall.Setresgid(uid, uid, uid); err != nil {
		return fail(err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fail(err)
	}
	ln, err := net.Listen("tcp", ":"+f[1])
	if err != nil {
		return fail(err)
	}
	var mu sync.Mutex
	say := func(line string) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Println(line)
	}
	go func() {
		// "sync" is answered after every connection accepted so far has been told; the parent's
		// end of stdin closes when it goes, and so does the sidecar.
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if sc.Text() == "sync" {
				say("sync")
			}
			if addr, ok := strings.CutPrefix(sc.Text(), "call "); ok {
				say("called " + sidecarCall(addr))
			}
		}
		os.Exit(0)
	}()
	say("ready")
	for {
		c, err := ln.Accept()
		if err != nil {
			return fail(err)
		}
		// Told before a byte is relayed: by the time an answer leaves, its connection is counted.
		say("conn " + c.RemoteAddr().String())
		go sidecarRelay(c.(*net.TCPConn), sources, f[3] == "localhost", say)
	}
}

// sidecarCall is the proxy calling addr as a client, the way it calls a pod of the mesh: with the
// preamble, from the address the kernel picks. It returns the HTTP answer's body, or the error.
func sidecarCall(addr string) string {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "error " + err.Error()
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, meshPreamble+"GET / HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n"); err != nil {
		return "error " + err.Error()
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "error " + err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "error " + err.Error()
	}
	return fmt.Sprintf("%d %s", resp.StatusCode, b)
}

func sidecarRelay(c *net.TCPConn, sources []netip.Addr, localhost bool, say func(string)) {
	defer c.Close()
	orig, err := netfilter.OriginalDst(c)
	if err != nil {
		say("error: original destination: " + err.Error())
		return
	}
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || line != meshPreamble {
		// Not a mesh peer: the real sidecar's TLS handshake would fail.
		_ = c.SetLinger(0)
		return
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	for _, src := range sources {
		if src.Is4() == orig.Addr().Is4() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
	}
	if localhost {
		orig = netip.AddrPortFrom(loopback(orig.Addr()), orig.Port())
	}
	up, err := d.Dial("tcp", orig.String())
	if err != nil {
		say("error: upstream: " + err.Error())
		_ = c.SetLinger(0)
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(up, r)
		_ = up.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	_, _ = io.Copy(c, up)
	_ = c.CloseWrite()
	<-done
}

// sidecar is a running sidecar and the connections its inbound port accepted.
type sidecar struct {
	conns  atomic.Int64
	stdin  io.Writer
	synced chan struct{}
	called chan string
}

// call has the sidecar call addr as a mesh client and returns the answer ("STATUS BODY").
func (s *sidecar) call(t *testing.T, addr string) string {
	t.Helper()
	if _, err := io.WriteString(s.stdin, "call "+addr+"\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-s.called:
		return got
	case <-time.After(20 * time.Second):
		t.Fatal("the sidecar did not answer call in 20 s")
		return ""
	}
}

// accepted is how many connections the sidecar accepted, all of those accepted before the call
// included.
func (s *sidecar) accepted(t *testing.T) int64 {
	t.Helper()
	if _, err := io.WriteString(s.stdin, "sync\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.synced:
	case <-time.After(10 * time.Second):
		t.Fatal("the sidecar did not answer sync in 10 s")
	}
	return s.conns.Load()
}

// startSidecar runs the sidecar in ns (it is forked from a thread in ns) and stops it when the
// test ends.
func startSidecar(t *testing.T, ns *testnet.NS, uid, inbound int, sources []netip.Addr, localhost bool) *sidecar {
	t.Helper()
	src := "-"
	if len(sources) > 0 {
		s := make([]string, len(sources))
		for i, a := range sources {
			s[i] = a.String()
		}
		src = strings.Join(s, ",")
	}
	cmd := exec.Command(os.Args[0])
	upstream := "orig"
	if localhost {
		upstream = "localhost"
	}
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d %d %s %s", sidecarEnv, uid, inbound, src, upstream))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.Do(cmd.Start); err != nil {
		t.Fatalf("start the sidecar: %v", err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	s := &sidecar{stdin: stdin, synced: make(chan struct{}), called: make(chan string, 1)}
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "ready":
				ready <- nil
			case strings.HasPrefix(line, "conn "):
				s.conns.Add(1)
			case line == "sync":
				s.synced <- struct{}{}
			case strings.HasPrefix(line, "called "):
				s.called <- strings.TrimPrefix(line, "called ")
			case strings.HasPrefix(line, "error:"):
				select {
				case ready <- fmt.Errorf("sidecar: %s", line):
				default:
					t.Errorf("sidecar: %s", line)
				}
			}
		}
		select {
		case ready <- fmt.Errorf("sidecar exited before it was ready"):
		default:
		}
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("sidecar not ready after 30 s")
	}
	return s
}

// meshCase is one mesh's rules and what the agent is told of it.
type meshCase struct {
	rules    meshtest.RuleSet
	uid      int
	inbound  int
	upstream []netip.Addr // the sidecar's sources toward the app, one per family; none: the pod IP
	// localhost: the sidecar calls the app at 127.0.0.1 (::1), from there, as Istio before 1.10
	// did, instead of at the original destination.
	localhost bool
	mesh      *netfilter.MeshRedirect
}

// loopback is the loopback address of a's family.
func loopback(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.MustParseAddr("127.0.0.1")
	}
	return netip.IPv6Loopback()
}

var (
	istioSources = []netip.Addr{netip.MustParseAddr("127.0.0.6"), netip.MustParseAddr("::6")}
	istioFor     = func(rs meshtest.RuleSet) meshCase {
		return meshCase{
			rules: rs, uid: meshtest.IstioProxyUID, inbound: meshtest.IstioInboundPort, upstream: istioSources,
			mesh: &netfilter.MeshRedirect{
				ProxyUID:     meshtest.IstioProxyUID,
				ProxySources: istioSources,
				PassSources:  istioSources,
			},
		}
	}
	// istioLocalhost is a sidecar that calls the app at 127.0.0.1:P (::1), from there, as Istio's
	// did before 1.10 (and does for a Sidecar resource with a localhost default endpoint), under
	// today's rules: the redirect takes the proxy's connections from those addresses, and the agent
	// passes back to the same original destination, which Istio's output rules let through.
	istioLocalhost = func(rs meshtest.RuleSet) meshCase {
		lo := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}
		return meshCase{
			rules: rs, uid: meshtest.IstioProxyUID, inbound: meshtest.IstioInboundPort, upstream: lo, localhost: true,
			mesh: &netfilter.MeshRedirect{ProxyUID: meshtest.IstioProxyUID, ProxySources: lo},
		}
	}
	linkerdFor = func(rs meshtest.RuleSet) meshCase {
		return meshCase{
			rules: rs, uid: meshtest.LinkerdProxyUID, inbound: meshtest.LinkerdInboundPort,
			mesh: &netfilter.MeshRedirect{ProxyUID: meshtest.LinkerdProxyUID},
		}
	}
)

// TestKernelStealAfterSidecar steals port 8080 of a meshed pod, with the mesh's real rules and a
// sidecar that behaves like the real one where it matters (uid, inbound port, original
// destination, source toward the app): a client in another namespace calls the pod through the
// mesh. The steal takes the sidecar's plaintext connection to the app, not the mesh's connection
// to the pod: whole-port, every request reaches the local process; filtered, the matched ones do
// and the others are passed back to the app, from where the sidecar would have called it
// (127.0.0.6 under Istio, the pod IP under Linkerd), without being captured again: the sidecar's
// inbound port accepts exactly one connection per request.
func TestKernelStealAfterSidecar(t *testing.T) {
	for _, mc := range []meshCase{
		istioFor(meshtest.IstioLegacy),
		istioFor(meshtest.IstioNft),
		istioFor(meshtest.IstioNftables),
		linkerdFor(meshtest.LinkerdLegacy),
		linkerdFor(meshtest.LinkerdNft),
		istioLocalhost(meshtest.IstioLegacy),
		istioLocalhost(meshtest.IstioNftables),
	} {
		name := string(mc.rules)
		if mc.localhost {
			name += "/localhost-upstream"
		}
		t.Run(name, func(t *testing.T) {
			testStealAfterSidecar(t, mc, false)
		})
		t.Run(name+"/unowned", func(t *testing.T) {
			testStealAfterSidecar(t, mc, true)
		})
	}
}

func testStealAfterSidecar(t *testing.T, mc meshCase, unowned bool) {
	pods := []netip.Addr{netip.MustParseAddr("10.81.0.1"), netip.MustParseAddr("fd81::1")}
	pod, client := testnet.New(t), testnet.New(t)
	testnet.Connect(t,
		pod, []netip.Prefix{netip.MustParsePrefix("10.81.0.1/24"), netip.MustParsePrefix("fd81::1/64")},
		client, []netip.Prefix{netip.MustParsePrefix("10.81.0.2/24"), netip.MustParsePrefix("fd81::2/64")})
	if mc.rules.Mesh() == "Istio" {
		// Apply's Istio rules are those of a single-stack pod; this pod has both families, for
		// which istio-cni passes --dual-stack (and istio-iptables puts ::6 on lo).
		argv := append([]string{"netns", "exec", pod.Name, meshtest.IstioIptables(t)}, mc.rules.IstioArgs()...)
		if out, err := exec.Command("ip", append(argv, "--dual-stack")...).CombinedOutput(); err != nil {
			t.Fatalf("istio-iptables --dual-stack: %v\n%s", err, out)
		}
	} else {
		meshtest.Apply(t, pod.Name, mc.rules)
	}
	// The app answers with who called it.
	appL := pod.Listen(t, "tcp", ":8080")
	app := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprint(w, "app from "+host)
	})}
	go func() { _ = app.Serve(appL) }()
	t.Cleanup(func() { app.Close() })
	localL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	local := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "local")
	})}
	go func() { _ = local.Serve(localL) }()
	t.Cleanup(func() { local.Close() })
	side := startSidecar(t, pod, mc.uid, mc.inbound, mc.upstream, mc.localhost)

	// A meshed client: every connection starts with the preamble its sidecar would have sent.
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := client.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			if _, err := io.WriteString(c, meshPreamble); err != nil {
				c.Close()
				return nil, err
			}
			return c, nil
		}}}
	requests := int64(0)
	// check sends one request to each of the pod's addresses, on a connection of its own, and
	// wants it answered by the local process or, with passed, by the app as the sidecar calls it.
	check := func(when string, steal, passed bool) {
		t.Helper()
		for _, a := range pods {
			want := "200 local"
			if passed {
				// The sidecar calls the app from its source of that family, or from the pod IP.
				from := a
				if mc.localhost {
					from = loopback(a)
				}
				for _, u := range mc.upstream {
					if u.Is4() == a.Is4() {
						from = u
					}
				}
				want = "200 app from " + from.String()
			}
			req, err := http.NewRequest(http.MethodGet, "http://"+netip.AddrPortFrom(a, 8080).String()+"/", nil)
			if err != nil {
				t.Fatal(err)
			}
			if steal {
				req.Header.Set("X-Steal", "yes")
			}
			requests++
			resp, err := hc.Do(req)
			if err != nil {
				t.Errorf("%s: GET %s: %v", when, req.URL, err)
				continue
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if got := fmt.Sprintf("%d %s", resp.StatusCode, b); err != nil || got != want {
				t.Errorf("%s: %s answered %q (%v), want %q", when, req.URL, got, err, want)
			}
		}
		if got := side.accepted(t); got != requests {
			t.Errorf("%s: the sidecar's inbound port accepted %d connections for %d requests", when, got, requests)
		}
	}

	check("before the steal", true, true)
	if t.Failed() {
		t.FailNow()
	}

	start := func(spec wire.StealSpec) *Steal {
		t.Helper()
		spec.Ports = []int{8080}
		spec.AllowUnownedRedirect = unowned
		var st *Steal
		if err := pod.Do(func() error {
			var err error
			st, err = Start(context.Background(), Config{
				ID: "mesh", Spec: spec, Open: toLocalHTTP{addr: localL.Addr().String()}, InNetns: pod.Do,
				Mesh: mc.mesh, ForceUnowned: unowned,
			})
			return err
		}); err != nil {
			t.Fatalf("Start: %v", err)
		}
		return st
	}

	st := start(wire.StealSpec{})
	check("whole-port steal", false, false)
	// The pod's own connections to itself stay the steal's, as without a mesh: the meshes leave
	// them outside the mesh.
	for _, a := range pods {
		var c net.Conn
		if err := pod.Do(func() error {
			var err error
			c, err = net.DialTimeout("tcp", netip.AddrPortFrom(a, 8080).String(), 5*time.Second)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("the pod calling itself at %s: %v", a, err)
		}
		b, _ := io.ReadAll(resp.Body)
		c.Close()
		if got := fmt.Sprintf("%d %s", resp.StatusCode, b); got != "200 local" {
			t.Errorf("the pod calling itself at %s, answered %q, want the local process", a, got)
		}
	}
	if mc.rules.Mesh() == "Istio" {
		// Istio's proxy calling its own pod as a mesh client is left to Istio, which sends it
		// back to the proxy's inbound port; the steal takes it from there, in plaintext. Taken
		// before, the local process would get the mesh's bytes.
		for _, a := range pods {
			requests++
			if got := side.call(t, netip.AddrPortFrom(a, 8080).String()); got != "200 local" {
				t.Errorf("the sidecar calling its own pod at %s, answered %q, want the local process", a, got)
			}
		}
		if got := side.accepted(t); got != requests {
			t.Errorf("the sidecar calling its own pod: its inbound port accepted %d connections, want %d", got, requests)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st = start(wire.StealSpec{Filter: &wire.HTTPFilter{Headers: []string{"X-Steal: yes"}}})
	t.Cleanup(func() { _ = st.Close() })
	check("filtered steal, matched", true, false)
	check("filtered steal, not matched", false, true)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// A tcpSocket probe declared on the port, with the proxy's sources among the probes' (the
	// plugin sends 127.0.0.6 for an Istio pod, where pilot-agent probes from): behind the sidecar
	// every connection comes from there, and taking each for a probe by its source and port would
	// pass them all to the app unread.
	var sources []string
	for _, u := range mc.upstream {
		sources = append(sources, u.String())
	}
	if len(sources) == 0 {
		for _, a := range pods {
			sources = append(sources, a.String())
		}
	}
	st = start(wire.StealSpec{Filter: &wire.HTTPFilter{Headers: []string{"X-Steal: yes"}},
		Probes: &wire.Probes{Declared: []wire.Probe{{Port: 8080, Kind: wire.ProbeTCP}}, Sources: sources}})
	check("filtered steal with a tcpSocket probe on the port, matched", true, false)
	check("filtered steal with a tcpSocket probe on the port, not matched", false, true)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// A redirect mirror: every connection goes to the app as the sidecar would have sent it, and
	// the copy is of the plaintext the sidecar hands over, not of the mesh's bytes.
	heads := make(chan string, 2*len(pods))
	if err := pod.Do(func() error {
		var err error
		st, err = Start(context.Background(), Config{
			ID: "meshmirror", Spec: wire.StealSpec{Ports: []int{8080}, AllowUnownedRedirect: unowned}, InNetns: pod.Do,
			Mesh: mc.mesh, ForceUnowned: unowned,
			Tee: func(capture.Flow) capture.StreamHandler { return &headCopy{heads: heads} },
		})
		return err
	}); err != nil {
		t.Fatalf("Start the mirror: %v", err)
	}
	check("redirect mirror", false, true)
	for range pods {
		select {
		case h := <-heads:
			if h != "GET /" {
				t.Errorf("redirect mirror: the copy starts with %q, want the plaintext request", h)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("redirect mirror: no copy ended within 10 s")
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	check("after the steal", true, true)
}

// headCopy is a mirror's copy of one connection that keeps the first bytes the client sent and
// hands them over when the client's side ends.
type headCopy struct {
	heads chan<- string
	head  []byte
}

func (h *headCopy) Data(dir capture.Direction, data []byte, _ time.Time) {
	if dir == capture.ClientToServer && len(h.head) < 5 {
		h.head = append(h.head, data[:min(len(data), 5-len(h.head))]...)
	}
}

func (h *headCopy) Gap(capture.Direction, int, time.Time) {}

func (h *headCopy) End(dir capture.Direction, _ capture.EndReason, _ time.Time) {
	if dir == capture.ClientToServer {
		h.heads <- string(h.head)
	}
}

// toLocalHTTP is the plugin's side: every incoming stream is a connection to the local server.
type toLocalHTTP struct{ addr string }

func (d toLocalHTTP) OpenIncoming(ctx context.Context, _ wire.OpenRequest) (net.Conn, error) {
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d.addr)
}
