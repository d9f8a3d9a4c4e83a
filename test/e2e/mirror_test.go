//go:build e2e

package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

var mirroringRE = regexp.MustCompile(`mirroring port 8080 -> `)

// TestMirrorSniff: requests through the Service are answered by the pod while the local server gets
// a copy of each, bodies equal by sha256, one line per mirrored request; the agent adds no capability
// (sniffing needs only the runtime's default NET_RAW) in a namespace at PodSecurity baseline.
func TestMirrorSniff(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	st := newStealTarget(ctx, t, "mirror")
	if _, _, err := kubectl(ctx, t, "", "label", "namespace", st.ns, "pod-security.kubernetes.io/enforce=baseline"); err != nil {
		t.Fatal(err)
	}
	p := pluginStart(t, "mirror", "mirror", st.ns, "svc/echo", "--port", fmt.Sprintf("80:%d", st.local.Port))
	p.waitLine(0, "stderr", mirroringRE, 3*time.Minute)

	// 1 MiB in one burst: the TPACKET ring takes it whole (the default socket buffer did not).
	body := make([]byte, 1<<20)
	if _, err := rand.Read(body); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	want := map[string]string{"/mirror/1": hex.EncodeToString(sha256.New().Sum(nil)), "/mirror/2": hex.EncodeToString(sum[:]), "/mirror/3": hex.EncodeToString(sha256.New().Sum(nil))}
	for _, path := range []string{"/mirror/1", "/mirror/2", "/mirror/3"} {
		var b []byte
		if path == "/mirror/2" {
			b = body
		}
		r, err := getJSON(ctx, st.svcURL(path), nil, b)
		if err != nil || r.Pod != "target" || r.BodySHA256 != want[path] {
			t.Fatalf("%s through the Service: %+v, %v; want the pod's answer with body sha256 %s", path, r, err, want[path])
		}
	}
	eventually(ctx, t, 30*time.Second, "the local server got a copy of every request", func(context.Context) (bool, string) {
		got := map[string]string{}
		for _, r := range st.local.requests() {
			got[r.Path] = r.BodySHA256
		}
		for path, sha := range want {
			if got[path] != sha {
				return false, fmt.Sprintf("local server has %v", got)
			}
		}
		return true, ""
	})
	p.waitLine(0, "stdout", regexp.MustCompile(`^\[pod/target\] \d\d:\d\d:\d\d \S+ POST /mirror/2 -> 200, \d+ B, `), 30*time.Second)

	pod, err := client(t).CoreV1().Pods(st.ns).Get(ctx, "target", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ec := range pod.Spec.EphemeralContainers {
		if sc := ec.SecurityContext; sc == nil || sc.Capabilities == nil || len(sc.Capabilities.Add) != 0 {
			t.Errorf("agent %s adds capabilities: %+v", ec.Name, sc)
		}
	}
	if err := p.stop(); err != nil {
		t.Errorf("mirror exited with %v", err)
	}
	p.waitLine(0, "stderr", regexp.MustCompile(`^\d+ requests? seen on \d+ connections?, [3-9]\d* mirrored, [3-9]\d* answered.*kernel dropped 0 of \d+ packets$`), 10*time.Second)
}

// TestMirrorToServicePercent: the copy goes to another Service of the cluster, dialed from the pod,
// for half of the requests, spread evenly: 100 requests, 50 copies, each answered by the other pod.
func TestMirrorToServicePercent(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	st := newStealTarget(ctx, t, "mirrorto")
	canary := map[string]string{"app": "canary"}
	createPodReady(ctx, t, st.ns, pfEchoPod(t, "canary", canary, false))
	canaryService(ctx, t, st.ns, canary)
	p := pluginStart(t, "mirror-to", "mirror", st.ns, "pod/target", "--port", "8080", "--to", "svc/canary:80", "--percent", "50", "--diff", "-o", "json")
	p.waitLine(0, "stderr", regexp.MustCompile(`mirroring port 8080 -> svc/canary:80 \(from the pod\) \(sniffing, 50% of requests`), 3*time.Minute)

	hc := &http.Client{}
	defer hc.CloseIdleConnections()
	for i := range 100 {
		resp, err := hc.Get(st.svcURL(fmt.Sprintf("/percent/%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		var r pfReply
		err = json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if err != nil || r.Pod != "target" {
			t.Fatalf("request %d: %+v, %v; want the target's answer", i, r, err)
		}
	}
	countCanary := func() int {
		n := 0
		for _, line := range stdoutLines(p) {
			var ev wire.MirrorEvent
			if json.Unmarshal([]byte(line), &ev) != nil || ev.Kind != wire.EventMirrored {
				continue
			}
			// The copy's answer names the canary where the pod's names the target.
			if ev.Status == 200 && len(ev.Differences) == 1 && strings.Contains(ev.Differences[0], `"canary`) {
				n++
			}
		}
		return n
	}
	eventually(ctx, t, 30*time.Second, "50 copies answered by the canary", func(context.Context) (bool, string) {
		n := countCanary()
		return n == 50, fmt.Sprintf("%d so far", n)
	})
	// With -o json the agent's counts so far arrive every second, before any interrupt.
	eventually(ctx, t, 10*time.Second, "partial counts of 50 mirrored", func(context.Context) (bool, string) {
		last := "none"
		for _, line := range stdoutLines(p) {
			var ev wire.MirrorEvent
			if json.Unmarshal([]byte(line), &ev) != nil || ev.Kind != wire.EventStats || ev.Stats == nil || !ev.Stats.Partial {
				continue
			}
			if ev.Stats.Mirrored == 50 && ev.Stats.SampledOut == 50 {
				return true, ""
			}
			last = line
		}
		return false, "last: " + last
	})
	if err := p.stop(); err != nil {
		t.Errorf("mirror exited with %v", err)
	}
	p.waitLine(0, "stderr", regexp.MustCompile(`^\d+ requests? seen on \d+ connections?, 50 mirrored, 50 answered, 50 differed; not mirrored or unanswered: (\d+ kubelet probes, )?50 sampled out`), 10*time.Second)
	if n := countCanary(); n != 50 {
		t.Errorf("%d copies answered by the canary, want 50", n)
	}
}

// TestMirrorRedirectDiff: in redirect mode (NET_ADMIN) the agent relays every request to the pod and
// --diff compares the local server's answers with the pod's: a local server that answers like the
// pod except for one planted request is reported for that one only, over keep-alive HTTP/1.1 and h2c.
func TestMirrorRedirectDiff(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	st := newStealTarget(ctx, t, "mirrordiff")
	local := startBytesServer(t, "/bytes?n=3000&seed=7")
	p := pluginStart(t, "mirror-diff", "mirror", st.ns, "svc/echo", "--port", fmt.Sprintf("80:%d", local), "--mode", "redirect", "--diff")
	p.waitLine(0, "stderr", regexp.MustCompile(`mirroring port 8080 -> 127\.0\.0\.1:\d+ \(redirect;`), 3*time.Minute)

	var h1, h2 http.Protocols
	h1.SetHTTP1(true)
	h2.SetUnencryptedHTTP2(true)
	sent := 0
	for _, protos := range []*http.Protocols{&h1, &h2} {
		hc := &http.Client{Transport: &http.Transport{Protocols: protos}}
		for seed := 1; seed <= 10; seed++ {
			resp, err := hc.Get(st.svcURL(fmt.Sprintf("/bytes?n=3000&seed=%d", seed)))
			if err != nil {
				t.Fatal(err)
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || n != 3000 || resp.Header.Get("X-Pod") != "target" {
				t.Fatalf("seed %d: %d, %d B from %q; want the pod's 3000 bytes", seed, resp.StatusCode, n, resp.Header.Get("X-Pod"))
			}
			sent++
		}
		hc.CloseIdleConnections()
	}
	planted := regexp.MustCompile(`^\[pod/\S+\] \d\d:\d\d:\d\d \S+ GET /bytes\?n=3000&seed=7 -> 200, 3000 B, \S+; differs: body differs from byte 1000 \(3000 B, pod 3000 B\)`)
	p.waitLine(0, "stdout", planted, 30*time.Second)
	if err := p.stop(); err != nil {
		t.Errorf("mirror exited with %v", err)
	}
	p.waitLine(0, "stderr", regexp.MustCompile(fmt.Sprintf(`^\d+ requests? seen on \d+ connections?, %d mirrored, %d answered, 2 differed`, sent, sent)), 10*time.Second)
	var lines []string
	for _, l := range stdoutLines(p) {
		if l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) != 2 {
		t.Errorf("--diff printed %d lines, want the planted request twice (HTTP/1.1 and h2c):\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for _, l := range lines {
		if !planted.MatchString(l) {
			t.Errorf("unexpected --diff line %q", l)
		}
	}
}

// startBytesServer answers /bytes like the echo peer (same deterministic bytes, same content type),
// except that the answer to plant has one byte changed.
func startBytesServer(t *testing.T, plant string) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, ReadHeaderTimeout: 30 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		seed, _ := strconv.ParseUint(r.URL.Query().Get("seed"), 10, 64)
		var key [32]byte
		for i := 0; i < 8; i++ {
			key[i] = byte(seed >> (8 * i))
		}
		b := make([]byte, n)
		_, _ = mrand.NewChaCha8(key).Read(b)
		if r.URL.RequestURI() == plant {
			b[1000] ^= 0xff
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(b)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

func canaryService(ctx context.Context, t *testing.T, ns string, labels map[string]string) {
	t.Helper()
	_, err := client(t).CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "canary"},
		Spec: corev1.ServiceSpec{
			Selector: labels,
			Ports:    []corev1.ServicePort{{Name: "web", Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
}

func stdoutLines(p *pfProc) []string {
	var out []string
	for _, l := range p.snapshot() {
		if l.stream == "stdout" {
			out = append(out, l.text)
		}
	}
	return out
}
