//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// pfReply is peer-echo's JSON answer.
type pfReply struct {
	Pod        string `json:"pod"`
	Method     string `json:"method"`
	Path       string `json:"path"`
	Query      string `json:"query"`
	BodyBytes  int64  `json:"bodyBytes"`
	BodySHA256 string `json:"bodySha256"`
}

// pfHTTP is a client that opens a fresh local connection for every request.
var pfHTTP = &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DisableCompression: true}}

// pfRequest sends one request through a local forwarded port and decodes peer-echo's reply.
func pfRequest(ctx context.Context, port int, method, path string, body []byte) (pfReply, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, fmt.Sprintf("http://127.0.0.1:%d%s", port, path), rd)
	if err != nil {
		return pfReply{}, err
	}
	resp, err := pfHTTP.Do(req)
	if err != nil {
		return pfReply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return pfReply{}, fmt.Errorf("read reply: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return pfReply{}, fmt.Errorf("status %s: %s", resp.Status, b)
	}
	var r pfReply
	if err := json.Unmarshal(b, &r); err != nil {
		return pfReply{}, fmt.Errorf("decode %q: %w", b, err)
	}
	return r, nil
}

func pfSHA256(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// pfMustEcho asks path through port and checks which pod answered.
func pfMustEcho(ctx context.Context, t *testing.T, port int, wantPod string) {
	t.Helper()
	body := []byte("hello through trafficlab " + randSuffix())
	r, err := pfRequest(ctx, port, http.MethodPost, "/via/"+strconv.Itoa(port), body)
	if err != nil {
		t.Fatalf("request through local port %d: %v", port, err)
	}
	if r.Pod != wantPod || r.BodySHA256 != pfSHA256(body) || r.Path != "/via/"+strconv.Itoa(port) {
		t.Fatalf("through local port %d: got pod %q path %q body sha %s; want pod %q and sha %s", port, r.Pod, r.Path, r.BodySHA256, wantPod, pfSHA256(body))
	}
}

// pfUDPExchange sends payload to the local UDP port and returns the first reply, resending on a lost
// datagram (UDP may drop; the forward must still answer within a few tries).
func pfUDPExchange(t *testing.T, port int, payload []byte) []byte {
	t.Helper()
	c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	var lastErr error
	for try := 0; try < 5; try++ {
		if _, err := c.Write(payload); err != nil {
			t.Fatalf("send to local udp %d: %v", port, err)
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(buf)
		if err == nil {
			return append([]byte(nil), buf[:n]...)
		}
		lastErr = err
	}
	t.Fatalf("no UDP reply through local port %d after 5 tries: %v", port, lastErr)
	return nil
}

// TestPortForwardTargets: one session forwards to the pod's own port, to a Service by its short and
// namespaced DNS names (resolved with the pod's search domains), to another pod by IP, UDP to the
// pod's own udpecho and to CoreDNS (a real DNS query answered through the pod).
func TestPortForwardTargets(t *testing.T) {
	t.Parallel()
	pfRequirePlugin(t)
	ctx := testContext(t, 3*time.Minute)
	cs := client(t)
	ns := newNamespace(t, "pf-targets")

	if _, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo-svc"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "other"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service: %v", err)
	}
	createPodReady(ctx, t, ns, pfEchoPod(t, "target", nil, true))
	other := createPodReady(ctx, t, ns, pfEchoPod(t, "other", map[string]string{"app": "other"}, false))
	otherIP := other.Status.PodIP
	if otherIP == "" {
		t.Fatal("pod other has no IP")
	}

	own := pfFreeTCPPort(t)
	pf := pfStart(t, "pf", ns, "pod/target",
		fmt.Sprintf("%d:8080", own),
		":echo-svc:80",
		":echo-svc."+ns+":80",
		":"+otherIP+":8080",
		":9053/udp",
		":kube-dns.kube-system:53/udp",
	)
	svcPort, _ := pf.localPort("echo-svc:80", 30*time.Second)
	svcNSPort, _ := pf.localPort("echo-svc."+ns+":80", 30*time.Second)
	ipPort, _ := pf.localPort(otherIP+":8080", 30*time.Second)
	udpPort, _ := pf.localPort("localhost:9053/udp", 30*time.Second)
	dnsPort, _ := pf.localPort("kube-dns.kube-system:53/udp", 30*time.Second)
	if p, _ := pf.localPort("localhost:8080", 30*time.Second); p != own {
		t.Fatalf("asked for local port %d, the plugin bound %d", own, p)
	}
	pf.connected(time.Minute)

	t.Run("own port", func(t *testing.T) { pfMustEcho(ctx, t, own, "target") })
	t.Run("service short name", func(t *testing.T) { pfMustEcho(ctx, t, svcPort, "other") })
	t.Run("service name.namespace", func(t *testing.T) { pfMustEcho(ctx, t, svcNSPort, "other") })
	t.Run("pod IP", func(t *testing.T) { pfMustEcho(ctx, t, ipPort, "other") })
	t.Run("udp echo", func(t *testing.T) {
		for i := 0; i < 3; i++ {
			msg := []byte(fmt.Sprintf("datagram %d %s", i, randSuffix()))
			if got := pfUDPExchange(t, udpPort, msg); !bytes.Equal(got, msg) {
				t.Fatalf("udpecho returned %q, want %q", got, msg)
			}
		}
	})
	t.Run("udp dns", func(t *testing.T) {
		id := uint16(mrand.Uint32())
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
		b.EnableCompression()
		if err := b.StartQuestions(); err != nil {
			t.Fatal(err)
		}
		name := dnsmessage.MustNewName("kubernetes.default.svc.cluster.local.")
		if err := b.Question(dnsmessage.Question{Name: name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}); err != nil {
			t.Fatal(err)
		}
		q, err := b.Finish()
		if err != nil {
			t.Fatal(err)
		}
		var m dnsmessage.Message
		if err := m.Unpack(pfUDPExchange(t, dnsPort, q)); err != nil {
			t.Fatalf("unpack DNS reply: %v", err)
		}
		if m.ID != id || !m.Response || m.RCode != dnsmessage.RCodeSuccess {
			t.Fatalf("DNS reply header %+v, want response to id %d with rcode success", m.Header, id)
		}
		var got []string
		for _, a := range m.Answers {
			if r, ok := a.Body.(*dnsmessage.AResource); ok {
				got = append(got, net.IP(r.A[:]).String())
			}
		}
		if len(got) != 1 || got[0] != "10.96.0.1" {
			t.Fatalf("A records for kubernetes.default.svc.cluster.local = %v, want [10.96.0.1]", got)
		}
		t.Logf("kubernetes.default.svc.cluster.local A %v (via CoreDNS through the pod)", got)
	})
}

// TestPortForwardLargeTransfer: 1 GiB each way through one forwarded port arrives intact (sha256 of
// what the peer sent or received equals ours) and the throughput is logged.
func TestPortForwardLargeTransfer(t *testing.T) {
	// Not parallel: the throughput is only meaningful on an otherwise quiet 2-core node.
	pfRequirePlugin(t)
	ctx := testContext(t, 4*time.Minute)
	ns := newNamespace(t, "pf-large")
	createPodReady(ctx, t, ns, pfEchoPod(t, "target", nil, false))
	pf := pfStart(t, "pf", ns, "pod/target", ":8080")
	port, _ := pf.localPort("localhost:8080", 30*time.Second)
	agent, _, _ := pf.connected(time.Minute)

	const size = 1 << 30
	hc := &http.Client{Transport: &http.Transport{DisableCompression: true, DisableKeepAlives: true}}
	buf := make([]byte, 1<<20)

	t.Run("download", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/bytes?n=%d&seed=7", port, size), nil)
		start := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		h := sha256.New()
		n, err := io.CopyBuffer(h, resp.Body, buf)
		el := time.Since(start)
		if err != nil {
			t.Fatalf("download: got %d bytes, then %v", n, err)
		}
		if n != size {
			t.Fatalf("download: got %d bytes, want %d", n, size)
		}
		want := resp.Trailer.Get("X-Body-Sha256")
		if got := hex.EncodeToString(h.Sum(nil)); got != want {
			t.Fatalf("download sha256 %s, peer sent %q", got, want)
		}
		t.Logf("MEASURE download 1 GiB in %s: %.1f MiB/s (sha256 %s matches)", el.Round(time.Millisecond), float64(size)/(1<<20)/el.Seconds(), want[:16])
	})

	t.Run("upload", func(t *testing.T) {
		var key [32]byte
		_, _ = rand.Read(key[:])
		h := sha256.New()
		body := io.TeeReader(io.LimitReader(mrand.NewChaCha8(key), size), h)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/sink", port), io.NopCloser(body))
		req.ContentLength = size
		start := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r pfReply
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			t.Fatalf("decode reply: %v", err)
		}
		el := time.Since(start)
		want := hex.EncodeToString(h.Sum(nil))
		if r.BodyBytes != size || r.BodySHA256 != want {
			t.Fatalf("peer received %d bytes with sha256 %s; sent %d with %s", r.BodyBytes, r.BodySHA256, size, want)
		}
		t.Logf("MEASURE upload 1 GiB in %s: %.1f MiB/s (sha256 %s matches)", el.Round(time.Millisecond), float64(size)/(1<<20)/el.Seconds(), want[:16])
	})

	// The runtime writes a container's own stdout and stderr to node log files; 2 GiB went through the
	// agent, and none of it may be there: only the agent's few log lines.
	t.Run("not in the agent's log", func(t *testing.T) {
		logs, err := client(t).CoreV1().Pods(ns).GetLogs("target", &corev1.PodLogOptions{Container: agent}).DoRaw(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(logs) > 16<<10 {
			t.Fatalf("agent container log is %d bytes after the transfer; tunnel bytes leak into it", len(logs))
		}
		for _, line := range strings.Split(strings.TrimSpace(string(logs)), "\n") {
			if line != "" && !strings.HasPrefix(line, "time=") {
				t.Errorf("agent log has a line that is not a log record: %q", trunc(line))
			}
		}
		t.Logf("agent container log after 2 GiB: %d bytes", len(logs))
	})
}

// TestPortForwardConcurrent: 200 connections open at once through one session, each carrying a
// request with its own body, all answered correctly; the agent's RSS is measured idle and under load.
func TestPortForwardConcurrent(t *testing.T) {
	// Not parallel: the RSS numbers are for this load alone.
	pfRequirePlugin(t)
	ctx := testContext(t, 3*time.Minute)
	ns, _, port := pfTargetSession(ctx, t, "pf-conc")

	procs, err := pfAgentProcs(ctx, ns, "target")
	if err != nil {
		t.Fatal(err)
	}
	main, sessions := pfSplitAgentProcs(procs)
	if main == nil || len(sessions) != 1 {
		t.Fatalf("want one agent main process and one session, got %+v", procs)
	}
	t.Logf("MEASURE agent RSS idle (one connected session): main pid %d %d KiB, session pid %d %d KiB", main.pid, main.rssKB, sessions[0].pid, sessions[0].rssKB)

	// Sample the agent's RSS while the load runs.
	var peakMain, peakSession, samples int
	samplerCtx, stopSampler := context.WithCancel(ctx)
	samplerDone := make(chan struct{})
	go func() {
		defer close(samplerDone)
		for samplerCtx.Err() == nil {
			ps, err := pfAgentProcs(samplerCtx, ns, "target")
			if err != nil {
				continue
			}
			m, s := pfSplitAgentProcs(ps)
			samples++
			if m != nil {
				peakMain = max(peakMain, m.rssKB)
			}
			for _, p := range s {
				peakSession = max(peakSession, p.rssKB)
			}
		}
	}()

	const n = 200
	const bodySize = 256 << 10
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatalf("dial local connection %d: %v", i, err)
		}
		conns[i] = c
		defer c.Close()
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	release := make(chan struct{})
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := make([]byte, bodySize)
			_, _ = rand.Read(body)
			<-release
			_ = c.SetDeadline(time.Now().Add(90 * time.Second))
			head := fmt.Sprintf("POST /sink?conn=%d HTTP/1.1\r\nHost: target\r\nContent-Length: %d\r\nContent-Type: application/octet-stream\r\n\r\n", i, len(body))
			if _, err := c.Write(append([]byte(head), body...)); err != nil {
				errs <- fmt.Errorf("conn %d: write: %w", i, err)
				return
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				errs <- fmt.Errorf("conn %d: read response: %w", i, err)
				return
			}
			defer resp.Body.Close()
			var r pfReply
			if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
				errs <- fmt.Errorf("conn %d: decode: %w", i, err)
				return
			}
			if resp.StatusCode != 200 || r.Pod != "target" || r.Query != fmt.Sprintf("conn=%d", i) || r.BodyBytes != bodySize || r.BodySHA256 != pfSHA256(body) {
				errs <- fmt.Errorf("conn %d: status %d reply %+v, want pod target, query conn=%d, %d bytes with sha256 %s", i, resp.StatusCode, r, i, bodySize, pfSHA256(body))
			}
		}()
	}
	close(release)
	wg.Wait()
	el := time.Since(start)
	close(errs)
	failed := 0
	for err := range errs {
		failed++
		if failed <= 10 {
			t.Error(err)
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d concurrent requests failed", failed, n)
	}
	t.Logf("MEASURE %d concurrent connections x %d KiB POST through one session answered in %s", n, bodySize>>10, el.Round(time.Millisecond))

	// Every local connection is still open (keep-alive): so is its stream to peer-echo, dialed by the
	// one session process.
	socks, err := pfTCPSockets(ctx, ns, "target", "main")
	if err != nil {
		t.Fatal(err)
	}
	established := 0
	for _, s := range socks {
		if s.state == "01" && s.localPort == 8080 {
			established++
		}
	}
	if established < n {
		t.Errorf("peer-echo has %d established connections with the %d local connections open, want >= %d", established, n, n)
	}
	procs, err = pfAgentProcs(ctx, ns, "target")
	if err != nil {
		t.Fatal(err)
	}
	main, sessions = pfSplitAgentProcs(procs)
	if main == nil || len(sessions) != 1 {
		t.Fatalf("want still one agent main process and one session, got %+v", procs)
	}
	stopSampler()
	<-samplerDone
	peakMain, peakSession = max(peakMain, main.rssKB), max(peakSession, sessions[0].rssKB)
	t.Logf("MEASURE agent RSS with %d streams open: main %d KiB, session %d KiB; peak during the test (%d samples): main %d KiB, session %d KiB",
		established, main.rssKB, sessions[0].rssKB, samples, peakMain, peakSession)
	if names, _ := pfPodEphemeral(ctx, t, ns, "target"); len(names) != 1 {
		t.Errorf("ephemeral containers %v, want exactly one agent", names)
	}
}

var pfReusingRE = regexp.MustCompile(`^\[\s*[0-9.]+s\] reusing agent (trafficlab-[a-z0-9]+) in pod `)

// TestPortForwardReuse: a second session while the first runs, and a third after both ended (before
// the idle timeout), reuse the running agent: no ephemeral container is added. It also measures the
// time to the "Forwarding from" and "connected to agent" lines for a fresh pod and for reuse.
func TestPortForwardReuse(t *testing.T) {
	// Not parallel: the startup times are measured on a quiet node.
	pfRequirePlugin(t)
	ctx := testContext(t, 3*time.Minute)
	ns := newNamespace(t, "pf-reuse")
	createPodReady(ctx, t, ns, pfEchoPod(t, "target", nil, false))

	a := pfStart(t, "pf-a", ns, "pod/target", "--agent-idle-timeout=3m", ":8080")
	portA, fwdA := a.localPort("localhost:8080", 30*time.Second)
	agent, sessA, connA := a.connected(time.Minute)
	t.Logf("MEASURE fresh pod (agent image cached): Forwarding from after %s, connected to agent after %s", fwdA.Round(time.Millisecond), connA.Round(time.Millisecond))
	pfMustEcho(ctx, t, portA, "target")
	names, _ := pfPodEphemeral(ctx, t, ns, "target")
	if len(names) != 1 || names[0] != agent {
		t.Fatalf("ephemeral containers %v, want [%s]", names, agent)
	}

	b := pfStart(t, "pf-b", ns, "pod/target", "--agent-idle-timeout=3m", ":8080")
	portB, fwdB := b.localPort("localhost:8080", 30*time.Second)
	m, _, _ := b.waitLine(0, "stderr", pfReusingRE, time.Minute)
	agentB, sessB, connB := b.connected(time.Minute)
	t.Logf("MEASURE reuse (another session running): Forwarding from after %s, connected to agent after %s", fwdB.Round(time.Millisecond), connB.Round(time.Millisecond))
	if m[1] != agent || agentB != agent {
		t.Fatalf("second session used agent %s (reusing %s), want %s", agentB, m[1], agent)
	}
	if sessB == sessA {
		t.Errorf("both sessions have id %s", sessA)
	}
	pfMustEcho(ctx, t, portB, "target")
	pfMustEcho(ctx, t, portA, "target")
	if names, _ := pfPodEphemeral(ctx, t, ns, "target"); len(names) != 1 {
		t.Fatalf("ephemeral containers %v after the second session, want still [%s]", names, agent)
	}
	eventually(ctx, t, 10*time.Second, "two agent session processes", func(ctx context.Context) (bool, string) {
		ps, err := pfAgentProcs(ctx, ns, "target")
		if err != nil {
			return false, err.Error()
		}
		_, s := pfSplitAgentProcs(ps)
		return len(s) == 2, fmt.Sprintf("%+v", ps)
	})

	// Both end; the agent stays for its idle timeout and takes the next session.
	for _, p := range []*pfProc{a, b} {
		if err := p.stop(); err != nil {
			t.Errorf("%s after SIGINT: exit %v, want 0", p.name, err)
		}
	}
	eventually(ctx, t, 15*time.Second, "no session process left, agent main process alive", func(ctx context.Context) (bool, string) {
		ps, err := pfAgentProcs(ctx, ns, "target")
		if err != nil {
			return false, err.Error()
		}
		main, s := pfSplitAgentProcs(ps)
		return main != nil && len(s) == 0, fmt.Sprintf("%+v", ps)
	})

	c := pfStart(t, "pf-c", ns, "pod/target", "--agent-idle-timeout=3m", ":8080")
	portC, fwdC := c.localPort("localhost:8080", 30*time.Second)
	m, _, _ = c.waitLine(0, "stderr", pfReusingRE, time.Minute)
	agentC, _, connC := c.connected(time.Minute)
	t.Logf("MEASURE reuse (idle agent, no session): Forwarding from after %s, connected to agent after %s", fwdC.Round(time.Millisecond), connC.Round(time.Millisecond))
	if m[1] != agent || agentC != agent {
		t.Fatalf("third session used agent %s (reusing %s), want %s", agentC, m[1], agent)
	}
	pfMustEcho(ctx, t, portC, "target")
	if names, _ := pfPodEphemeral(ctx, t, ns, "target"); len(names) != 1 {
		t.Fatalf("ephemeral containers %v after the third session, want still [%s]", names, agent)
	}
}

// TestPortForwardKill: when the plugin vanishes, the agent's session process and its data port go,
// while the agent itself stays for the next session. SIGKILL closes the plugin's
// connections (the exec stream ends); SIGSTOP freezes it with its connections open, so only the
// heartbeat deadline can notice.
func TestPortForwardKill(t *testing.T) {
	pfRequirePlugin(t)
	ctx := testContext(t, 5*time.Minute)
	ns := newNamespace(t, "pf-kill")
	createPodReady(ctx, t, ns, pfEchoPod(t, "target", nil, false))
	var agentMain int
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGSTOP} {
		sigName := map[syscall.Signal]string{syscall.SIGKILL: "SIGKILL", syscall.SIGSTOP: "SIGSTOP"}[sig]
		// Without a reconnect grace the session ends with its tunnel (TestReconnect has the grace).
		pf := pfStart(t, "pf-"+strings.ToLower(sigName), ns, "pod/target", ":8080", "--reconnect-grace=0")
		port, _ := pf.localPort("localhost:8080", 30*time.Second)
		pf.connected(time.Minute)
		pfMustEcho(ctx, t, port, "target")

		procs, err := pfAgentProcs(ctx, ns, "target")
		if err != nil {
			t.Fatal(err)
		}
		main, sessions := pfSplitAgentProcs(procs)
		if main == nil || len(sessions) != 1 {
			t.Fatalf("want one agent main process and one session, got %+v", procs)
		}
		if agentMain != 0 && main.pid != agentMain {
			t.Fatalf("agent main process is pid %d, was %d: the agent did not survive the first plugin's death", main.pid, agentMain)
		}
		agentMain = main.pid
		listeners, err := pfAgentListeners(ctx, ns, "target", "main")
		if err != nil {
			t.Fatal(err)
		}
		if len(listeners) != 1 {
			t.Fatalf("agent listens on %v, want exactly one data port", listeners)
		}
		t.Logf("session process pid %d, data port 127.0.0.1:%d", sessions[0].pid, listeners[0])

		killed := time.Now()
		if err := pf.cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		if sig == syscall.SIGKILL {
			<-pf.done
		}
		// Nothing but the heartbeat deadline (5 s) ends a session whose plugin is frozen: the agent's
		// idle timeout does not run while a session lives, and the exec and port-forward streams
		// stay open for hours. A minute is far past the one and far short of the others; that the
		// deadline is kept to the millisecond is the fake-clock unit tests' (pkg/wire control_test).
		eventually(ctx, t, time.Minute, "no session process or data port after "+sigName, func(ctx context.Context) (bool, string) {
			ps, err := pfAgentProcs(ctx, ns, "target")
			if err != nil {
				return false, err.Error()
			}
			ls, err := pfAgentListeners(ctx, ns, "target", "main")
			if err != nil {
				return false, err.Error()
			}
			_, s := pfSplitAgentProcs(ps)
			return len(s) == 0 && len(ls) == 0, fmt.Sprintf("sessions %+v, listeners %v", s, ls)
		})
		t.Logf("MEASURE after %s of the plugin the session process and data port were gone by %s", sigName, time.Since(killed).Round(time.Millisecond))
		if sig == syscall.SIGSTOP {
			_ = pf.cmd.Process.Kill()
			<-pf.done
		}
		procs, err = pfAgentProcs(ctx, ns, "target")
		if err != nil {
			t.Fatal(err)
		}
		if m, _ := pfSplitAgentProcs(procs); m == nil || m.pid != main.pid {
			t.Errorf("agent main process pid %d is gone after the plugin's %s: %+v", main.pid, sigName, procs)
		}
	}
	if names, _ := pfPodEphemeral(ctx, t, ns, "target"); len(names) != 1 {
		t.Errorf("ephemeral containers %v, want one agent for both sessions", names)
	}
}

// TestPortForwardErrors: command-line and target mistakes end the command with one error line and no
// change to the pod; a failed dial from the pod closes only that local connection, says why on stderr,
// and the session goes on.
func TestPortForwardErrors(t *testing.T) {
	t.Parallel()
	pfRequirePlugin(t)
	ctx := testContext(t, 3*time.Minute)
	ns := newNamespace(t, "pf-err")
	createPodReady(ctx, t, ns, pfEchoPod(t, "target", map[string]string{"app": "target"}, false))
	_, rv := pfPodEphemeral(ctx, t, ns, "target")

	progressRE := regexp.MustCompile(`^\[\s*[0-9.]+s\] `)
	cases := []struct {
		name string
		args []string
		want []string // substrings of the error line
	}{
		{"pod not found", []string{"pod/nosuch", ":8080"}, []string{"nosuch", ns}},
		{"bad forward spec", []string{"pod/target", "80:x:y"}, []string{`invalid forward "80:x:y"`}},
		{"bad flag value", []string{"--data-path", "nope", "pod/target", ":8080"}, []string{"--data-path", `"nope"`}},
		{"selector matches nothing", []string{"-l", "app=nothing", ":8080"}, []string{"app=nothing"}},
		{"container not found", []string{"-c", "nosuch", "pod/target", ":8080"}, []string{"nosuch"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := pfStart(t, "pf", ns, tc.args...)
			err := p.waitExit(30 * time.Second)
			if err == nil {
				t.Fatalf("exit status 0, want an error; output:\n%s", p.output())
			}
			var errLines, other, early []string
			for _, l := range p.snapshot() {
				switch {
				case l.stream == "stderr" && strings.HasPrefix(l.text, "error: "):
					errLines = append(errLines, l.text)
				case l.stream == "stderr" && progressRE.MatchString(l.text):
				case l.stream == "stdout" && strings.HasPrefix(l.text, "Forwarding from "):
					// Scripts wait for this line: a command that fails must never print it.
					early = append(early, l.text)
				default:
					other = append(other, l.stream+": "+l.text)
				}
			}
			if len(early) > 0 {
				t.Errorf("a failing command announced %q before its error", early)
			}
			if len(errLines) != 1 || len(other) != 0 {
				t.Fatalf("want exactly one error line (besides progress), got errors %q and other lines %q", errLines, other)
			}
			for _, w := range tc.want {
				if !strings.Contains(errLines[0], w) {
					t.Errorf("error %q does not mention %q", errLines[0], w)
				}
			}
			names, now := pfPodEphemeral(ctx, t, ns, "target")
			if len(names) != 0 || now != rv {
				t.Fatalf("pod changed: ephemeral containers %v, resourceVersion %s (was %s)", names, now, rv)
			}
		})
	}

	t.Run("failed dials keep the session", func(t *testing.T) {
		pf := pfStart(t, "pf", ns, "pod/target", ":127.0.0.1:1", ":nosuch-svc:80", ":8080")
		refused, _ := pf.localPort("127.0.0.1:1", 30*time.Second)
		unknown, _ := pf.localPort("nosuch-svc:80", 30*time.Second)
		good, _ := pf.localPort("localhost:8080", 30*time.Second)
		pf.connected(time.Minute)
		for _, f := range []struct {
			port   int
			remote string
			why    *regexp.Regexp
		}{
			{refused, "127.0.0.1:1", regexp.MustCompile(`(?i)refused`)},
			// CoreDNS answers NXDOMAIN for the cluster search domains; the last, absolute query goes to
			// an upstream this offline cluster lacks, which Go reports as "server misbehaving".
			{unknown, "nosuch-svc:80", regexp.MustCompile(`lookup nosuch-svc\b.*(no such host|server misbehaving)`)},
		} {
			from := len(pf.snapshot())
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", f.port))
			if err != nil {
				t.Fatalf("dial local %d: %v", f.port, err)
			}
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			_, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
			n, err := c.Read(make([]byte, 1))
			c.Close()
			if n != 0 || err == nil || pfIsTimeout(err) {
				t.Errorf("local connection for %s: read %d bytes, err %v; want it closed", f.remote, n, err)
			}
			re := regexp.MustCompile(`^error: connection from 127\.0\.0\.1:\d+ to ` + regexp.QuoteMeta(f.remote) + `: `)
			_, i, _ := pf.waitLine(from, "stderr", re, 30*time.Second)
			line := pf.snapshot()[i].text
			if !f.why.MatchString(line) {
				t.Errorf("stderr line %q does not say why (want %s)", line, f.why)
			}
			pfMustEcho(ctx, t, good, "target")
		}
		select {
		case <-pf.done:
			t.Fatalf("the session ended after failed dials: %v", pf.waitErr)
		default:
		}
	})
}

func pfIsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// When the agent's session process dies under a running plugin, the plugin says so and exits non-zero
// instead of leaving local ports that lead nowhere.
func TestPortForwardAgentDeath(t *testing.T) {
	pfRequirePlugin(t)
	ctx := testContext(t, 2*time.Minute)
	// Without a reconnect grace: with one, the plugin would resume the session on a new relay.
	ns, pf, _ := pfTargetSession(ctx, t, "pf-agentdeath", "--reconnect-grace=0")
	procs, err := pfAgentProcs(ctx, ns, "target")
	if err != nil {
		t.Fatal(err)
	}
	_, sessions := pfSplitAgentProcs(procs)
	if len(sessions) != 1 {
		t.Fatalf("want one session process, got %+v", procs)
	}
	// The agent has a PID namespace of its own; this host, where the cluster runs, kills the session's
	// relay by its host PID.
	if err := syscall.Kill(sessions[0].pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill the agent session: %v", err)
	}
	err = pf.waitExit(15 * time.Second)
	if err == nil {
		t.Fatalf("plugin exited 0 after its agent died; output:\n%s", pf.output())
	}
	if !strings.Contains(pf.output(), "error: lost the agent") {
		t.Errorf("plugin did not say it lost the agent:\n%s", pf.output())
	}
}
