//go:build e2e

package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// probeUA is the readiness probe's own User-Agent (httpHeaders): the kubelet then sends no
// kube-probe/ at all, so only the probe's source, path and headers tell it.
const probeUA = "e2e-checker/1"

// localTLS stands in for the developer's HTTPS process: it counts the connections it gets (a stolen
// probe is one) and remembers every path it was asked for.
type localTLS struct {
	srv   *httptest.Server
	mu    sync.Mutex
	conns int
	paths []string
}

func startLocalTLS(t *testing.T) *localTLS {
	t.Helper()
	l := &localTLS{}
	l.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		l.paths = append(l.paths, r.URL.Path)
		l.mu.Unlock()
		http.Error(w, "the laptop does not answer probes", http.StatusInternalServerError)
	}))
	l.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			l.mu.Lock()
			l.conns++
			l.mu.Unlock()
		}
	}
	l.srv.StartTLS()
	t.Cleanup(l.srv.Close)
	return l
}

func (l *localTLS) port() int { return l.srv.Listener.Addr().(*net.TCPAddr).Port }

func (l *localTLS) seen() (conns int, paths []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conns, slices.Clone(l.paths)
}

// appProbeLines counts the probe requests the app logged (peer-echo logs each /healthz): those with
// the readiness probe's own User-Agent over HTTP, and the liveness probe's over HTTPS.
func appProbeLines(ctx context.Context, t *testing.T, ns string) (own, https int, err error) {
	t.Helper()
	out, err := client(t).CoreV1().Pods(ns).GetLogs("target", &corev1.PodLogOptions{Container: "main"}).DoRaw(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("logs of target: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.Contains(line, "healthz http from ") && strings.Contains(line, fmt.Sprintf("user-agent %q", probeUA)):
			own++
		case strings.Contains(line, "healthz https from ") && strings.Contains(line, `user-agent "kube-probe/`):
			https++
		}
	}
	return own, https, nil
}

var passedByAddressRE = regexp.MustCompile(`port 8443: connections from the node's addresses \(([^)]*)\) go to the app, not stolen, for the https liveness probe of container "main" .*other clients from those addresses to port 8443 are not stolen either`)

// TestStealProbesWithOwnUserAgentAndHTTPS: under a whole-port steal of both ports, a readiness probe
// that sends its own User-Agent (httpHeaders) and an HTTPS liveness probe, each failing the pod on
// its first miss, keep reaching the app: the pod stays Ready and is never restarted, the app logs
// them, the local processes see none. The plugin says at start that connections from the node's
// addresses to the HTTPS port stay with the app; from the node they do, while another pod's
// connection to that port, and the node's other requests to the HTTP port, are stolen.
func TestStealProbesWithOwnUserAgentAndHTTPS(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 6*time.Minute)
	ns := newNamespace(t, "steal-probes-own")
	pod := peerPod(t, "target", nil)
	c := &pod.Spec.Containers[0]
	c.Env = append(c.Env, corev1.EnvVar{Name: "ECHO_TLS_ADDR", Value: ":8443"})
	c.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "https", ContainerPort: 8443}}
	c.ReadinessProbe = &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: "/healthz", Port: intstr.FromString("http"),
			HTTPHeaders: []corev1.HTTPHeader{{Name: "User-Agent", Value: probeUA}, {Name: "X-Probe", Value: "readiness"}},
		}},
		PeriodSeconds: 1, FailureThreshold: 1,
	}
	c.LivenessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("https"), Scheme: corev1.URISchemeHTTPS}},
		PeriodSeconds: 1, FailureThreshold: 1,
	}
	pod = createPodReady(ctx, t, ns, pod)
	clientPod := createPodReady(ctx, t, ns, peerPod(t, "client", nil, "sleep", "3600"))
	local, localHTTPS := startLocalServer(t), startLocalTLS(t)

	w, err := client(t).CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=target", ResourceVersion: pod.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	p := stealStart(t, "steal", ns, "pod/target", "--port", fmt.Sprintf("8080:%d", local.Port), "--port", fmt.Sprintf("8443:%d", localHTTPS.port()))
	said, _, _ := p.waitLine(0, "stderr", passedByAddressRE, 30*time.Second)
	if !slices.Contains(strings.Split(said[1], ", "), pod.Status.HostIP) {
		t.Errorf("start message %q does not name the node's address %s", said[0], pod.Status.HostIP)
	}
	ownAt, httpsAt, err := appProbeLines(ctx, t, ns)
	if err != nil {
		t.Fatal(err)
	}

	podIP := pod.Status.PodIP
	// The node's other requests to the HTTP probe's port are stolen.
	if r, err := getJSON(ctx, "http://"+net.JoinHostPort(podIP, "8080")+"/from-node", nil, nil); err != nil || r.Pod != "laptop" {
		t.Errorf("GET :8080/from-node: %+v, %v; want the local server", r, err)
	}
	// Another pod's connections to the HTTPS port are stolen. (Its busybox TLS client sends no
	// signature_algorithms, which Go's TLS server requires, so it opens a connection and sends a line:
	// the local process counts it.)
	if _, err := pfPodSh(ctx, ns, "client", "main", "echo from-client | nc -w 5 "+podIP+" 8443"); err != nil {
		t.Logf("nc to :8443 from pod client: %v", err)
	}
	clientIP := regexp.QuoteMeta(clientPod.Status.PodIP)
	p.waitLine(0, "stdout", regexp.MustCompile(`connection from `+clientIP+`:\d+ to port 8443: `), 30*time.Second)
	// The node's HTTPS requests stay with the app, as the plugin said.
	insecure := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := insecure.Get("https://" + net.JoinHostPort(podIP, "8443") + "/from-node")
	if err != nil {
		t.Errorf("GET https :8443/from-node: %v", err)
	} else {
		var r pfReply
		err := json.NewDecoder(resp.Body).Decode(&r)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || r.Pod != "target" {
			t.Errorf("GET https :8443/from-node: %+v, %v; want the app", r, err)
		}
	}

	// Both probes run every second: wait until the app has logged several of each since the steal
	// began, watching the pod all the while.
	const want = 5
	var own, https int
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for own-ownAt < want || https-httpsAt < want {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("pod watch ended")
			}
			if p, ok := ev.Object.(*corev1.Pod); ok {
				if !podReady(p) {
					t.Fatalf("pod became unready during the steal: %+v", p.Status.Conditions)
				}
				for _, cs := range p.Status.ContainerStatuses {
					if cs.RestartCount != 0 {
						t.Fatalf("container %s restarted during the steal", cs.Name)
					}
				}
			}
		case <-tick.C:
			if own, https, err = appProbeLines(ctx, t, ns); err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatalf("the app logged %d probes with their own User-Agent and %d HTTPS probes during the steal, want %d of each", own-ownAt, https-httpsAt, want)
		}
	}
	t.Logf("during the steal the app logged %d probes with their own User-Agent and %d HTTPS probes", own-ownAt, https-httpsAt)
	for _, r := range local.requests() {
		if r.Path == "/healthz" {
			t.Errorf("a probe reached the local HTTP server: %+v", r)
		}
	}
	if conns, paths := localHTTPS.seen(); conns != 1 || len(paths) != 0 {
		t.Errorf("the local HTTPS server got %d connections and requests %q, want only the client pod's connection", conns, paths)
	}
	if err := p.stop(); err != nil {
		t.Errorf("steal exited with %v", err)
	}
}
