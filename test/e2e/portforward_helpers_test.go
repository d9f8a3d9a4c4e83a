//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
)

// Helpers for the port-forward e2e tests: the real plugin run through kubectl's plugin discovery,
// its output watched line by line, and the agent observed from inside the pod.

// pfRequirePlugin fails the test unless kubectl can discover the plugin binary on PATH.
func pfRequirePlugin(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("kubectl-trafficlab"); err != nil {
		t.Fatalf("kubectl-trafficlab is not on PATH: run make e2e (it builds _output/bin and puts it on PATH): %v", err)
	}
}

type pfLine struct {
	stream string // "stdout" or "stderr"
	text   string
	at     time.Duration // since the command started
}

// pfProc is one running `kubectl trafficlab port-forward`.
type pfProc struct {
	t     *testing.T
	name  string
	cmd   *exec.Cmd
	start time.Time

	mu      sync.Mutex
	lines   []pfLine
	changed chan struct{} // closed and replaced whenever a line arrives or the process exits
	exited  bool
	waitErr error
	done    chan struct{}
	quiet   bool // stop logging lines (e.g. hundreds of expected errors)
}

type pfLineWriter struct {
	p      *pfProc
	stream string
	buf    []byte
}

func (w *pfLineWriter) Write(b []byte) (int, error) {
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.p.addLine(w.stream, string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	return len(b), nil
}

func (p *pfProc) addLine(stream, text string) {
	p.mu.Lock()
	l := pfLine{stream: stream, text: text, at: time.Since(p.start)}
	p.lines = append(p.lines, l)
	quiet := p.quiet
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
	if !quiet {
		p.t.Logf("%s %s [%6.2fs]: %s", p.name, stream, l.at.Seconds(), text)
	}
}

// pfStart runs `kubectl trafficlab port-forward -n NS ARGS...` as kubectl's plugin discovery finds it.
// The process is interrupted (then killed) when the test ends.
func pfStart(t *testing.T, name, ns string, args ...string) *pfProc {
	t.Helper()
	return pluginStart(t, name, "port-forward", ns, args...)
}

// pluginStart runs `kubectl trafficlab VERB -n NS ARGS...` as kubectl's plugin discovery finds it.
func pluginStart(t *testing.T, name, verb, ns string, args ...string) *pfProc {
	t.Helper()
	return pluginStartAs(t, nil, name, verb, ns, args...)
}

// pluginStartAs is pluginStart as another user (nil: this process's).
func pluginStartAs(t *testing.T, u *osUser, name, verb, ns string, args ...string) *pfProc {
	t.Helper()
	pfRequirePlugin(t)
	var setup func(*exec.Cmd)
	if u != nil {
		setup = u.apply
	}
	return pluginStartWith(t, setup, name, verb, ns, args...)
}

// pluginStartWith is pluginStart with the command changed by setup (nil: as it is) before it starts:
// another user, or an environment whose PATH finds another install of the plugin.
func pluginStartWith(t *testing.T, setup func(*exec.Cmd), name, verb, ns string, args ...string) *pfProc {
	t.Helper()
	argv := append([]string{"trafficlab", verb, "-n", ns}, args...)
	p := &pfProc{t: t, name: name, changed: make(chan struct{}), done: make(chan struct{})}
	p.cmd = exec.Command("kubectl", argv...)
	if setup != nil {
		setup(p.cmd)
	}
	p.cmd.Stdout = &pfLineWriter{p: p, stream: "stdout"}
	p.cmd.Stderr = &pfLineWriter{p: p, stream: "stderr"}
	t.Logf("%s: kubectl %s", name, strings.Join(argv, " "))
	p.start = time.Now()
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start kubectl trafficlab %s: %v", verb, err)
	}
	go func() {
		err := p.cmd.Wait()
		p.mu.Lock()
		p.exited, p.waitErr = true, err
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		// Whatever the test checked, a plugin that crashed on the way out or let client-go's log
		// lines through has failed the user.
		checkPluginOutput(t, name, argv, p.text())
	})
	return p
}

// stop interrupts the plugin as Ctrl-C would and waits for it (killing it after 15 s). It returns
// the exit error.
func (p *pfProc) stop() error {
	select {
	case <-p.done:
		return p.waitErr
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.t.Errorf("%s did not exit within 15s of SIGINT; killing it", p.name)
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	return p.waitErr
}

// waitExit waits for the process to end on its own.
func (p *pfProc) waitExit(timeout time.Duration) error {
	p.t.Helper()
	select {
	case <-p.done:
		return p.waitErr
	case <-time.After(timeout):
		p.t.Fatalf("%s still running after %s; output:\n%s", p.name, timeout, p.output())
		return nil
	}
}

func (p *pfProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	for _, l := range p.lines {
		fmt.Fprintf(&b, "  %s [%6.2fs] %s\n", l.stream, l.at.Seconds(), l.text)
	}
	return b.String()
}

// text is what the process printed on both streams, line by line as it came.
func (p *pfProc) text() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	for _, l := range p.lines {
		b.WriteString(l.text)
		b.WriteByte('\n')
	}
	return b.String()
}

// snapshot returns the lines so far.
func (p *pfProc) snapshot() []pfLine {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]pfLine(nil), p.lines...)
}

// waitLine waits until a line of stream (any stream if "") from index `from` on matches re, and
// returns the submatches, the line's index and when it was printed. The test fails when the process
// exits or the timeout passes first.
func (p *pfProc) waitLine(from int, stream string, re *regexp.Regexp, timeout time.Duration) ([]string, int, time.Duration) {
	p.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		for i := from; i < len(p.lines); i++ {
			l := p.lines[i]
			if stream != "" && l.stream != stream {
				continue
			}
			if m := re.FindStringSubmatch(l.text); m != nil {
				p.mu.Unlock()
				return m, i, l.at
			}
		}
		exited, ch := p.exited, p.changed
		p.mu.Unlock()
		if exited {
			p.t.Fatalf("%s exited (%v) before printing a line matching %q; output:\n%s", p.name, p.waitErr, re, p.output())
		}
		select {
		case <-ch:
		case <-deadline.C:
			p.t.Fatalf("%s printed no line matching %q within %s; output:\n%s", p.name, re, timeout, p.output())
		}
	}
}

var pfConnectedRE = regexp.MustCompile(`^\[\s*[0-9.]+s\] connected to agent (trafficlab-[a-z0-9]+)(?: in pod \S+)? \(session ([0-9a-f]+), data via (.+)\)$`)

// connected waits for the "connected to agent" progress line; it returns the agent's container name,
// the session id and when the line came.
func (p *pfProc) connected(timeout time.Duration) (agent, session string, at time.Duration) {
	p.t.Helper()
	m, _, at := p.waitLine(0, "stderr", pfConnectedRE, timeout)
	return m[1], m[2], at
}

// localPort waits for "Forwarding from 127.0.0.1:PORT -> REMOTE" (REMOTE as the plugin prints the spec,
// with "/udp" for UDP) and returns PORT and when the line came.
func (p *pfProc) localPort(remote string, timeout time.Duration) (int, time.Duration) {
	p.t.Helper()
	re := regexp.MustCompile(`^Forwarding from 127\.0\.0\.1:(\d+)(?:/udp)? -> ` + regexp.QuoteMeta(remote) + `$`)
	m, _, at := p.waitLine(0, "stdout", re, timeout)
	port, _ := strconv.Atoi(m[1])
	return port, at
}

// pfFreeTCPPort asks the kernel for a port that is free on 127.0.0.1 right now.
func pfFreeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// pfEchoPod is a peer-echo pod that is Ready only once :8080 answers; with udp it also runs
// peer-udpecho on :9053 in a second container (the first, "main", stays the default container).
func pfEchoPod(t *testing.T, name string, labels map[string]string, udp bool) *corev1.Pod {
	p := peerPod(t, name, labels)
	c := &p.Spec.Containers[0]
	c.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
	c.ReadinessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}},
		PeriodSeconds: 1,
	}
	if udp {
		u := *c
		u.Name = "udp"
		u.Command = []string{"/usr/local/bin/peer-udpecho"}
		u.Ports = nil
		u.ReadinessProbe = nil
		p.Spec.Containers = append(p.Spec.Containers, u)
	}
	return p
}

// pfPodSh runs a shell script in a container of the pod, without logging (it is polled).
func pfPodSh(ctx context.Context, ns, pod, container, script string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "kubectl", "exec", "-n", ns, pod, "-c", container, "--", "sh", "-c", script)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		return o.String(), fmt.Errorf("kubectl exec %s/%s -c %s: %w: %s", ns, pod, container, err, strings.TrimSpace(e.String()))
	}
	return o.String(), nil
}

// pfAgentProc is one trafficlab-agent process of the pod, by host PID (see hostPodProcs).
type pfAgentProc struct {
	pid   int
	rssKB int
	args  []string
}

// isSession says the process is a session's `attach` relay: the session itself runs in the main
// process, and the relay lives exactly as long as the session's connection to it.
func (a pfAgentProc) isSession() bool { return len(a.args) >= 2 && a.args[1] == "attach" }
func (a pfAgentProc) isMain() bool {
	return len(a.args) >= 1 && (len(a.args) == 1 || strings.HasPrefix(a.args[1], "-"))
}

// pfAgentProcs lists the agent's processes (main and session relays) in pod with their RSS.
func pfAgentProcs(ctx context.Context, ns, pod string) ([]pfAgentProc, error) {
	agents, err := hostAgentProcs(ctx, ns, pod)
	if err != nil {
		return nil, err
	}
	var procs []pfAgentProc
	for _, a := range agents {
		rss, _ := strconv.Atoi(strings.TrimSuffix(a.field("VmRSS"), " kB"))
		procs = append(procs, pfAgentProc{pid: a.pid, rssKB: rss, args: a.args})
	}
	return procs, nil
}

// pfSplitAgentProcs returns the main process (nil if none) and the session processes.
func pfSplitAgentProcs(procs []pfAgentProc) (main *pfAgentProc, sessions []pfAgentProc) {
	for i := range procs {
		switch {
		case procs[i].isSession():
			sessions = append(sessions, procs[i])
		case procs[i].isMain():
			main = &procs[i]
		}
	}
	return main, sessions
}

// pfTCPSocket is one line of /proc/net/tcp{,6}.
type pfTCPSocket struct {
	localPort, remotePort int
	state                 string // hex, "0A" is LISTEN, "01" ESTABLISHED
	uid                   int
	loopback              bool
}

// pfTCPSockets reads the pod network namespace's TCP sockets through a container.
func pfTCPSockets(ctx context.Context, ns, pod, container string) ([]pfTCPSocket, error) {
	out, err := pfPodSh(ctx, ns, pod, container, "cat /proc/net/tcp /proc/net/tcp6")
	if err != nil {
		return nil, err
	}
	var socks []pfTCPSocket
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || f[0] == "sl" {
			continue
		}
		lhost, lport, ok1 := strings.Cut(f[1], ":")
		_, rport, ok2 := strings.Cut(f[2], ":")
		if !ok1 || !ok2 {
			continue
		}
		lp, _ := strconv.ParseUint(lport, 16, 16)
		rp, _ := strconv.ParseUint(rport, 16, 16)
		uid, _ := strconv.Atoi(f[7])
		socks = append(socks, pfTCPSocket{
			localPort: int(lp), remotePort: int(rp), state: f[3], uid: uid,
			// 127.0.0.1 and ::1 as the kernel prints them (little-endian words).
			loopback: lhost == "0100007F" || lhost == "00000000000000000000000001000000",
		})
	}
	return socks, nil
}

// pfAgentListeners are the loopback ports the non-root agent (inject.NonRootUID) listens on: one data port per
// live session; the main process listens on nothing.
func pfAgentListeners(ctx context.Context, ns, pod, container string) ([]int, error) {
	socks, err := pfTCPSockets(ctx, ns, pod, container)
	if err != nil {
		return nil, err
	}
	var ports []int
	for _, s := range socks {
		if s.state == "0A" && s.uid == int(inject.NonRootUID) && s.loopback {
			ports = append(ports, s.localPort)
		}
	}
	return ports, nil
}

// pfPodEphemeral returns the pod's ephemeral container names and its resourceVersion.
func pfPodEphemeral(ctx context.Context, t *testing.T, ns, pod string) ([]string, string) {
	t.Helper()
	p, err := client(t).CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod %s/%s: %v", ns, pod, err)
	}
	var names []string
	for _, c := range p.Spec.EphemeralContainers {
		names = append(names, c.Name)
	}
	return names, p.ResourceVersion
}

// pfTargetSession makes a namespace with an echo pod "target", forwards a free local port to its
// :8080 and checks one request, so a test starts from a working session.
func pfTargetSession(ctx context.Context, t *testing.T, prefix string, extra ...string) (ns string, pf *pfProc, port int) {
	t.Helper()
	ns = newNamespace(t, prefix)
	createPodReady(ctx, t, ns, pfEchoPod(t, "target", nil, false))
	pf = pfStart(t, "pf", ns, append([]string{"pod/target", ":8080"}, extra...)...)
	port, _ = pf.localPort("localhost:8080", 30*time.Second)
	pf.connected(time.Minute)
	pfMustEcho(ctx, t, port, "target")
	return ns, pf, port
}
