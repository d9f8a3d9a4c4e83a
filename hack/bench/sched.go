package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// setIdle moves every thread of the bench to SCHED_IDLE, or back to SCHED_NORMAL (SCHED_OTHER). The mirror suite
// uses it to stand the developer's side (the local server in this process, the plugin it starts) on
// a machine of its own: on a real cluster they do not run on the pod's node, here they share its two
// cores with the pod. Going back needs root, which the bench has.
func setIdle(idle bool) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	policy := uint32(unix.SCHED_NORMAL)
	if idle {
		policy = unix.SCHED_IDLE
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		// A thread that has just ended is gone by the time it is set.
		if err := unix.SchedSetAttr(tid, &unix.SchedAttr{Policy: policy}, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("set the scheduling policy of thread %d: %w", tid, err)
		}
	}
	return nil
}
