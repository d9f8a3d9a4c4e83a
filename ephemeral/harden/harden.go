// Package harden is what every agent process does first: it offers itself as the pod's first OOM victim
// and makes itself non-dumpable. Both are per process, and an exec'd process starts from the runtime's
// values, not the agent main process's, so each subcommand calls Process before anything else.
package harden

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// OOMScoreAdj is the most the kernel accepts: when the pod's memory cgroup runs out, the agent, not the
// app, is killed. Raising one's own score needs no privilege; lowering it does.
const OOMScoreAdj = 1000

// Process raises this process's OOM score to OOMScoreAdj, then makes it non-dumpable. The order matters:
// a non-dumpable process's /proc/self files belong to root, so a non-root agent could no longer write its
// own score afterwards. Non-dumpable keeps /proc/PID/{fd,mem,environ} of the agent closed to every other
// process of the pod, even one with the agent's UID.
func Process() error {
	return process("/proc/self/oom_score_adj", setNonDumpable)
}

func process(scorePath string, nonDumpable func() error) error {
	if err := os.WriteFile(scorePath, []byte(strconv.Itoa(OOMScoreAdj)), 0); err != nil {
		return fmt.Errorf("raise the OOM score: %w", err)
	}
	if err := nonDumpable(); err != nil {
		return fmt.Errorf("make the process non-dumpable: %w", err)
	}
	return nil
}

// ReadOOMScoreAdj reads a process's oom_score_adj, for tests and for the agent's start line.
func ReadOOMScoreAdj(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
