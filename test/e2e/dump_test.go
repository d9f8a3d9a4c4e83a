//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// dumpLine is one JSON line of dump's live view.
type dumpLine struct {
	Kind      string `json:"kind"`
	Client    string `json:"client"`
	Method    string `json:"method"`
	Path      string `json:"path"`
	Status    int    `json:"status"`
	Proto     string `json:"proto"`
	RespBytes int64  `json:"respBytes"`
}

// TestDumpBaselineNoCapability: in a namespace at PodSecurity baseline, which forbids adding NET_RAW,
// the agent adds no capability and still captures: the live view shows the requests made.
func TestDumpBaselineNoCapability(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	st := newStealTarget(ctx, t, "dump-baseline")
	if _, _, err := kubectl(ctx, t, "", "label", "namespace", st.ns, "pod-security.kubernetes.io/enforce=baseline"); err != nil {
		t.Fatal(err)
	}
	p := pluginStart(t, "dump", "dump", st.ns, "pod/target", "--port", "8080", "-o", "json")
	p.waitLine(0, "stderr", regexp.MustCompile(`capturing ports 8080 in pod`), 3*time.Minute)

	paths := []string{"/dump/a", "/dump/b?x=1", "/dump/c"}
	for _, path := range paths {
		if r, err := getJSON(ctx, st.podURL(path), nil, nil); err != nil || r.Pod != "target" {
			t.Fatalf("GET %s: %+v, %v", path, r, err)
		}
	}
	for _, path := range paths {
		p.waitLine(0, "stdout", regexp.MustCompile(`"method":"GET","path":"`+regexp.QuoteMeta(path)+`","status":200`), 30*time.Second)
	}
	for _, l := range p.snapshot() {
		if l.stream != "stdout" {
			continue
		}
		var d dumpLine
		if err := json.Unmarshal([]byte(l.text), &d); err != nil {
			t.Errorf("stdout line is not JSON: %q: %v", l.text, err)
		}
	}
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
		t.Errorf("dump exited with %v after SIGINT", err)
	}
	p.waitLine(0, "stderr", regexp.MustCompile(`^\d+ packets captured, 0 dropped by the kernel$`), 10*time.Second)
}

// TestDumpToTshark: `dump -w -` streams pcapng that tshark decodes, and -w FILE writes one it reads.
func TestDumpToTshark(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	st := newStealTarget(ctx, t, "dump-tshark")
	file := filepath.Join(t.TempDir(), "web.pcapng")
	fileDump := pluginStart(t, "dump-file", "dump", st.ns, "pod/target", "--port", "8080", "-w", file)
	fileDump.waitLine(0, "stderr", regexp.MustCompile(`capturing`), 3*time.Minute)

	// kubectl trafficlab dump ... -w - | tshark -r -
	dumpArgs := []string{"trafficlab", "dump", "-n", st.ns, "pod/target", "--port", "8080", "-w", "-"}
	dump := exec.CommandContext(ctx, "kubectl", dumpArgs...)
	tshark := exec.CommandContext(ctx, "tshark", "-l", "-r", "-", "-Y", "http.request", "-T", "fields", "-e", "http.request.method", "-e", "http.request.uri")
	pipe, err := dump.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	tshark.Stdin = pipe
	var out, errOut, tsErr syncBuffer
	dump.Stderr = &errOut
	tshark.Stdout, tshark.Stderr = &out, &tsErr
	if err := tshark.Start(); err != nil {
		t.Fatal(err)
	}
	if err := dump.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dump.Process.Kill(); _ = tshark.Process.Kill() })
	eventually(ctx, t, 3*time.Minute, "the piped dump is capturing", func(context.Context) (bool, string) {
		return strings.Contains(errOut.String(), "capturing"), errOut.String()
	})
	for i := range 3 {
		if _, err := getJSON(ctx, st.podURL(fmt.Sprintf("/tshark/%d", i)), nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Ctrl-C to the plugin: the agent drains its sockets, the plugin ends the pcapng cleanly, and
	// tshark reads to the end.
	_ = dump.Process.Signal(syscall.SIGINT)
	if err := dump.Wait(); err != nil {
		t.Errorf("dump -w - exited with %v: %s", err, errOut.String())
	}
	checkPluginOutput(t, "dump -w -", dumpArgs, errOut.String())
	if err := tshark.Wait(); err != nil {
		t.Errorf("tshark exited with %v: %s", err, tsErr.String())
	}
	for i := range 3 {
		if want := fmt.Sprintf("GET\t/tshark/%d", i); !strings.Contains(out.String(), want) {
			t.Errorf("tshark output lacks %q:\n%s\nplugin stderr:\n%s\ntshark stderr:\n%s", want, out.String(), errOut.String(), tsErr.String())
		}
	}

	if err := fileDump.stop(); err != nil {
		t.Errorf("dump -w FILE exited with %v", err)
	}
	got, err := exec.CommandContext(ctx, "tshark", "-r", file, "-Y", "http.request", "-T", "fields", "-e", "frame.interface_name", "-e", "http.request.uri").Output()
	if err != nil {
		t.Fatalf("tshark -r %s: %v: %s", file, err, got)
	}
	// The file's interfaces are named after the pod, as in a dump of several pods.
	for i := range 3 {
		if want := fmt.Sprintf("target/eth0\t/tshark/%d", i); !strings.Contains(string(got), want) {
			t.Errorf("the written pcapng lacks %q:\n%s", want, got)
		}
	}
	if fi, err := os.Stat(file); err != nil || fi.Size() == 0 {
		t.Errorf("capture file: %v, %v", fi, err)
	}
}

// syncBuffer is a bytes.Buffer safe for a writing process and a polling test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestDumpWithoutFilterSkipsItsTunnel: a dump with no port and no filter captures every interface of
// the pod, lo included, where its own data connection runs (port-forward ends on 127.0.0.1 inside
// the pod). It once captured that connection and fed on itself (756 MB in 12 s, the session secret
// inside); the file must hold the requests made and no TCP packet between loopback addresses but the
// app's own, also none of a session that started after the dump.
func TestDumpWithoutFilterSkipsItsTunnel(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	st := newStealTarget(ctx, t, "dump-self")
	file := filepath.Join(t.TempDir(), "all.pcapng")
	d := pluginStart(t, "dump-all", "dump", st.ns, "pod/target", "-w", file)
	d.waitLine(0, "stderr", regexp.MustCompile(`capturing`), 3*time.Minute)
	for i := range 3 {
		if _, err := getJSON(ctx, st.podURL(fmt.Sprintf("/self/%d", i)), nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	// A session that starts while the dump runs (a port-forward, served by the same agent) has its
	// tunnel left out too. Its dials to the app's 8080 on the pod's lo are the app's traffic and stay.
	pf := pfStart(t, "pf", st.ns, "pod/target", ":8080")
	port, _ := pf.localPort("localhost:8080", time.Minute)
	pfMustEcho(ctx, t, port, "target")
	if err := pf.stop(); err != nil {
		t.Errorf("port-forward exited with %v:\n%s", err, pf.output())
	}
	if err := d.stop(); err != nil {
		t.Errorf("dump -w FILE exited with %v", err)
	}
	uris, err := exec.CommandContext(ctx, "tshark", "-r", file, "-Y", "http.request", "-T", "fields", "-e", "http.request.uri").CombinedOutput()
	if err != nil {
		t.Fatalf("tshark -r %s: %v: %s", file, err, uris)
	}
	for i := range 3 {
		if want := fmt.Sprintf("/self/%d", i); !strings.Contains(string(uris), want) {
			t.Errorf("the capture lacks %s:\n%s", want, uris)
		}
	}
	lo, err := exec.CommandContext(ctx, "tshark", "-r", file, "-Y", "tcp && (ip.src == 127.0.0.0/8 || ipv6.src == ::1) && !(tcp.port == 8080)", "-T", "fields", "-e", "tcp.srcport", "-e", "tcp.dstport").Output()
	if err != nil {
		// tshark's stderr (its warning about running as root) stays out of the count.
		t.Fatalf("tshark -r %s: %v", file, err)
	}
	if n := strings.Count(string(lo), "\n"); n != 0 {
		t.Errorf("the capture holds %d TCP packets on loopback outside the app's port (the sessions' tunnels):\n%.2000s", n, lo)
	}
}
