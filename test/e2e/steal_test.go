//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestStealWholePort: every new connection to the pod's port, from the host through the Service and to
// the pod IP, from another pod by DNS name and from inside the pod, is answered by the local server;
// probes stay with the app; after Ctrl-C the pod answers again and no table is left.
func TestStealWholePort(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 6*time.Minute)
	st := newStealTarget(ctx, t, "steal-whole")
	createPodReady(ctx, t, st.ns, peerPod(t, "client", nil, "sleep", "3600"))

	p := stealStart(t, "steal", st.ns, "svc/echo", "--port", fmt.Sprintf("80:%d", st.local.Port))
	if tables := trafficlabTables(t, st.netns); len(tables) != 1 {
		t.Errorf("tables in the pod while stealing: %q, want one trafficlab table", tables)
	}
	for _, url := range []string{st.svcURL("/via-service"), st.podURL("/via-pod-ip")} {
		r, err := getJSON(ctx, url, nil, nil)
		if err != nil || r.Pod != "laptop" {
			t.Errorf("GET %s: %+v, %v; want the local server", url, r, err)
		}
	}
	// From another pod, by the Service's DNS name; and from the target pod's own loopback.
	for _, c := range []struct{ pod, url string }{
		{"client", "http://echo/from-client-pod"},
		{"target", "http://127.0.0.1:8080/from-loopback"},
	} {
		out, err := pfPodSh(ctx, st.ns, c.pod, "main", "wget -qO- "+c.url)
		if err != nil || !strings.Contains(out, `"pod":"laptop"`) {
			t.Errorf("wget %s in pod %s: %q, %v; want the local server", c.url, c.pod, out, err)
		}
	}
	// h2c with prior knowledge, as curl sends it.
	t.Logf("%s curl h2c", time.Now().Format("15:04:05.000"))
	out, err := exec.CommandContext(ctx, "curl", "-sS", "--max-time", "10", "--http2-prior-knowledge", st.podURL("/h2c")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"pod":"laptop"`) {
		t.Errorf("curl --http2-prior-knowledge: %q, %v", out, err)
	}
	p.waitLine(0, "stdout", regexp.MustCompile(`connection from \S+ to port 8080: `), 30*time.Second)

	// The readiness probe runs every second; none of them may have reached the laptop.
	pod, err := client(t).CoreV1().Pods(st.ns).Get(ctx, "target", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !podReady(pod) {
		t.Errorf("target is not Ready while stolen: %+v", pod.Status.Conditions)
	}
	for _, ua := range st.local.userAgents() {
		if strings.HasPrefix(ua, "kube-probe/") {
			t.Errorf("a probe reached the local server (User-Agent %q)", ua)
		}
	}

	t.Logf("%s stopping", time.Now().Format("15:04:05.000"))
	if err := p.stop(); err != nil {
		t.Errorf("steal exited with %v after SIGINT, want 0", err)
	}
	t.Logf("%s stopped", time.Now().Format("15:04:05.000"))
	t.Logf("tables right after the plugin exited: %q", trafficlabTables(t, st.netns))
	r, err := getJSON(ctx, st.svcURL("/after"), nil, nil)
	if err != nil || r.Pod != "target" {
		t.Errorf("right after the steal ended: %+v, %v; want the pod", r, err)
	}
	if tables := trafficlabTables(t, st.netns); len(tables) != 0 {
		t.Errorf("tables left in the pod: %q", tables)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// TestStealFiltered: per-request decisions on one HTTP/1.1 keep-alive connection and on one h2c
// connection; requests without the header are served by the pod's app.
func TestStealFiltered(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	st := newStealTarget(ctx, t, "steal-filter")
	p := stealStart(t, "steal", st.ns, "pod/target", "--port", fmt.Sprintf("8080:%d", st.local.Port), "--header-filter", "^X-Steal: yes$")

	// One TCP connection, requests written and answered in turn.
	c, err := net.Dial("tcp", net.JoinHostPort(st.podIP, "8080"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i, steal := range []bool{false, true, true, false, true, false} {
		hdr := ""
		want := "target"
		if steal {
			hdr, want = "X-Steal: yes\r\n", "laptop"
		}
		fmt.Fprintf(c, "GET /keepalive/%d HTTP/1.1\r\nHost: target\r\n%s\r\n", i, hdr)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d on the kept-alive connection: %v", i, err)
		}
		var r pfReply
		err = json.NewDecoder(resp.Body).Decode(&r)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || r.Pod != want || r.Path != fmt.Sprintf("/keepalive/%d", i) {
			t.Errorf("request %d (stolen %v): %+v, %v; want %s", i, steal, r, err, want)
		}
	}

	// h2c: one connection, streams decided one by one.
	var dials atomic.Int32
	// HTTP/2 without TLS from the first byte (prior knowledge), as a gRPC client speaks it.
	h2c := &http.Transport{Protocols: new(http.Protocols), DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	h2c.Protocols.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Transport: h2c}
	for i, steal := range []bool{true, false, true, false} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, st.podURL(fmt.Sprintf("/h2/%d", i)), nil)
		want := "target"
		if steal {
			req.Header.Set("X-Steal", "yes")
			want = "laptop"
		}
		resp, err := h2.Do(req)
		if err != nil {
			t.Fatalf("h2c request %d: %v", i, err)
		}
		var r pfReply
		err = json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if err != nil || r.Pod != want || resp.ProtoMajor != 2 {
			t.Errorf("h2c request %d (stolen %v): %s %+v, %v; want %s over HTTP/2", i, steal, resp.Proto, r, err, want)
		}
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("h2c client dialed %d connections, want 1", n)
	}
	p.waitLine(0, "stdout", regexp.MustCompile(`GET /h2/0 200 .*h2c`), 30*time.Second)
	p.waitLine(0, "stdout", regexp.MustCompile(`GET /keepalive/1 200 `), 30*time.Second)
	for _, l := range p.snapshot() {
		if strings.Contains(l.text, "/keepalive/0") || strings.Contains(l.text, "/h2/1 ") {
			t.Errorf("a request served by the app was printed as stolen: %q", l.text)
		}
	}
}

// TestStealCommand: with -- COMMAND the command runs once stealing is active, and its exit code is
// the plugin's.
func TestStealCommand(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	st := newStealTarget(ctx, t, "steal-cmd")
	script := fmt.Sprintf(`curl -sS --max-time 10 %s | grep -q '"pod":"laptop"' && exit 7; exit 1`, st.podURL("/from-command"))
	p := pluginStart(t, "steal", "steal", st.ns, "pod/target", "--port", fmt.Sprintf("8080:%d", st.local.Port), "--", "sh", "-c", script)
	err := p.waitExit(2 * time.Minute)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("steal -- COMMAND exited with %v, want exit code 7; output:\n%s", err, p.output())
	}
	if strings.Contains(p.output(), "error:") {
		t.Errorf("the command's own exit code was reported as an error:\n%s", p.output())
	}
	waitAnswer(ctx, t, 10*time.Second, st.podURL("/after"), "target")
}

// TestStealFaults: however the session dies, the redirect goes with it and the app answers again.
func TestStealFaults(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 8*time.Minute)
	st := newStealTarget(ctx, t, "steal-faults")
	// Without a reconnect grace: the session ends with its tunnel (TestReconnect has the grace).
	args := []string{"pod/target", "--port", fmt.Sprintf("8080:%d", st.local.Port), "--reconnect-grace=0"}

	t.Run("plugin SIGKILL", func(t *testing.T) {
		p := stealStart(t, "steal", st.ns, args...)
		waitAnswer(ctx, t, 10*time.Second, st.podURL("/"), "laptop")
		_ = p.cmd.Process.Kill()
		<-p.done
		killed := time.Now()
		waitAnswer(ctx, t, 10*time.Second, st.podURL("/"), "target")
		t.Logf("the app answered %.1fs after the plugin was killed", time.Since(killed).Seconds())
		eventually(ctx, t, 10*time.Second, "no trafficlab table", func(context.Context) (bool, string) {
			tables := trafficlabTables(t, st.netns)
			return len(tables) == 0, fmt.Sprint(tables)
		})
	})
	t.Run("agent session SIGKILL", func(t *testing.T) {
		p := stealStart(t, "steal", st.ns, args...)
		waitAnswer(ctx, t, 10*time.Second, st.podURL("/"), "laptop")
		pids := agentSessionPIDs(t, st.netns)
		if len(pids) != 1 {
			t.Fatalf("agent session processes: %v, want one", pids)
		}
		// The session runs in the agent's main process, which owns the table (the kernel would drop it
		// with the main process's netlink socket, whatever else fails: the table must carry the flag);
		// the killed relay ends the session's connection, and the main process removes the table.
		tables := trafficlabTables(t, st.netns)
		if len(tables) != 1 {
			t.Fatalf("trafficlab tables %q, want one", tables)
		}
		if flags := tableFlags(t, st.netns, tables[0]); !slices.Contains(flags, "owner") {
			t.Errorf("table %s has flags %q, want owner", tables[0], flags)
		}
		if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		eventually(ctx, t, time.Minute, "no trafficlab table", func(context.Context) (bool, string) {
			tables := trafficlabTables(t, st.netns)
			return len(tables) == 0, fmt.Sprint(tables)
		})
		waitAnswer(ctx, t, 10*time.Second, st.podURL("/"), "target")
		// The plugin ends on its own, as a failure that names the cause.
		err := p.waitExit(time.Minute)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("steal exited with %v after its agent session was killed, want exit code 1", err)
		}
		if last := lastLine(p, "stderr"); !strings.HasPrefix(last, "error: lost the agent: ") {
			t.Errorf("last stderr line %q, want \"error: lost the agent: ...\"; output:\n%s", last, p.output())
		}
	})
	t.Run("tunnel cut", func(t *testing.T) {
		p := stealStart(t, "steal", st.ns, args...)
		waitAnswer(ctx, t, 10*time.Second, st.podURL("/"), "laptop")
		// A stopped plugin sends no heartbeats and answers nothing, as behind a cut network.
		if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		stopped := time.Now()
		eventually(ctx, t, 20*time.Second, "no trafficlab table", func(context.Context) (bool, string) {
			tables := trafficlabTables(t, st.netns)
			return len(tables) == 0, fmt.Sprint(tables)
		})
		t.Logf("redirect removed %.1fs after the plugin went silent", time.Since(stopped).Seconds())
		waitAnswer(ctx, t, 5*time.Second, st.podURL("/"), "target")
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		<-p.done
	})
}

// TestStealLoad: 10,000 requests under connection churn and 20 uploads of 100 MB through a whole-port
// steal: none lost, every body's sha256 equal at both ends.
func TestStealLoad(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 10*time.Minute)
	st := newStealTarget(ctx, t, "steal-load")
	p := stealStart(t, "steal", st.ns, "pod/target", "--port", fmt.Sprintf("8080:%d", st.local.Port))
	p.quiet = true

	const requests, workers = 10000, 32
	keep := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers, DisableCompression: true}}
	var failed atomic.Int32
	var firstErr atomic.Value
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Half the workers open a connection per request (churn), half keep theirs alive.
			cl := pfHTTP
			if w%2 == 0 {
				cl = keep
			}
			for i := range jobs {
				path := fmt.Sprintf("/r/%d", i)
				err := func() error {
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, st.podURL(path), nil)
					resp, err := cl.Do(req)
					if err != nil {
						return err
					}
					defer resp.Body.Close()
					var r pfReply
					if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
						return err
					}
					if r.Pod != "laptop" || r.Path != path {
						return fmt.Errorf("%s answered %+v", path, r)
					}
					return nil
				}()
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		}()
	}
	start := time.Now()
	for i := range requests {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	t.Logf("%d requests in %.1fs", requests, time.Since(start).Seconds())
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of %d requests failed; first: %v", n, requests, firstErr.Load())
	}

	const uploads, size = 20, 100 << 20
	var up sync.WaitGroup
	sem := make(chan struct{}, 4)
	start = time.Now()
	for i := range uploads {
		up.Add(1)
		sem <- struct{}{}
		go func() {
			defer up.Done()
			defer func() { <-sem }()
			h := sha256.New()
			body := io.TeeReader(io.LimitReader(rand.Reader, size), h)
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, st.podURL(fmt.Sprintf("/upload/%d", i)), body)
			req.ContentLength = size
			resp, err := pfHTTP.Do(req)
			if err != nil {
				t.Errorf("upload %d: %v", i, err)
				return
			}
			defer resp.Body.Close()
			var r pfReply
			if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
				t.Errorf("upload %d: %v", i, err)
				return
			}
			if want := hex.EncodeToString(h.Sum(nil)); r.Pod != "laptop" || r.BodyBytes != size || r.BodySHA256 != want {
				t.Errorf("upload %d: got %d bytes sha256 %s from %s, want %d bytes %s", i, r.BodyBytes, r.BodySHA256, r.Pod, size, want)
			}
		}()
	}
	up.Wait()
	t.Logf("%d uploads of %d MiB in %.1fs", uploads, size>>20, time.Since(start).Seconds())
}

// TestStealProbesStayWithTheApp: through two minutes of a filtered steal whose filter matches every
// request, the kubelet's probes on the stolen port still reach the app (the local server fails them),
// so the pod stays Ready and is never restarted.
func TestStealProbesStayWithTheApp(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 6*time.Minute)
	ns := newNamespace(t, "steal-probes")
	pod := pfEchoPod(t, "target", nil, false)
	pod.Spec.Containers[0].LivenessProbe = pod.Spec.Containers[0].ReadinessProbe.DeepCopy()
	pod = createPodReady(ctx, t, ns, pod)
	local := startLocalServer(t)
	p := stealStart(t, "steal", ns, "pod/target", "--port", fmt.Sprintf("8080:%d", local.Port), "--header-filter", "^User-Agent: ")
	url := "http://" + net.JoinHostPort(pod.Status.PodIP, "8080") + "/"
	waitAnswer(ctx, t, 10*time.Second, url, "laptop")

	w, err := client(t).CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=target", ResourceVersion: pod.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	end := time.After(2 * time.Minute)
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for done := false; !done; {
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
			if r, err := getJSON(ctx, url, nil, nil); err != nil || r.Pod != "laptop" {
				t.Errorf("request during the steal: %+v, %v", r, err)
			}
		case <-end:
			done = true
		}
	}
	for _, ua := range local.userAgents() {
		if strings.HasPrefix(ua, "kube-probe/") {
			t.Fatalf("a probe reached the local server")
		}
	}
	if err := p.stop(); err != nil {
		t.Errorf("steal exited with %v", err)
	}
}
