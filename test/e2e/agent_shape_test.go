//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
)

// The agent's shape (issue 16): a PID namespace of its own, so that an app restart leaves the session
// alone; every agent process hardened; a NET_RAW agent that holds nothing else.

var restartedRE = regexp.MustCompile(`^container "main" restarted \(exit code 137\); the session goes on$`)

// TestStealSurvivesAppRestart: the app container's process is killed mid-steal. The steal goes on and
// the local process keeps getting the pod's requests, the plugin reports the restart, and after Ctrl-C
// the pod answers itself with no trafficlab table left. With the agent in the app's PID namespace, the
// kill ended every agent process and the session with it ("exit code 137").
func TestStealSurvivesAppRestart(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	st := newStealTarget(ctx, t, "steal-apprestart")
	p := stealStart(t, "steal", st.ns, "pod/target", "--port", fmt.Sprintf("8080:%d", st.local.Port))
	waitAnswer(ctx, t, 10*time.Second, st.podURL("/"), "laptop")

	app := appProcess(ctx, t, st.ns, "target", "main")
	t.Logf("killing the app's process, host pid %d", app)
	if err := syscall.Kill(app, syscall.SIGKILL); err != nil {
		t.Fatalf("kill the app: %v", err)
	}
	// Whatever the app's state (dead, restarting, up again), its port stays stolen.
	waitAnswer(ctx, t, 10*time.Second, st.podURL("/while-restarting"), "laptop")
	p.waitLine(0, "stderr", restartedRE, 2*time.Minute)
	eventually(ctx, t, time.Minute, "the app container running again", func(ctx context.Context) (bool, string) {
		pod, err := client(t).CoreV1().Pods(st.ns).Get(ctx, "target", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, s := range pod.Status.ContainerStatuses {
			if s.Name == "main" {
				return s.RestartCount == 1 && s.State.Running != nil, fmt.Sprintf("restarts %d, state %+v", s.RestartCount, s.State)
			}
		}
		return false, "no status for container main"
	})
	waitAnswer(ctx, t, 10*time.Second, st.podURL("/after-restart"), "laptop")
	var paths []string
	for _, r := range st.local.requests() {
		paths = append(paths, r.Path)
	}
	for _, want := range []string{"/while-restarting", "/after-restart"} {
		if !slices.Contains(paths, want) {
			t.Errorf("the local process never got %s; it got %q", want, paths)
		}
	}
	select {
	case <-p.done:
		t.Fatalf("the steal ended with the app's restart: %v\n%s", p.waitErr, p.output())
	default:
	}

	if err := p.stop(); err != nil {
		t.Errorf("steal after SIGINT: exit %v, want 0; output:\n%s", err, p.output())
	}
	waitAnswer(ctx, t, 10*time.Second, st.podURL("/after"), "target")
	if tables := trafficlabTables(t, st.netns); len(tables) != 0 {
		t.Errorf("trafficlab tables left after the steal: %q", tables)
	}
}

// appProcess is the host PID of the first process of container in pod: the one whose death restarts it.
func appProcess(ctx context.Context, t *testing.T, ns, pod, container string) int {
	t.Helper()
	p, err := client(t).CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var id string
	for _, s := range p.Status.ContainerStatuses {
		if s.Name == container {
			_, id, _ = strings.Cut(s.ContainerID, "://")
		}
	}
	if id == "" {
		t.Fatalf("container %s of pod %s/%s has no container id", container, ns, pod)
	}
	procs, err := hostPodProcs(ctx, ns, pod)
	if err != nil {
		t.Fatal(err)
	}
	first := 0
	for _, pr := range procs {
		if strings.Contains(pr.cgroup, id) && (first == 0 || pr.pid < first) {
			first = pr.pid
		}
	}
	if first == 0 {
		t.Fatalf("no process of container %s (%s) on this host", container, id)
	}
	return first
}

// TestAgentProcessesHardened: every process of a privileged (root, NET_ADMIN) and of an unprivileged
// (trafficlab's own UID) agent, the main processes, the sessions' attach relays and the data relays,
// has oom_score_adj 1000 and is not dumpable. An exec'd process does not inherit either from the main
// process, so each must set both itself. The pod is Guaranteed, whose containers the runtime starts
// below 1000 (a BestEffort pod's start at 1000 and would prove nothing).
func TestAgentProcessesHardened(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	ns := newNamespace(t, "agent-hardened")
	pod := pfEchoPod(t, "target", nil, false)
	res := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("64Mi")}
	pod.Spec.Containers[0].Resources = corev1.ResourceRequirements{Requests: res, Limits: res}
	pod = createPodReady(ctx, t, ns, pod)
	local := startLocalServer(t)
	podURL := "http://" + net.JoinHostPort(pod.Status.PodIP, "8080") + "/"
	app := appProcess(ctx, t, ns, "target", "main")
	if score := oomScoreAdj(t, app); score == "1000" {
		t.Fatalf("the app's process already has oom_score_adj 1000, so the agent's would prove nothing")
	} else {
		t.Logf("the runtime gives this pod's containers oom_score_adj %s", score)
	}

	// The port-forward's agent has no capability and runs as trafficlab's own UID; the steal then needs
	// NET_ADMIN, which that agent lacks, so it adds a root one, whose data path over exec adds
	// `trafficlab-agent relay` processes.
	pf := pfStart(t, "pf", ns, "pod/target", ":8080")
	pf.localPort("localhost:8080", time.Minute)
	pf.connected(time.Minute)
	steal := stealStart(t, "steal", ns, "pod/target", "--data-path", "exec", "--port", fmt.Sprintf("8080:%d", local.Port))
	waitAnswer(ctx, t, 10*time.Second, podURL, "laptop")

	var procs []hostProc
	eventually(ctx, t, 30*time.Second, "two agents' main processes, attach relays and data relays", func(ctx context.Context) (bool, string) {
		var err error
		procs, err = hostAgentProcs(ctx, ns, "target")
		if err != nil {
			return false, err.Error()
		}
		kinds := map[string]int{}
		for _, p := range procs {
			kinds[agentProcKind(p)]++
		}
		return kinds["main"] == 2 && kinds["attach"] == 2 && kinds["relay"] >= 1, fmt.Sprint(kinds)
	})
	users := map[[2]int]bool{}
	for _, p := range procs {
		id := procIDs(t, p)
		users[id] = true
		if score := oomScoreAdj(t, p.pid); score != "1000" {
			t.Errorf("agent %s process (pid %d, uid/gid %v) has oom_score_adj %s, want 1000", agentProcKind(p), p.pid, id, score)
		}
		if err := readableAs(id, p.pid); err == nil {
			t.Errorf("agent %s process (pid %d, uid/gid %v) is dumpable: its /proc/PID/exe is readable by its own user", agentProcKind(p), p.pid, id)
		} else if !errors.Is(err, errDenied) {
			t.Fatal(err)
		} else {
			t.Logf("agent %s process pid %d uid/gid %v: oom_score_adj 1000, not dumpable", agentProcKind(p), p.pid, id)
		}
	}
	if len(users) != 2 || !users[[2]int{0, 0}] || !users[[2]int{int(inject.NonRootUID), int(inject.NonRootUID)}] {
		t.Errorf("agent processes run as uid/gid %v, want root (NET_ADMIN) and trafficlab's own UID and GID", users)
	}
	// The check itself: a dumpable process of each user is readable by that user.
	for id := range users {
		sleep := exec.Command("setpriv", "--reuid", strconv.Itoa(id[0]), "--regid", strconv.Itoa(id[1]), "--clear-groups", "--bounding-set", "-sys_ptrace", "sleep", "300")
		if err := sleep.Start(); err != nil {
			t.Fatal(err)
		}
		// Until setpriv has exec'd sleep, the process is root's with every capability.
		eventually(ctx, t, 10*time.Second, "sleep running as "+fmt.Sprint(id), func(context.Context) (bool, string) {
			exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", sleep.Process.Pid))
			return err == nil && strings.HasSuffix(exe, "/sleep"), exe
		})
		err := readableAs(id, sleep.Process.Pid)
		_ = sleep.Process.Kill()
		_ = sleep.Wait()
		if err != nil {
			t.Errorf("a dumpable process of uid/gid %v is not readable by its user, so the check proves nothing: %v", id, err)
		}
	}
	for _, p := range []*pfProc{pf, steal} {
		if err := p.stop(); err != nil {
			t.Errorf("%s after SIGINT: exit %v; output:\n%s", p.name, err, p.output())
		}
	}
}

func oomScoreAdj(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// agentProcKind names an agent process by its subcommand: main, attach, relay or guard.
func agentProcKind(p hostProc) string {
	if len(p.args) < 2 || strings.HasPrefix(p.args[1], "-") {
		return "main"
	}
	return p.args[1]
}

// procIDs is the process's real UID and GID: the kernel lets a process read another's /proc entries
// as "the same user" only if all its UIDs and GIDs match.
func procIDs(t *testing.T, p hostProc) [2]int {
	t.Helper()
	var id [2]int
	for i, name := range []string{"Uid", "Gid"} {
		f := strings.Fields(p.field(name))
		if len(f) < 1 {
			t.Fatalf("pid %d: no %s line in its status", p.pid, name)
		}
		v, err := strconv.Atoi(f[0])
		if err != nil {
			t.Fatal(err)
		}
		id[i] = v
	}
	return id
}

var errDenied = errors.New("permission denied")

// readableAs resolves /proc/PID/exe as uid/gid id without CAP_SYS_PTRACE (ptrace_may_access, read mode). For a
// process of the same user whose capabilities are a subset of the reader's (all but CAP_SYS_PTRACE), the
// kernel refuses only if the process is not dumpable; errDenied says it refused. (/proc/PID/environ
// would not do: this machine's kernel lets it be opened regardless.)
func readableAs(id [2]int, pid int) error {
	out, err := exec.Command("setpriv", "--reuid", strconv.Itoa(id[0]), "--regid", strconv.Itoa(id[1]), "--clear-groups", "--bounding-set", "-sys_ptrace",
		"readlink", "-v", fmt.Sprintf("/proc/%d/exe", pid)).CombinedOutput()
	switch {
	case err == nil:
		return nil
	case strings.Contains(string(out), "Permission denied"):
		return errDenied
	}
	return fmt.Errorf("resolve /proc/%d/exe as uid/gid %v: %w: %s", pid, id, err, out)
}

// capNetRaw is CAP_NET_RAW's bit in /proc/PID/status's capability masks.
const capNetRaw = 1 << 13

// TestNetRawAgentCapabilities: a sniffing agent (dump) starts on this cluster's runtime with every
// capability but NET_RAW dropped by name, and adds none; with --add-net-raw it drops ALL and adds
// NET_RAW. Either way its processes hold NET_RAW and nothing else, even in their bounding set.
func TestNetRawAgentCapabilities(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	for _, tc := range []struct {
		name    string
		args    []string
		wantAdd []corev1.Capability
	}{
		{name: "keeping the runtime's NET_RAW"},
		{name: "--add-net-raw", args: []string{"--add-net-raw"}, wantAdd: []corev1.Capability{"NET_RAW"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNamespace(t, "netraw")
			createPodReady(ctx, t, ns, pfEchoPod(t, "target", nil, false))
			p := pluginStart(t, "dump", "dump", ns, append([]string{"pod/target", "--port", "8080", "-o", "json"}, tc.args...)...)
			p.waitLine(0, "stderr", regexp.MustCompile(`capturing ports 8080 in pod`), 3*time.Minute)

			pod, err := client(t).CoreV1().Pods(ns).Get(ctx, "target", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(pod.Spec.EphemeralContainers) != 1 {
				t.Fatalf("ephemeral containers %d, want one agent", len(pod.Spec.EphemeralContainers))
			}
			caps := pod.Spec.EphemeralContainers[0].SecurityContext.Capabilities
			if !slices.Equal(caps.Add, tc.wantAdd) {
				t.Errorf("agent adds %q, want %q", caps.Add, tc.wantAdd)
			}
			if slices.Contains(caps.Drop, "NET_RAW") || (len(caps.Drop) != 1 && len(caps.Drop) < 40) {
				t.Errorf("agent drops %q, want ALL or every capability but NET_RAW by name", caps.Drop)
			}
			procs, err := hostAgentProcs(ctx, ns, "target")
			if err != nil {
				t.Fatal(err)
			}
			if len(procs) == 0 {
				t.Fatal("no agent process on this host")
			}
			for _, pr := range procs {
				for _, set := range []string{"CapBnd", "CapPrm", "CapEff"} {
					v, err := strconv.ParseUint(pr.field(set), 16, 64)
					if err != nil || v != capNetRaw {
						t.Errorf("agent %s process %d: %s %q, want NET_RAW alone (%016x)", agentProcKind(pr), pr.pid, set, pr.field(set), capNetRaw)
					}
				}
			}
			if err := p.stop(); err != nil {
				t.Errorf("dump after SIGINT: exit %v; output:\n%s", err, p.output())
			}
		})
	}
}
