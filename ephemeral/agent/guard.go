package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/netfilter"
)

// runGuard is `trafficlab-agent guard ID PID [READY-FD]`: it deletes session ID's nftables table once process
// PID has exited. Kernels before 5.12 refuse the owner flag that otherwise makes the kernel delete
// the table with its socket (netfilter.Owned.KernelOwned reports false), and then nothing else
// removes the redirect of a session that was killed.
//
// The session starts it as a child, passing its own pid (so that pid cannot be reused before the
// guard watches it), in a session of its own (setsid) so that signals to the session's process
// group spare it. After a normal exit the table is already gone and the guard finds nothing to do.
// A signal stops the guard without deleting anything: the session may still be running.
//
// READY-FD, when given, is a pipe on which the guard writes one byte once it watches PID, then
// closes: the session waits for it and fails its steal if it never comes, so that no redirect runs
// believing itself guarded while its guard is dead.
func runGuard(ctx context.Context, args []string, stderr io.Writer) error {
	if len(args) != 2 && len(args) != 3 {
		fmt.Fprintln(stderr, "usage: trafficlab-agent guard SESSION-ID PID [READY-FD]")
		return fmt.Errorf("%w: guard takes a session id, a pid and optionally a ready fd", errUsage)
	}
	watching := func() {}
	if len(args) == 3 {
		fd, err := strconv.Atoi(args[2])
		if err != nil || fd < 3 {
			fmt.Fprintf(stderr, "guard: ready fd %q is not a descriptor above stderr\n", args[2])
			return fmt.Errorf("%w: ready fd %q", errUsage, args[2])
		}
		ready := os.NewFile(uintptr(fd), "guard-ready")
		defer ready.Close()
		watching = func() {
			_, _ = ready.Write([]byte{1})
			ready.Close()
		}
	}
	id := args[0]
	if err := netfilter.ValidateID(id); err != nil {
		fmt.Fprintf(stderr, "guard: %v\n", err)
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	pid, err := strconv.Atoi(args[1])
	if err != nil || pid <= 0 {
		fmt.Fprintf(stderr, "guard: pid %q is not a process id\n", args[1])
		return fmt.Errorf("%w: pid %q is not a process id", errUsage, args[1])
	}
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("session", id, "pid", pid)
	if err := netfilter.Guard(ctx, id, pid, watching); err != nil {
		if ctx.Err() != nil {
			log.Info("guard stopped while the session runs; its table stays")
			return nil
		}
		return fmt.Errorf("guard of session %q: %w", id, err)
	}
	log.Info("attachment process gone; its nftables table is removed")
	return nil
}
