package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/netfilter"
)

// runGuard is `trafficlab-agent guard ID PID`: it deletes session ID's nftables table once process
// PID has exited. Kernels before 5.12 refuse the owner flag that otherwise makes the kernel delete
// the table with its socket (netfilter.Owned.KernelOwned reports false), and then nothing else
// removes the redirect of a session that was killed.
//
// The session starts it as a child, passing its own pid (so that pid cannot be reused before the
// guard watches it), in a session of its own (setsid) so that signals to the session's process
// group spare it. After a normal exit the table is already gone and the guard finds nothing to do.
// A signal stops the guard without deleting anything: the session may still be running.
func runGuard(ctx context.Context, args []string, stderr io.Writer) error {
	if len(args) != 2 {
		fmt.Fprintln(stderr, "usage: trafficlab-agent guard SESSION-ID PID")
		return fmt.Errorf("%w: guard takes a session id and a pid", errUsage)
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
	if err := netfilter.Guard(ctx, id, pid); err != nil {
		if ctx.Err() != nil {
			log.Info("guard stopped while the session runs; its table stays")
			return nil
		}
		return fmt.Errorf("guard of session %q: %w", id, err)
	}
	log.Info("attachment process gone; its nftables table is removed")
	return nil
}
