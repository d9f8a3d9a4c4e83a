//go:build linux && kernel

package budget

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/harden"
)

// The memory cgroup test's processes are this test binary run again with oomRoleEnv set: the app (the
// larger process, oom_score_adj 0) and the agent (harden.Process, then growing until the cgroup runs
// out).
const (
	oomRoleEnv = "TRAFFICLAB_OOM_ROLE"
	roleApp    = "app"
	roleAgent  = "agent"
	// The cgroup's limit and what each process holds: the app is larger than the agent will ever be
	// before the cgroup runs out, so the kernel's own measure (resident pages) alone would pick the app.
	oomLimit = 96 << 20
	appSize  = 56 << 20
	// agentSize is what the agent holds before it grows, 1 MiB at a time.
	agentSize = 8 << 20
)

func TestMain(m *testing.M) {
	if role := os.Getenv(oomRoleEnv); role != "" {
		os.Exit(oomChild(role))
	}
	os.Exit(m.Run())
}

// oomChild is one process of the test: it waits for its parent to put it in the cgroup ("go" on
// stdin), hardens itself if it is the agent, holds its memory, says "ready <its cgroup usage file>",
// and then, the agent on "grow", allocates until the kernel kills it.
func oomChild(role string) int {
	in := bufio.NewReader(os.Stdin)
	if line, _ := in.ReadString('\n'); line != "go\n" {
		return 2
	}
	size := appSize
	if role == roleAgent {
		if err := harden.Process(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		size = agentSize
	} else if err := os.WriteFile("/proc/self/oom_score_adj", []byte("0"), 0); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := hold(size); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cg, err := FindCgroup(HostPaths())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("ready %s\n", cg.File)
	if line, _ := in.ReadString('\n'); line != "grow\n" {
		// The parent's stdin closing is the app's end.
		return 0
	}
	for {
		if _, err := hold(1 << 20); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
}

// hold maps n bytes of anonymous memory, resident at once (no heap, no GC between the test and the
// cgroup's count).
func hold(n int) ([]byte, error) {
	return unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
}

// memcg is a memory cgroup the test made, with the file that counts its OOM kills.
type memcg struct {
	dir, procs, usage, events string
	killsKey                  string
}

// newMemcg makes a memory cgroup limited to limit bytes without swap: cgroup v2 where its memory
// controller is, else under this process's own cgroup of v1's memory controller (hybrid hosts, this
// machine's among them). It is removed when the test ends.
func newMemcg(t *testing.T, limit int64) memcg {
	t.Helper()
	name := fmt.Sprintf("trafficlab-oom-%d", os.Getpid())
	write := func(dir, file, v string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, file), []byte(v), 0); err != nil {
			t.Fatalf("set %s: %v", file, err)
		}
	}
	var cg memcg
	if ctrl, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers"); err == nil && hasField(strings.ReplaceAll(strings.TrimSpace(string(ctrl)), " ", ","), "memory") {
		// The root cgroup is exempt from v2's no-internal-processes rule: a child of it can limit
		// memory whatever this process's own cgroup has.
		cg.dir = filepath.Join("/sys/fs/cgroup", name)
		if err := os.Mkdir(cg.dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rmdirCgroup(t, cg.dir) })
		write(cg.dir, "memory.max", strconv.FormatInt(limit, 10))
		write(cg.dir, "memory.swap.max", "0")
		cg.procs, cg.usage, cg.events, cg.killsKey = filepath.Join(cg.dir, "cgroup.procs"), filepath.Join(cg.dir, "memory.current"), filepath.Join(cg.dir, "memory.events"), "oom_kill"
		return cg
	}
	own, err := FindCgroup(HostPaths())
	if err != nil || own.Version != 1 {
		t.Fatalf("no memory cgroup to make a child of: v2 has no memory controller here, and the v1 one is %+v (%v)", own, err)
	}
	cg.dir = filepath.Join(filepath.Dir(own.File), name)
	if err := os.Mkdir(cg.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rmdirCgroup(t, cg.dir) })
	write(cg.dir, "memory.limit_in_bytes", strconv.FormatInt(limit, 10))
	write(cg.dir, "memory.swappiness", "0")
	cg.procs, cg.usage, cg.events, cg.killsKey = filepath.Join(cg.dir, "cgroup.procs"), filepath.Join(cg.dir, "memory.usage_in_bytes"), filepath.Join(cg.dir, "memory.oom_control"), "oom_kill"
	return cg
}

// rmdirCgroup removes a cgroup once its processes are gone (the test kills and waits for them first).
func rmdirCgroup(t *testing.T, dir string) {
	if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
		t.Errorf("remove cgroup %s: %v", dir, err)
	}
}

// kills reads the cgroup's count of OOM kills.
func (c memcg) kills(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(c.events)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok && k == c.killsKey {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in %s", c.killsKey, c.events)
	return 0
}

// child is one running process of the test.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	done  chan struct{}
	state *os.ProcessState
}

func startChild(t *testing.T, cg memcg, role string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), oomRoleEnv+"="+role, "GOMEMLIMIT=off")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout), done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		c.state = cmd.ProcessState
		close(c.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-c.done
	})
	if err := os.WriteFile(cg.procs, []byte(strconv.Itoa(cmd.Process.Pid)), 0); err != nil {
		t.Fatalf("move the %s into the cgroup: %v", role, err)
	}
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
	line, err := c.out.ReadString('\n')
	if err != nil {
		t.Fatalf("the %s did not get ready: %v", role, err)
	}
	file, ok := strings.CutPrefix(strings.TrimSpace(line), "ready ")
	if !ok {
		t.Fatalf("the %s said %q", role, line)
	}
	// Its budget would read the cgroup it is in, not the one of the test that started it.
	if file != cg.usage {
		t.Errorf("the %s's budget reads %s, want its cgroup's %s", role, file, cg.usage)
	}
	return c
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// TestKernelOOMKillsTheAgentNotTheLargerApp: in a memory cgroup that runs out, as a pod at its limit
// does, the kernel kills the agent (harden.Process: oom_score_adj 1000), not the app, although the app
// holds more memory and keeps its score of 0. This machine's kubelet gives Guaranteed containers 0
// too, so this is the pod's case; -997 (what other runtimes give them) cannot be shown here.
func TestKernelOOMKillsTheAgentNotTheLargerApp(t *testing.T) {
	cg := newMemcg(t, oomLimit)
	app := startChild(t, cg, roleApp)
	agent := startChild(t, cg, roleAgent)
	for _, p := range []struct {
		name string
		c    *child
		want int
	}{{"app", app, 0}, {"agent", agent, harden.OOMScoreAdj}} {
		if got, err := harden.ReadOOMScoreAdj(p.c.cmd.Process.Pid); err != nil || got != p.want {
			t.Fatalf("the %s's oom_score_adj is %d (%v), want %d", p.name, got, err, p.want)
		}
	}
	before := cg.kills(t)
	if _, err := io.WriteString(agent.stdin, "grow\n"); err != nil {
		t.Fatal(err)
	}
	<-agent.done
	ws, _ := agent.state.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the agent ended with %v, want killed by the kernel", agent.state)
	}
	if n := cg.kills(t); n != before+1 {
		t.Errorf("the cgroup counts %d OOM kills, want %d: the agent's end was not its OOM", n, before+1)
	}
	// The agent's kill was the cgroup's only one: the app was never touched.
	if app.exited() {
		t.Fatalf("the app, the larger process at oom_score_adj 0, was killed too (%v)", app.state)
	}
	if err := app.cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the app is gone: %v", err)
	}
}
