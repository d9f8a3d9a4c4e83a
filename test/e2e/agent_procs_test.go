//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The agent has a PID namespace of its own, which no container of the pod can look into, so the tests
// see its processes as this host does (the cluster runs on this machine, and the tests run as root):
// every process whose cgroup is one of the pod's, by host PID.

// hostProc is one process of a pod, as this host sees it.
type hostProc struct {
	pid    int
	args   []string
	cgroup string // the whole /proc/PID/cgroup
	status string // the whole /proc/PID/status
}

// field is a line's value in /proc/PID/status ("VmRSS", "CapBnd", ...), trimmed; empty if absent.
func (p hostProc) field(name string) string {
	for _, line := range strings.Split(p.status, "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func (p hostProc) isAgent() bool { return len(p.args) > 0 && p.args[0] == "/trafficlab-agent" }

// podUID reads the pod's UID, which every cgroup path of its containers contains.
func podUID(ctx context.Context, ns, pod string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "kubectl", "get", "pod", "-n", ns, pod, "-o", "jsonpath={.metadata.uid}").Output()
	if err != nil {
		return "", fmt.Errorf("uid of pod %s/%s: %w", ns, pod, err)
	}
	if len(out) == 0 {
		return "", fmt.Errorf("pod %s/%s has no uid", ns, pod)
	}
	return string(out), nil
}

// hostPodProcs lists the processes of pod on this host. The cgroup path carries the pod's UID as is
// (cgroupfs driver) or with "_" for "-" (systemd driver).
func hostPodProcs(ctx context.Context, ns, pod string) ([]hostProc, error) {
	uid, err := podUID(ctx, ns, pod)
	if err != nil {
		return nil, err
	}
	marks := []string{"pod" + uid, "pod" + strings.ReplaceAll(uid, "-", "_")}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var procs []hostProc
	for _, d := range dirs {
		cg, err := os.ReadFile(filepath.Join(d, "cgroup"))
		if err != nil || !bytes.Contains(cg, []byte(marks[0])) && !bytes.Contains(cg, []byte(marks[1])) {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || len(cmdline) == 0 {
			continue // gone, or a zombie
		}
		status, err := os.ReadFile(filepath.Join(d, "status"))
		if err != nil {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(d))
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		procs = append(procs, hostProc{pid: pid, args: args, cgroup: string(cg), status: string(status)})
	}
	return procs, nil
}

// hostAgentProcs are the trafficlab-agent processes of pod (every agent container's).
func hostAgentProcs(ctx context.Context, ns, pod string) ([]hostProc, error) {
	procs, err := hostPodProcs(ctx, ns, pod)
	if err != nil {
		return nil, err
	}
	var agents []hostProc
	for _, p := range procs {
		if p.isAgent() {
			agents = append(agents, p)
		}
	}
	return agents, nil
}
