//go:build e2e

package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/internal/meshtest"
)

// meshRuleSets are the rule sets the meshed test world runs in: every sidecar form the redirect has
// to come after (TPROXY is refused, tested elsewhere).
var meshRuleSets = []meshtest.RuleSet{meshtest.IstioLegacy, meshtest.IstioNft, meshtest.IstioNftables, meshtest.LinkerdLegacy, meshtest.LinkerdNft}

// meshWorld is one rule set's meshed namespace: a test CA, a meshed echo server behind the Service
// "echo" and a meshed client, each with the test sidecar (test/peers/meshproxy) and the mesh's real
// capture rules (installed by the cluster's mesh CNI, test/cni/meshinit, from the namespace's name).
type meshWorld struct {
	rs             meshtest.RuleSet
	ns             string
	server, client *corev1.Pod
}

// The mesh's names for what the test sidecar plays.
func (w meshWorld) istio() bool { return w.rs.Mesh() == "Istio" }

func (w meshWorld) sidecarName() string {
	if w.istio() {
		return "istio-proxy"
	}
	return "linkerd-proxy"
}

// identity is the mesh identity of a service account in the world's namespace (as meshproxy
// writes it into the caller's header).
func (w meshWorld) identity(sa string) string {
	if w.istio() {
		return fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", w.ns, sa)
	}
	return fmt.Sprintf("%s.%s.serviceaccount.identity.linkerd.cluster.local", sa, w.ns)
}

// newMeshWorld makes the namespace tl-mesh-<rule set>-<suffix> with its CA Secret, service
// accounts, the echo server and its Service, and the client, and waits until both pods are Ready
// (the server's readiness goes through the sidecar: Istio's app probe via the status port, Linkerd's
// through the inbound capture).
func newMeshWorld(ctx context.Context, t *testing.T, rs meshtest.RuleSet) meshWorld {
	t.Helper()
	w := meshWorld{rs: rs}
	w.ns = createNamespace(t, metav1.ObjectMeta{Name: "tl-mesh-" + string(rs) + "-" + randSuffix()})
	cs := client(t)
	caCrt, caKey := meshCA(t)
	if _, err := cs.CoreV1().Secrets(w.ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "mesh-ca"},
		Data:       map[string][]byte{"ca.crt": caCrt, "ca.key": caKey},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create the mesh CA secret: %v", err)
	}
	for _, sa := range []string{"echo", "client"} {
		if _, err := cs.CoreV1().ServiceAccounts(w.ns).Create(ctx, &corev1.ServiceAccount{
			ObjectMeta: metav1.ObjectMeta{Name: sa}, AutomountServiceAccountToken: ptr.To(false),
		}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create service account %s: %v", sa, err)
		}
	}
	labels := map[string]string{"app": "echo"}
	echoService(ctx, t, w.ns, labels)
	// The server: peer-echo on 8080 (named http for the Service), readiness on /healthz.
	server := w.meshedPod(t, "echo", labels, "echo")
	app := &server.Spec.Containers[0]
	app.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
	app.ReadinessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}},
		PeriodSeconds: 1,
	}
	if w.istio() {
		// What Istio's injector does with the app's probes: the kubelet asks pilot-agent's status
		// port, which sends the original probe (listed in the sidecar's environment) to the app.
		orig, err := json.Marshal(map[string]any{"/app-health/main/readyz": map[string]any{
			"httpGet": map[string]any{"path": "/healthz", "port": 8080, "scheme": "HTTP"}, "timeoutSeconds": 1,
		}})
		if err != nil {
			t.Fatal(err)
		}
		app.ReadinessProbe.HTTPGet = &corev1.HTTPGetAction{Path: "/app-health/main/readyz", Port: intstr.FromInt32(15020)}
		side := &server.Spec.Containers[1]
		side.Env = append(side.Env, corev1.EnvVar{Name: "ISTIO_KUBE_APP_PROBERS", Value: string(orig)})
	}
	// The client: a request loop that waits for /tmp/start, calls the Service until /tmp/stop and
	// keeps its counts in /tmp/count ("<ok> <failed>"); wget has no working -T here (README).
	client := w.meshedPod(t, "client", map[string]string{"app": "client"}, "client", "sh", "-c", `
until [ -e /tmp/start ]; do sleep 0.1; done
ok=0; failed=0
while [ ! -e /tmp/stop ]; do
  if timeout 5 wget -q -O /dev/null http://echo/loop; then ok=$((ok+1)); else failed=$((failed+1)); fi
  echo "$ok $failed" > /tmp/count.new && mv /tmp/count.new /tmp/count
done
echo "$ok $failed" > /tmp/count.new && mv /tmp/count.new /tmp/count
touch /tmp/stopped
sleep 1000000`)
	if _, err := cs.CoreV1().Pods(w.ns).Create(ctx, client, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod client: %v", err)
	}
	w.server = createPodReady(ctx, t, w.ns, server)
	w.client = waitPodReady(ctx, t, w.ns, "client")
	return w
}

// meshedPod is a pod as the mesh's injector leaves it: the app container "main" (the peers image;
// cmd nil keeps peer-echo), the sidecar (test/peers/meshproxy, as the mesh's proxy UID, with the
// test CA, its readiness on the proxy's own health port), and the mesh's annotations. The pod
// has no init container: the rules come from the mesh CNI, as with istio-cni and linkerd-cni.
func (w meshWorld) meshedPod(t *testing.T, name string, labels map[string]string, sa string, cmd ...string) *corev1.Pod {
	t.Helper()
	pod := peerPod(t, name, labels, cmd...)
	pod.Spec.ServiceAccountName = sa
	pod.Spec.AutomountServiceAccountToken = ptr.To(false)
	meshName, uid, ready := "linkerd", int64(meshtest.LinkerdProxyUID), intstr.FromInt32(4191)
	readyPath := "/ready"
	pod.Annotations = map[string]string{
		"linkerd.io/proxy-version": "stable-2.14.10",
		"linkerd.io/inject":        "enabled",
	}
	if w.istio() {
		meshName, uid, ready, readyPath = "istio", meshtest.IstioProxyUID, intstr.FromInt32(15021), "/healthz/ready"
		pod.Annotations = map[string]string{
			"sidecar.istio.io/status":                 `{"initContainers":null,"containers":["istio-proxy"],"volumes":["mesh-ca"],"imagePullSecrets":null,"revision":"default"}`,
			"kubectl.kubernetes.io/default-container": "main",
			"sidecar.istio.io/interceptionMode":       "REDIRECT",
		}
	}
	fieldEnv := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{
		Name:            w.sidecarName(),
		Image:           peersImage(t),
		ImagePullPolicy: corev1.PullIfNotPresent,
		Command:         []string{"/usr/local/bin/peer-meshproxy", "-mesh", meshName, "-ca", "/etc/meshca"},
		Env: []corev1.EnvVar{
			fieldEnv("POD_IP", "status.podIP"), fieldEnv("POD_NAMESPACE", "metadata.namespace"),
			fieldEnv("POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
		},
		SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To(uid), RunAsGroup: ptr.To(uid), RunAsNonRoot: ptr.To(true)},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: readyPath, Port: ready}},
			PeriodSeconds: 1,
		},
		VolumeMounts: []corev1.VolumeMount{{Name: "mesh-ca", MountPath: "/etc/meshca", ReadOnly: true}},
	})
	pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: "mesh-ca", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "mesh-ca"}}})
	return pod
}

// waitPodReady waits until an existing pod is Ready.
func waitPodReady(ctx context.Context, t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	var got *corev1.Pod
	eventually(ctx, t, 2*time.Minute, "pod "+name+" Ready", func(ctx context.Context) (bool, string) {
		p, err := client(t).CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		got = p
		return podReady(p), fmt.Sprintf("phase %s, containers %+v", p.Status.Phase, p.Status.ContainerStatuses)
	})
	return got
}

// meshCA is a fresh CA for one world's sidecars (PEM certificate and PKCS#8 key, as meshproxy reads them).
func meshCA(t *testing.T) (crt, key []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "trafficlab e2e mesh CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

// call sends one request from the client's app container to the Service, through the client's
// sidecar, and returns what the server's app saw.
func (w meshWorld) call(ctx context.Context, t *testing.T, path string) echoReply {
	t.Helper()
	out, err := pfPodSh(ctx, w.ns, "client", "main", "timeout 10 wget -q -O - http://echo"+path)
	if err != nil {
		t.Fatalf("call the echo Service from the client: %v (%s)", err, out)
	}
	var r echoReply
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("echo answer %q: %v", out, err)
	}
	return r
}

// beside sends n requests at once from the client's app container to the Service, beside the
// client's loop, and returns the replies that came back. The server's sidecar keeps the pooled
// connection to the app that it had before a steal or redirect mirror: the loop keeps it busy, so
// it is never idle and never reset, and a lone request may find it free between two of the loop's
// and go to the app again. Requests that find it taken make the sidecar open more, which the
// redirect takes; several at once make that sure rather than a matter of timing (a lone request
// once missed for 40 s on a loaded machine).
func (w meshWorld) beside(ctx context.Context, n int, path string, headers ...string) ([]echoReply, string, error) {
	var h strings.Builder
	for _, x := range headers {
		fmt.Fprintf(&h, " --header '%s'", x)
	}
	script := fmt.Sprintf("for i in %s; do timeout 10 wget -q -O -%s http://echo%s & done; wait",
		strings.TrimSpace(strings.Repeat("x ", n)), h.String(), path)
	out, err := pfPodSh(ctx, w.ns, "client", "main", script)
	// The replies are concatenated JSON objects, each written whole (far below a pipe's atomic size).
	var replies []echoReply
	for dec := json.NewDecoder(strings.NewReader(out)); ; {
		var r echoReply
		if dec.Decode(&r) != nil {
			break
		}
		replies = append(replies, r)
	}
	return replies, out, err
}

// checkMeshed asserts that a request the server's app saw came through the mesh: from the server's
// sidecar (127.0.0.6 under Istio, the pod's own IP under Linkerd), with the client's identity that
// the server's sidecar took from the client sidecar's mTLS certificate.
func (w meshWorld) checkMeshed(t *testing.T, r echoReply) {
	t.Helper()
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		t.Fatalf("remote address %q: %v", r.RemoteAddr, err)
	}
	wantFrom := w.server.Status.PodIP
	if w.istio() {
		wantFrom = "127.0.0.6"
	}
	if host != wantFrom {
		t.Errorf("the app saw the request from %s, want %s (the %s sidecar's upstream source)", host, wantFrom, w.rs.Mesh())
	}
	if w.istio() {
		xfcc := strings.Join(r.Headers["X-Forwarded-Client-Cert"], ",")
		if !strings.HasPrefix(xfcc, "By="+w.identity("echo")+";") || !strings.HasSuffix(xfcc, ";URI="+w.identity("client")) {
			t.Errorf("X-Forwarded-Client-Cert %q, want By=%s;...;URI=%s (the client sidecar's mTLS certificate)", xfcc, w.identity("echo"), w.identity("client"))
		}
		return
	}
	if got := strings.Join(r.Headers["L5d-Client-Id"], ","); got != w.identity("client") {
		t.Errorf("l5d-client-id %q, want %q (the client sidecar's mTLS certificate)", got, w.identity("client"))
	}
}

// checkRules asserts that the mesh CNI installed the rule set in the server pod's netns in its
// form: the chains of istio-iptables or proxy-init through iptables-legacy or iptables-nft, or
// Istio's native nftables table.
func (w meshWorld) checkRules(ctx context.Context, t *testing.T) {
	t.Helper()
	pid := podNetns(t, w.server.Status.PodIP)
	var argv []string
	want := "ISTIO_INBOUND"
	switch w.rs.Source() {
	case "iptables-legacy":
		argv = []string{"iptables-legacy-save", "-t", "nat"}
	case "iptables-nft":
		argv = []string{"iptables-nft-save", "-t", "nat"}
	default:
		argv, want = []string{"nft", "list", "table", "inet", "istio-proxy-nat"}, "istio-inbound"
	}
	if !w.istio() {
		want = "PROXY_INIT_REDIRECT"
	}
	out, err := exec.CommandContext(ctx, "nsenter", append([]string{"-t", pid, "-n", "--"}, argv...)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), want) {
		t.Fatalf("%s in the server's netns: %v, want %s in:\n%s", strings.Join(argv, " "), err, want, out)
	}
}

// wireWatch reads, from the host, every TCP segment between the client and the server pods (on
// every interface: the server's veth carries both directions) while the loop runs.
type wireWatch struct {
	done chan struct{}
	err  error
	// tlsRecords counts payloads that start as a TLS record (handshake or application data);
	// plaintext those that carry the loop's request or peer-echo's answer in clear (read while it
	// runs, per session, hence atomic).
	payloads, tlsRecords int
	plaintext            atomic.Int64
	sample               string
}

func (w meshWorld) watchWire(ctx context.Context, t *testing.T) (*wireWatch, context.CancelFunc) {
	t.Helper()
	expr, err := capture.ParseExpr(fmt.Sprintf("tcp and host %s and host %s", w.client.Status.PodIP, w.server.Status.PodIP))
	if err != nil {
		t.Fatal(err)
	}
	c, err := capture.Open(capture.Options{Expr: &expr})
	if err != nil {
		t.Fatalf("capture on the host: %v", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	ww := &wireWatch{done: make(chan struct{})}
	go func() {
		defer close(ww.done)
		ww.err = c.Run(ctx, func(data []byte, _ gopacket.CaptureInfo) error {
			p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.NoCopy)
			tcp, ok := p.TransportLayer().(*layers.TCP)
			if !ok || len(tcp.Payload) == 0 {
				return nil
			}
			ww.payloads++
			b := tcp.Payload
			if len(b) >= 3 && (b[0] == 0x16 || b[0] == 0x17) && b[1] == 0x03 {
				ww.tlsRecords++
			}
			if strings.Contains(string(b), "GET /loop") || strings.Contains(string(b), "remoteAddr") {
				if ww.plaintext.Add(1) == 1 {
					ww.sample = fmt.Sprintf("%s:%d -> %s:%d %q", p.NetworkLayer().NetworkFlow().Src(), tcp.SrcPort, p.NetworkLayer().NetworkFlow().Dst(), tcp.DstPort, b[:min(len(b), 80)])
				}
			}
			return nil
		})
	}()
	return ww, cancel
}

// loop is the client's request loop (started by the test, counted by the client).
func (w meshWorld) startLoop(ctx context.Context, t *testing.T) {
	t.Helper()
	if out, err := pfPodSh(ctx, w.ns, "client", "main", "touch /tmp/start"); err != nil {
		t.Fatalf("start the client's loop: %v (%s)", err, out)
	}
}

var countLine = regexp.MustCompile(`^(\d+) (\d+)$`)

// loopCount reads the client loop's counts.
func (w meshWorld) loopCount(ctx context.Context) (ok, failed int, err error) {
	out, err := pfPodSh(ctx, w.ns, "client", "main", "cat /tmp/count 2>/dev/null || echo 0 0")
	if err != nil {
		return 0, 0, err
	}
	m := countLine.FindStringSubmatch(strings.TrimSpace(out))
	if m == nil {
		return 0, 0, fmt.Errorf("count %q", out)
	}
	ok, _ = strconv.Atoi(m[1])
	failed, _ = strconv.Atoi(m[2])
	return ok, failed, nil
}

// waitLoop waits until the loop has made at least n more requests than from, and returns how many
// it has made.
func (w meshWorld) waitLoop(ctx context.Context, t *testing.T, from, n int) int {
	t.Helper()
	var total int
	eventually(ctx, t, 2*time.Minute, fmt.Sprintf("%d more requests of the client's loop", n), func(ctx context.Context) (bool, string) {
		ok, failed, err := w.loopCount(ctx)
		if err != nil {
			return false, err.Error()
		}
		total = ok + failed
		return total >= from+n, fmt.Sprintf("%d ok, %d failed", ok, failed)
	})
	return total
}

// stopLoop stops the loop and returns its final counts.
func (w meshWorld) stopLoop(ctx context.Context, t *testing.T) (ok, failed int) {
	t.Helper()
	if out, err := pfPodSh(ctx, w.ns, "client", "main", "touch /tmp/stop"); err != nil {
		t.Fatalf("stop the client's loop: %v (%s)", err, out)
	}
	eventually(ctx, t, 30*time.Second, "the client's loop stopped", func(ctx context.Context) (bool, string) {
		_, err := pfPodSh(ctx, w.ns, "client", "main", "test -e /tmp/stopped")
		return err == nil, fmt.Sprint(err)
	})
	ok, failed, err := w.loopCount(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ok, failed
}

// sidecarLog is a container's log.
func (w meshWorld) sidecarLog(ctx context.Context, t *testing.T, pod string) string {
	t.Helper()
	b, err := client(t).CoreV1().Pods(w.ns).GetLogs(pod, &corev1.PodLogOptions{Container: w.sidecarName()}).DoRaw(ctx)
	if err != nil {
		t.Fatalf("log of %s/%s: %v", pod, w.sidecarName(), err)
	}
	return string(b)
}

// TestMeshBaseline is the meshed test world without trafficlab, for every rule set: a meshed
// client calls a meshed server's Service through both sidecars (mTLS between them, the server's
// app reached from the server's sidecar), and a steady request loop sees no failure.
func TestMeshBaseline(t *testing.T) {
	for _, rs := range meshRuleSets {
		t.Run(string(rs), func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t, 5*time.Minute)
			w := newMeshWorld(ctx, t, rs)
			w.checkRules(ctx, t)
			w.checkMeshed(t, w.call(ctx, t, "/first"))
			// The client's sidecar dialed the server with mTLS and saw the server's identity.
			if log := w.sidecarLog(ctx, t, "client"); !strings.Contains(log, ": mTLS, peer "+w.identity("echo")) {
				t.Errorf("the client's sidecar did not report mTLS to %s:\n%s", w.identity("echo"), log)
			}
			ww, stopWatch := w.watchWire(ctx, t)
			w.startLoop(ctx, t)
			w.waitLoop(ctx, t, 0, 50)
			ok, failed := w.stopLoop(ctx, t)
			stopWatch()
			<-ww.done
			t.Logf("%s: the client's loop: %d ok, %d failed; between the pods: %d segments with data, %d TLS records, %d in plaintext",
				rs, ok, failed, ww.payloads, ww.tlsRecords, ww.plaintext.Load())
			if failed != 0 {
				t.Errorf("%d of %d requests of the client's loop failed, want 0", failed, ok+failed)
			}
			if ww.err != nil || ww.tlsRecords < ok || ww.plaintext.Load() != 0 {
				var fallbacks []string
				for _, l := range strings.Split(w.sidecarLog(ctx, t, "client"), "\n") {
					if strings.Contains(l, "plaintext") || strings.Contains(l, "handshake") {
						fallbacks = append(fallbacks, l)
					}
				}
				t.Errorf("between the pods: capture error %v, %d TLS records for %d requests, %d plaintext segments (e.g. %q): want mTLS only; the client sidecar's log on it:\n%s",
					ww.err, ww.tlsRecords, ok, ww.plaintext.Load(), ww.sample, strings.Join(fallbacks, "\n"))
			}
		})
	}
}

// meshSession is one trafficlab verb run on the meshed server while the client's loop runs.
type meshSession struct {
	name string
	verb string
	args []string
	// started is the plugin's line that says the session is in place.
	started *regexp.Regexp
	// check runs while the session is in place (the loop going on), after the first requests.
	check func(ctx context.Context, t *testing.T, p *pfProc)
}

// TestMeshSessions runs each verb that meets the mesh on the meshed server, for every rule set,
// while the meshed client's loop calls it through both sidecars: every request started after the
// session is in place and around its end succeeds (the loop counts them: 0 failed), the bytes
// between the pods stay mTLS, and each verb does its part on the sidecar's plaintext: a filtered
// steal takes the matched requests (the others reach the app through the sidecar as before), a
// whole-port steal takes them all, a redirect or sniff mirror copies them, a dump shows them.
func TestMeshSessions(t *testing.T) {
	for _, rs := range meshRuleSets {
		t.Run(string(rs), func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t, 10*time.Minute)
			w := newMeshWorld(ctx, t, rs)
			local := startLocalServer(t)
			port := fmt.Sprintf("8080:%d", local.Port)
			localPaths := func() map[string]int {
				got := map[string]int{}
				for _, r := range local.requests() {
					got[r.Path]++
				}
				return got
			}
			waitLocal := func(t *testing.T, what, path string, atLeast int) {
				t.Helper()
				eventually(ctx, t, 30*time.Second, what, func(context.Context) (bool, string) {
					got := localPaths()
					return got[path] >= atLeast, fmt.Sprintf("local server has %v", got)
				})
			}
			sessions := []meshSession{
				// No --flush-connections: the loop keeps the sidecar's pooled connection to the app
				// busy, so it stays with the app (0 failures), and the matched request, sent beside
				// the loop, makes the sidecar open another connection, which the redirect takes.
				{name: "filtered steal", verb: "steal", args: []string{"pod/echo", "--port", port, "--header-filter", "^X-Steal: yes$"}, started: stealingRE,
					check: func(ctx context.Context, t *testing.T, p *pfProc) {
						eventually(ctx, t, 40*time.Second, "a matched request from the meshed client reaches the local process", func(ctx context.Context) (bool, string) {
							replies, out, err := w.beside(ctx, 4, "/stolen", "X-Steal: yes")
							for _, r := range replies {
								if r.Pod == "laptop" && r.Path == "/stolen" {
									return true, ""
								}
							}
							return false, fmt.Sprintf("%q, %v", out, err)
						})
						// The others still reach the app through the server's sidecar, with the
						// client's identity.
						r2 := w.call(ctx, t, "/not-stolen")
						if r2.Pod != "echo" {
							t.Errorf("unmatched request answered by %q, want the app", r2.Pod)
						}
						w.checkMeshed(t, r2)
						if n := localPaths()["/loop"]; n != 0 {
							t.Errorf("the local process got %d of the loop's unmatched requests", n)
						}
					}},
				// --flush-connections resets the loop's busy pooled connection, so that the loop's
				// next requests come through the redirect: its in-flight request may fail, counted.
				{name: "whole-port steal", verb: "steal", args: []string{"pod/echo", "--port", port, "--flush-connections"}, started: stealingRE,
					check: func(ctx context.Context, t *testing.T, p *pfProc) {
						before := localPaths()["/loop"]
						waitLocal(t, "the local process takes the loop's requests", "/loop", before+10)
					}},
				{name: "redirect mirror", verb: "mirror", args: []string{"pod/echo", "--port", port, "--mode", "redirect"}, started: mirroringRE,
					check: func(ctx context.Context, t *testing.T, p *pfProc) {
						// A redirect mirror has no --flush-connections: the sidecar's pooled
						// connection stays with the app while the loop keeps it busy. Requests
						// beside the loop make the sidecar open another, which the redirect takes.
						eventually(ctx, t, 40*time.Second, "a request beside the loop is copied to the local process", func(ctx context.Context) (bool, string) {
							replies, out, err := w.beside(ctx, 4, "/mirrored")
							if err != nil || len(replies) == 0 {
								t.Fatalf("requests beside the loop: %v (%q)", err, out)
							}
							for _, r := range replies {
								if r.Pod != "echo" {
									t.Errorf("a mirrored request was answered by %q, want the app", r.Pod)
								}
								w.checkMeshed(t, r)
							}
							got := localPaths()
							return got["/mirrored"] > 0, fmt.Sprintf("local server has %v", got)
						})
					}},
				{name: "sniff mirror", verb: "mirror", args: []string{"pod/echo", "--port", port}, started: mirroringRE,
					check: func(ctx context.Context, t *testing.T, p *pfProc) {
						before := localPaths()["/loop"]
						waitLocal(t, "the local process gets copies of the loop's requests (read on lo, in plaintext)", "/loop", before+10)
					}},
				{name: "dump", verb: "dump", args: []string{"pod/echo", "--port", "8080", "-o", "json"}, started: regexp.MustCompile(`capturing ports 8080 in pod`),
					check: func(ctx context.Context, t *testing.T, p *pfProc) {
						p.waitLine(0, "stdout", regexp.MustCompile(`"method":"GET","path":"/loop","status":200`), 30*time.Second)
					}},
			}
			var totalFailed, totalResets int
			ww, stopWatch := w.watchWire(ctx, t)
			w.startLoop(ctx, t)
			done := w.waitLoop(ctx, t, 0, 20)
			for _, s := range sessions {
				t.Run(s.name, func(t *testing.T) {
					_, failed0, _ := w.loopCount(ctx)
					plain0 := ww.plaintext.Load()
					p := pluginStart(t, s.name, s.verb, w.ns, s.args...)
					p.waitLine(0, "stderr", s.started, 3*time.Minute)
					done = w.waitLoop(ctx, t, done, 20)
					s.check(ctx, t, p)
					done = w.waitLoop(ctx, t, done, 20)
					if err := p.stop(); err != nil {
						t.Errorf("%s ended with %v:\n%s", s.name, err, p.output())
					}
					// Requests around the session's end and after it.
					done = w.waitLoop(ctx, t, done, 30)
					_, failed, err := w.loopCount(ctx)
					if err != nil {
						t.Fatal(err)
					}
					// --flush-connections resets the busy connections it finds, and says how many:
					// their in-flight requests may fail, nothing else may.
					resets := 0
					for _, l := range p.snapshot() {
						if m := resetRE.FindStringSubmatch(l.text); m != nil {
							n, _ := strconv.Atoi(m[1])
							resets += n
						}
					}
					t.Logf("%s %s: %d of the loop's requests failed while it ran and after its end; %d busy connections reset; %d plaintext segments between the pods",
						rs, s.name, failed-failed0, resets, ww.plaintext.Load()-plain0)
					if failed-failed0 > resets {
						t.Errorf("%d of the loop's requests failed during %s or around its end, want at most the %d reset busy connections", failed-failed0, s.name, resets)
					}
					totalFailed, totalResets = totalFailed+failed-failed0, totalResets+resets
				})
			}
			ok, failed := w.stopLoop(ctx, t)
			stopWatch()
			<-ww.done
			t.Logf("%s: the client's loop: %d ok, %d failed; between the pods: %d segments with data, %d TLS records, %d in plaintext",
				rs, ok, failed, ww.payloads, ww.tlsRecords, ww.plaintext.Load())
			if failed > totalResets {
				t.Errorf("%d of %d requests of the client's loop failed, want at most the %d busy connections --flush-connections reset", failed, ok+failed, totalResets)
			}
			if ww.err != nil || ww.tlsRecords < ok || ww.plaintext.Load() != 0 {
				var fallbacks []string
				for _, l := range strings.Split(w.sidecarLog(ctx, t, "client"), "\n") {
					if strings.Contains(l, "plaintext") || strings.Contains(l, "handshake") {
						fallbacks = append(fallbacks, l)
					}
				}
				t.Errorf("between the pods: capture error %v, %d TLS records for %d requests, %d plaintext segments (e.g. %q): want mTLS only; the client sidecar's log on it:\n%s",
					ww.err, ww.tlsRecords, ok, ww.plaintext.Load(), ww.sample, strings.Join(fallbacks, "\n"))
			}
		})
	}
}

// resetRE is the steal's count of the busy connections --flush-connections reset.
var resetRE = regexp.MustCompile(`reset (\d+) busy connections to port 8080 \(--flush-connections\)`)
