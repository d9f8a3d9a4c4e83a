//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Helpers for the steal e2e tests: a local server standing in for the developer's process, the pod's
// network namespace seen from the host, and the plugin's "stealing" line.

// localServer is the developer's process: HTTP/1.1 and h2c, answering like peer-echo but as "laptop",
// and remembering the User-Agent of every request it got.
type localServer struct {
	Port int
	mu   sync.Mutex
	uas  []string
	reqs []pfReply // method, path, query, body size and sha256 of every request
	srv  *http.Server
}

func startLocalServer(t *testing.T) *localServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ls := &localServer{Port: ln.Addr().(*net.TCPAddr).Port}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	ls.srv = &http.Server{Protocols: &protos, ReadHeaderTimeout: 30 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ls.mu.Lock()
		ls.uas = append(ls.uas, r.UserAgent())
		ls.mu.Unlock()
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ls.mu.Lock()
		ls.reqs = append(ls.reqs, pfReply{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, BodyBytes: n, BodySHA256: hex.EncodeToString(h.Sum(nil))})
		ls.mu.Unlock()
		if r.URL.Path == "/healthz" {
			// A stolen probe would fail: the pod would turn unready.
			http.Error(w, "the laptop does not answer probes", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(pfReply{Pod: "laptop", Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, BodyBytes: n, BodySHA256: hex.EncodeToString(h.Sum(nil))})
	})}
	go func() { _ = ls.srv.Serve(ln) }()
	t.Cleanup(func() { ls.srv.Close() })
	return ls
}

func (ls *localServer) requests() []pfReply {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return append([]pfReply(nil), ls.reqs...)
}

func (ls *localServer) userAgents() []string {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return append([]string(nil), ls.uas...)
}

var stealingRE = regexp.MustCompile(`^\[\s*[0-9.]+s\] stealing (port .*)$`)

// stealStart runs `kubectl trafficlab steal -n NS ARGS...` and waits for its "stealing" line.
func stealStart(t *testing.T, name, ns string, args ...string) *pfProc {
	t.Helper()
	p := pluginStart(t, name, "steal", ns, args...)
	p.waitLine(0, "stderr", stealingRE, 3*time.Minute)
	return p
}

// getJSON sends one request on a new connection and decodes peer-echo's (or the local server's) reply.
func getJSON(ctx context.Context, url string, header http.Header, body []byte) (pfReply, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	method := http.MethodGet
	var rd io.Reader
	if body != nil {
		method, rd = http.MethodPost, bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return pfReply{}, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := pfHTTP.Do(req)
	if err != nil {
		return pfReply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return pfReply{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return pfReply{}, fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	var r pfReply
	if err := json.Unmarshal(b, &r); err != nil {
		return pfReply{}, fmt.Errorf("decode %q: %w", trunc(string(b)), err)
	}
	return r, nil
}

// waitAnswer polls url until it is answered by want (a pod name or "laptop").
func waitAnswer(ctx context.Context, t *testing.T, timeout time.Duration, url, want string) {
	t.Helper()
	eventually(ctx, t, timeout, url+" answered by "+want, func(ctx context.Context) (bool, string) {
		r, err := getJSON(ctx, url, nil, nil)
		if err != nil {
			return false, err.Error()
		}
		return r.Pod == want, "answered by " + r.Pod
	})
}

// echoService creates Service "echo" port 80 -> the pods' named port "http" (8080) for pods with
// labels, and returns its ClusterIP.
func echoService(ctx context.Context, t *testing.T, ns string, labels map[string]string) string {
	t.Helper()
	svc, err := client(t).CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: corev1.ServiceSpec{
			Selector: labels,
			Ports:    []corev1.ServicePort{{Name: "web", Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	return svc.Spec.ClusterIP
}

// podNetns finds a process in the network namespace that holds ip (the pod's sandbox or one of its
// containers), so a test can look at the pod's nftables from the host as root with nsenter.
func podNetns(t *testing.T, ip string) string {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*")
	seen := map[string]bool{}
	for _, p := range procs {
		ns, err := os.Readlink(filepath.Join(p, "ns", "net"))
		if err != nil || seen[ns] {
			continue
		}
		seen[ns] = true
		pid := filepath.Base(p)
		out, err := exec.Command("nsenter", "-t", pid, "-n", "ip", "-o", "addr", "show").Output()
		if err == nil && strings.Contains(string(out), " "+ip+"/") {
			return pid
		}
	}
	t.Fatalf("no process on this host is in a network namespace with address %s", ip)
	return ""
}

// trafficlabTables lists the nftables tables named trafficlab_* in the network namespace of pid.
func trafficlabTables(t *testing.T, pid string) []string {
	t.Helper()
	out, err := exec.Command("nsenter", "-t", pid, "-n", "nft", "list", "tables").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list tables in the netns of %s: %v: %s", pid, err, out)
	}
	var tables []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && strings.HasPrefix(f[2], "trafficlab_") {
			tables = append(tables, f[1]+" "+f[2])
		}
	}
	return tables
}

// tableFlags are the flags nft lists for table ("FAMILY NAME", as trafficlabTables returns it) in the
// network namespace of pid.
func tableFlags(t *testing.T, pid, table string) []string {
	t.Helper()
	args := append([]string{"-t", pid, "-n", "nft", "list", "table"}, strings.Fields(table)...)
	out, err := exec.Command("nsenter", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list table %s in the netns of %s: %v: %s", table, pid, err, out)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 1 && f[0] == "flags" {
			return strings.Split(strings.Join(f[1:], ""), ",")
		}
	}
	return nil
}

// lastLine is the last line p printed on stream.
func lastLine(p *pfProc, stream string) string {
	var last string
	for _, l := range p.snapshot() {
		if l.stream == stream {
			last = l.text
		}
	}
	return last
}

// agentSessionPIDs are the host PIDs of `trafficlab-agent attach` processes (the relays of the sessions,
// which run in the agent's main process) in the network namespace of pid.
func agentSessionPIDs(t *testing.T, pid string) []int {
	t.Helper()
	want, err := os.Readlink(filepath.Join("/proc", pid, "ns", "net"))
	if err != nil {
		t.Fatal(err)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	var pids []int
	for _, p := range procs {
		cmdline, err := os.ReadFile(filepath.Join(p, "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte("trafficlab-agent\x00attach")) {
			continue
		}
		if ns, err := os.Readlink(filepath.Join(p, "ns", "net")); err != nil || ns != want {
			continue
		}
		n, _ := strconv.Atoi(filepath.Base(p))
		pids = append(pids, n)
	}
	return pids
}

// stealTarget is the setup most steal tests start from: a namespace, an echo pod "target" (Ready when
// its :8080 answers, probes every second) behind Service "echo", and a local server.
type stealTarget struct {
	ns, podIP, clusterIP, netns string
	local                       *localServer
}

func newStealTarget(ctx context.Context, t *testing.T, prefix string) stealTarget {
	t.Helper()
	ns := newNamespace(t, prefix)
	labels := map[string]string{"app": "echo"}
	pod := createPodReady(ctx, t, ns, pfEchoPod(t, "target", labels, false))
	st := stealTarget{ns: ns, podIP: pod.Status.PodIP, local: startLocalServer(t)}
	st.clusterIP = echoService(ctx, t, ns, labels)
	st.netns = podNetns(t, st.podIP)
	waitAnswer(ctx, t, time.Minute, st.svcURL("/"), "target")
	return st
}

func (st stealTarget) svcURL(path string) string { return "http://" + st.clusterIP + path }
func (st stealTarget) podURL(path string) string {
	return "http://" + net.JoinHostPort(st.podIP, "8080") + path
}
