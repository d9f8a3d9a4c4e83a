//go:build e2e

package e2e

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// osUser runs a process as another, unprivileged user of this machine, with a home and a kubeconfig
// of its own.
type osUser struct {
	uid, gid uint32
	env      []string
}

func (u *osUser) apply(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.uid, Gid: u.gid}}
	cmd.Env = u.env
}

// nobody prepares user nobody to run the plugin: a kubeconfig with its credentials inline (the
// cluster's refers to root-only files), a home for kubectl's cache, and /dev/net/tun at the mode
// common desktops give it (this machine's is 0600), restored afterwards.
func nobody(ctx context.Context, t *testing.T) *osUser {
	t.Helper()
	dir, err := os.MkdirTemp("", "tl-e2e-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	u := &osUser{uid: 65534, gid: 65534}
	kc, _, err := kubectl(ctx, t, "", "config", "view", "--raw", "--flatten", "--minify")
	if err != nil {
		t.Fatal(err)
	}
	kcPath := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kcPath, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, kcPath, home} {
		if err := os.Chown(p, int(u.uid), int(u.gid)); err != nil {
			t.Fatal(err)
		}
	}
	u.env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "KUBECONFIG=" + kcPath}
	st, err := os.Stat("/dev/net/tun")
	if err != nil {
		t.Fatalf("/dev/net/tun: %v", err)
	}
	mode := st.Mode().Perm()
	if err := os.Chmod("/dev/net/tun", 0o666); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod("/dev/net/tun", mode) })
	return u
}

// buildNetcheck builds the static client (CGO off, Go's own resolver) where nobody can run it.
func buildNetcheck(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tl-e2e-netcheck-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "netcheck")
	cmd := exec.Command("go", "build", "-o", bin, "./test/clients/netcheck")
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build netcheck: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatalf("netcheck is dynamically linked; the test needs a static client")
		}
	}
	return bin
}

func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Clean(filepath.Join(wd, "..", ".."))
}

// TestExecUnprivileged: `kubectl trafficlab exec`, run by an unprivileged user, gives a static Go
// client and curl the pod's outgoing network: Services by FQDN and by search domain, a pod IP, UDP by
// name; a --local name reaches a server on this machine; --steal delivers the pod's requests to the
// command inside its namespace; --proxy passes the same checks for clients that honour proxies; the
// command's exit code is the plugin's.
func TestExecUnprivileged(t *testing.T) {
	ctx := testContext(t, 6*time.Minute)
	u := nobody(ctx, t)
	netcheck := buildNetcheck(t)
	st := newStealTarget(ctx, t, "exec")
	udpLabels := map[string]string{"app": "udpecho"}
	udpPod := createPodReady(ctx, t, st.ns, pfEchoPod(t, "udp", udpLabels, true))
	if _, err := client(t).CoreV1().Services(st.ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "udpecho"},
		Spec: corev1.ServiceSpec{Selector: udpLabels, Ports: []corev1.ServicePort{{
			Name: "udp", Port: 9053, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(9053),
		}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	db := hostServer(t, "host database")

	fqdn := fmt.Sprintf("http://echo.%s.svc.cluster.local/", st.ns)
	withNS := fmt.Sprintf("http://echo.%s/", st.ns)
	podIP := "http://" + net.JoinHostPort(st.podIP, "8080") + "/"
	local := fmt.Sprintf("http://%s:%d/", host, db)
	want := []*regexp.Regexp{
		regexp.MustCompile(`^GET ` + regexp.QuoteMeta(fqdn) + ` -> 200 pod=target$`),
		regexp.MustCompile(`^GET http://echo/ -> 200 pod=target$`),
		regexp.MustCompile(`^GET ` + regexp.QuoteMeta(withNS) + ` -> 200 pod=target$`),
		regexp.MustCompile(`^GET ` + regexp.QuoteMeta(podIP) + ` -> 200 pod=target$`),
		regexp.MustCompile(`^GET ` + regexp.QuoteMeta(local) + ` -> 200 host database$`),
	}
	checks := []string{fqdn, "http://echo/", withNS, podIP, local}

	run := func(t *testing.T, name string, wantCode int, args ...string) *pfProc {
		t.Helper()
		p := pluginStartAs(t, u, name, "exec", st.ns, args...)
		if err := p.waitExit(3 * time.Minute); err != nil {
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != wantCode {
				t.Fatalf("%s exited with %v, want code %d:\n%s", name, err, wantCode, p.output())
			}
		} else if wantCode != 0 {
			t.Fatalf("%s exited 0, want %d:\n%s", name, wantCode, p.output())
		}
		return p
	}
	expect := func(t *testing.T, p *pfProc, res ...*regexp.Regexp) {
		t.Helper()
		lines := stdoutLines(p)
		for _, re := range res {
			found := false
			for _, l := range lines {
				found = found || re.MatchString(l)
			}
			if !found {
				t.Errorf("no output line matches %s:\n%s", re, p.output())
			}
		}
	}

	t.Run("namespace", func(t *testing.T) {
		p := run(t, "exec-netcheck", 0, append([]string{"pod/target", "--local", fmt.Sprintf("%s:%d", host, db), "--",
			netcheck, "-udp", "udpecho:9053"}, checks...)...)
		expect(t, p, append(want, regexp.MustCompile(`^UDP udpecho:9053 -> echoed$`))...)
	})
	t.Run("curl", func(t *testing.T) {
		p := run(t, "exec-curl", 0, "pod/target", "--", "curl", "-sS", "--max-time", "20", "http://echo/", fqdn, podIP)
		if n := strings.Count(strings.Join(stdoutLines(p), "\n"), `"pod": "target"`); n != 3 {
			t.Errorf("curl got %d answers from the pod, want 3:\n%s", n, p.output())
		}
	})
	t.Run("exit code", func(t *testing.T) {
		run(t, "exec-exit", 7, "pod/target", "--", "sh", "-c", "exit 7")
	})
	t.Run("steal", func(t *testing.T) {
		// The same command reaches another pod through the target while it receives the target's
		// requests.
		other := "http://" + net.JoinHostPort(udpPod.Status.PodIP, "8080") + "/"
		p := pluginStartAs(t, u, "exec-steal", "exec", st.ns, "pod/target", "--steal", "8080:18080", "--",
			netcheck, "-serve", "127.0.0.1:18080", "-serve-count", "1", other)
		p.waitLine(0, "stderr", stealingRE, 3*time.Minute)
		p.waitLine(0, "stdout", regexp.MustCompile(`^GET `+regexp.QuoteMeta(other)+` -> 200 pod=udp$`), time.Minute)
		p.waitLine(0, "stdout", regexp.MustCompile(`^serving on 127\.0\.0\.1:18080$`), time.Minute)
		resp, err := http.Get(st.svcURL("/stolen"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "served by netcheck: GET /stolen\n" {
			t.Errorf("request through the Service got %q, want the command's answer", b)
		}
		if err := p.waitExit(time.Minute); err != nil {
			t.Errorf("exec exited with %v:\n%s", err, p.output())
		}
		waitAnswer(ctx, t, time.Minute, st.svcURL("/"), "target")
	})
	t.Run("mirror", func(t *testing.T) {
		// The pod keeps answering; the command gets a copy of the request.
		p := pluginStartAs(t, u, "exec-mirror", "exec", st.ns, "pod/target", "--mirror", "8080:18081", "--",
			netcheck, "-serve", "127.0.0.1:18081", "-serve-count", "1")
		p.waitLine(0, "stderr", regexp.MustCompile(`mirroring port 8080 -> `), 3*time.Minute)
		p.waitLine(0, "stdout", regexp.MustCompile(`^serving on 127\.0\.0\.1:18081$`), time.Minute)
		if r, err := getJSON(ctx, st.svcURL("/mirrored"), nil, nil); err != nil || r.Pod != "target" {
			t.Fatalf("request through the Service: %+v, %v; want the pod's answer", r, err)
		}
		p.waitLine(0, "stdout", regexp.MustCompile(`^served GET /mirrored$`), time.Minute)
		if err := p.waitExit(time.Minute); err != nil {
			t.Errorf("exec exited with %v:\n%s", err, p.output())
		}
	})
	t.Run("no tun", func(t *testing.T) {
		// Where the user cannot open /dev/net/tun, exec says so in one line, offers --proxy, and
		// changes nothing in the cluster.
		before, err := client(t).CoreV1().Pods(st.ns).Get(ctx, "target", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod("/dev/net/tun", 0o600); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = os.Chmod("/dev/net/tun", 0o666) }()
		p := pluginStartAs(t, u, "exec-no-tun", "exec", st.ns, "pod/target", "--", "true")
		if err := p.waitExit(time.Minute); err == nil {
			t.Fatalf("exec without /dev/net/tun succeeded:\n%s", p.output())
		}
		var errLines []string
		for _, l := range p.snapshot() {
			if l.stream == "stderr" && strings.HasPrefix(l.text, "error: ") {
				errLines = append(errLines, l.text)
			}
		}
		if len(errLines) != 1 || !strings.Contains(errLines[0], "/dev/net/tun") || !strings.Contains(errLines[0], "--proxy") {
			t.Errorf("want one error line naming /dev/net/tun and --proxy:\n%s", p.output())
		}
		after, err := client(t).CoreV1().Pods(st.ns).Get(ctx, "target", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(after.Spec.EphemeralContainers) != len(before.Spec.EphemeralContainers) {
			t.Errorf("exec refused but the pod's ephemeral containers went from %d to %d", len(before.Spec.EphemeralContainers), len(after.Spec.EphemeralContainers))
		}
	})
	t.Run("proxy", func(t *testing.T) {
		p := run(t, "exec-proxy", 0, append([]string{"pod/target", "--proxy", "--local", fmt.Sprintf("%s:%d", host, db), "--", netcheck}, checks...)...)
		expect(t, p, want...)
		p = run(t, "exec-proxy-curl", 0, "pod/target", "--proxy", "--", "curl", "-sS", "--max-time", "20", "http://echo/", fqdn)
		if n := strings.Count(strings.Join(stdoutLines(p), "\n"), `"pod": "target"`); n != 2 {
			t.Errorf("curl through the proxy got %d answers from the pod, want 2:\n%s", n, p.output())
		}
	})
}

// hostServer is a server on this machine (every address), standing for a developer's database.
func hostServer(t *testing.T, answer string) int {
	t.Helper()
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, answer+"\n")
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}
