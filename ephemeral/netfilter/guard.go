package netfilter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// procPollInterval is how often Guard looks at /proc on kernels without pidfd_open (before 5.3).
const procPollInterval = 500 * time.Millisecond

// Guard waits until process pid has exited, then deletes table inet trafficlab_<id> in the calling
// thread's network namespace; a table that is already gone is not an error. It is for kernels
// that refused the owner flag (Owned.KernelOwned is false): there, nothing else removes the table
// of a session process that was killed. Guard returns ctx's error, deleting nothing, if ctx ends
// first.
//
// The process must be alive when Guard starts, or at least not replaced yet by another one with
// the same pid; a session that starts its guard as a child passing its own pid ensures that.
// watching, if not nil, is called once Guard watches the process, so that its starter knows the
// table is guarded.
func Guard(ctx context.Context, id string, pid int, watching func()) error {
	return guard(ctx, id, pid, unix.PidfdOpen, watching)
}

// pidfdOpener is unix.PidfdOpen; tests refuse it as a seccomp profile would.
type pidfdOpener func(pid, flags int) (int, error)

func guard(ctx context.Context, id string, pid int, pidfdOpen pidfdOpener, watching func()) error {
	if _, err := TableName(id); err != nil {
		return err
	}
	if pid <= 0 {
		return fmt.Errorf("invalid pid %d", pid)
	}
	if watching == nil {
		watching = func() {}
	}
	if err := waitExit(ctx, pid, pidfdOpen, watching); err != nil {
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open nftables connection: %w", err)
	}
	return Delete(c, id)
}

// waitExit returns once process pid has exited, calling watching once it watches. Any refusal of
// pidfd_open other than "no such process" falls back to polling /proc: ENOSYS before Linux 5.3, but
// also EPERM from a seccomp profile that does not list the call (older container runtimes' default
// profiles), or a limit on open files. A guard that gave up there would leave the table unguarded.
func waitExit(ctx context.Context, pid int, pidfdOpen pidfdOpener, watching func()) error {
	fd, err := pidfdOpen(pid, 0)
	switch {
	case errors.Is(err, unix.ESRCH):
		watching()
		return nil
	case err != nil:
		return pollProc(ctx, pid, watching)
	}
	defer unix.Close(fd)
	watching()
	// A pidfd polls readable once the process has exited, zombie or reaped; the timeout only
	// lets ctx be checked.
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 200)
		switch {
		case errors.Is(err, unix.EINTR):
		case err != nil:
			return fmt.Errorf("watch process %d: %w", pid, err)
		case n > 0:
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// pollProc watches /proc/PID/stat. The start time tells a recycled pid from the same process.
func pollProc(ctx context.Context, pid int, watching func()) error {
	start, alive := procStart(pid)
	watching()
	if !alive {
		return nil
	}
	t := time.NewTicker(procPollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if s, alive := procStart(pid); !alive || s != start {
			return nil
		}
	}
}

// procStart returns field 22 of /proc/PID/stat (start time) and whether the process still runs;
// a zombie has exited. Fields are counted after the parenthesised command name, which may itself
// contain spaces and parentheses.
func procStart(pid int) (string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return "", false
	}
	fields := bytes.Fields(b[i+1:])
	// fields[0] is field 3 (state), so field 22 is fields[19].
	if len(fields) < 20 || fields[0][0] == 'Z' || fields[0][0] == 'X' {
		return "", false
	}
	return string(fields[19]), true
}
