//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// keepAliveGet sends one request on an open connection and returns who answered.
func keepAliveGet(c net.Conn, br *bufio.Reader, path string) (string, error) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: target\r\n\r\n", path); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var r pfReply
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return "", err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return r.Pod, nil
}

// TestStealFlushConnections: a keep-alive connection opened before the steal and left idle moves onto
// it (the agent resets it once idle, and says so), so the client's next connection is stolen; with
// --flush-connections it is reset too, as busy or idle, counted.
func TestStealFlushConnections(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	st := newStealTarget(ctx, t, "steal-flush")
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", net.JoinHostPort(st.podIP, "8080"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}
	port := fmt.Sprintf("8080:%d", st.local.Port)

	// Without the flag, the idle connection is reset once it has been idle for a second.
	c, br := dial()
	if who, err := keepAliveGet(c, br, "/before"); err != nil || who != "target" {
		t.Fatalf("before the steal: %q, %v", who, err)
	}
	p := stealStart(t, "steal", st.ns, "pod/target", "--port", port)
	p.waitLine(0, "stdout", regexp.MustCompile(`port 8080: closed [1-9][0-9]* idle connections open before the steal`), 30*time.Second)
	if who, err := keepAliveGet(c, br, "/moved"); err == nil {
		t.Errorf("the idle connection survived the steal's start (answered by %s)", who)
	}
	c, br = dial()
	if who, err := keepAliveGet(c, br, "/reconnected"); err != nil || who != "laptop" {
		t.Errorf("the client's new connection: %q, %v; want the local server", who, err)
	}
	if err := p.stop(); err != nil {
		t.Fatalf("steal exited with %v", err)
	}

	c, br = dial()
	if who, err := keepAliveGet(c, br, "/before"); err != nil || who != "target" {
		t.Fatalf("before the second steal: %q, %v", who, err)
	}
	p = stealStart(t, "steal-flush", st.ns, "pod/target", "--port", port, "--flush-connections")
	p.waitLine(0, "", regexp.MustCompile(`(reset [1-9][0-9]* busy connections to port 8080|port 8080: closed [1-9][0-9]* idle connections)`), 30*time.Second)
	if who, err := keepAliveGet(c, br, "/after-flush"); err == nil {
		t.Errorf("the open connection survived --flush-connections (answered by %s)", who)
	}
	c, br = dial()
	if who, err := keepAliveGet(c, br, "/reconnected"); err != nil || who != "laptop" {
		t.Errorf("the client's new connection: %q, %v; want the local server", who, err)
	}
}

// TestStealLocalDown: with nothing listening locally, a whole-port steal resets the client (as a port
// nobody listens on would) and says why; a filtered steal gives the request to the app and says why.
func TestStealLocalDown(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	st := newStealTarget(ctx, t, "steal-down")
	down := pfFreeTCPPort(t)
	// What the plugin's dial of the local process says, wherever the line quotes it.
	refused := fmt.Sprintf(`(.*: )?local process at 127\.0\.0\.1:%d: dial tcp 127\.0\.0\.1:%d: connect: connection refused`, down, down)

	p := stealStart(t, "steal", st.ns, "pod/target", "--port", fmt.Sprintf("8080:%d", down))
	_, err := getJSON(ctx, st.podURL("/whole"), nil, nil)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("whole-port steal with the local process down: %v; want the connection reset", err)
	}
	p.waitLine(0, "stderr", regexp.MustCompile(`^warning: (\[pod/\S+\] )?connection from \S+ to port 8080 reset: `+refused+`$`), 30*time.Second)
	if err := p.stop(); err != nil {
		t.Fatalf("steal exited with %v", err)
	}
	if n := countLines(p, "stderr", regexp.MustCompile(`^warning: `)); n != 1 {
		t.Errorf("%d warnings for one reset connection, want 1:\n%s", n, p.output())
	}

	p = stealStart(t, "steal-filtered", st.ns, "pod/target", "--port", fmt.Sprintf("8080:%d", down), "--header-filter", "^X-Steal: yes$")
	r, err := getJSON(ctx, st.podURL("/filtered"), http.Header{"X-Steal": {"yes"}}, nil)
	if err != nil || r.Pod != "target" {
		t.Errorf("filtered steal with the local process down: %+v, %v; want the app", r, err)
	}
	p.waitLine(0, "stderr", regexp.MustCompile(`^warning: (\[pod/\S+\] )?local process unreachable \(`+refused+`\); request sent to the app$`), 30*time.Second)
	if err := p.stop(); err != nil {
		t.Fatalf("steal exited with %v", err)
	}
	if n := countLines(p, "stderr", regexp.MustCompile(`^warning: `)); n != 1 {
		t.Errorf("%d warnings for one request, want 1:\n%s", n, p.output())
	}
}

// countLines counts the lines p printed on stream that match re.
func countLines(p *pfProc, stream string, re *regexp.Regexp) int {
	n := 0
	for _, l := range p.snapshot() {
		if l.stream == stream && re.MatchString(l.text) {
			n++
		}
	}
	return n
}

// TestStealBadInput: mistakes are reported in one line before anything is added to the pod.
func TestStealBadInput(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 3*time.Minute)
	st := newStealTarget(ctx, t, "steal-bad")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"svc/echo", "--port", "8081"}, `service "echo" has no TCP port "8081"; its TCP ports are 80 (web)`},
		{[]string{"pod/target", "--port", "http"}, `a named port needs a LOCAL port`},
		{[]string{"pod/target", "--port", "8080", "--header-filter", "^X-(a"}, `--header-filter "^X-(a" is not a valid regular expression`},
		{[]string{"pod/target", "--port", "70000"}, `port 70000 is out of range 1-65535`},
		{[]string{"pod/nosuch", "--port", "8080"}, `"nosuch" not found`},
	} {
		args := append([]string{"trafficlab", "steal", "-n", st.ns}, tt.args...)
		out, err := exec.CommandContext(ctx, "kubectl", args...).CombinedOutput()
		checkPluginOutput(t, "steal "+strings.Join(tt.args, " "), args, string(out))
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		last := lines[len(lines)-1]
		if err == nil || !strings.HasPrefix(last, "error: ") || !strings.Contains(last, tt.want) {
			t.Errorf("steal %s: %v, output:\n%s\nwant a last line error: ...%s...", strings.Join(tt.args, " "), err, out, tt.want)
		}
	}
	pod, err := client(t).CoreV1().Pods(st.ns).Get(ctx, "target", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(pod.Spec.EphemeralContainers); n != 0 {
		t.Errorf("bad input added %d ephemeral containers to the pod", n)
	}
}
