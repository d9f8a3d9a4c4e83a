// Command trafficlab-agent is the process that kubectl trafficlab injects into a target pod as an
// ephemeral container. It shares the pod's network namespace, has a PID namespace of its own (so an
// app container's restart does not touch it), and must never disturb the app: every agent process
// offers itself as the pod's first OOM victim and makes itself non-dumpable first thing, logs to stderr
// only, caps its own heap, and writes to stdout only in the exec'd subcommands, whose stdout is the
// plugin's exec stream (the runtime logs a container's own stdout to node files, never an exec's).
//
//	trafficlab-agent [--name=C] [--idle-timeout=10m]
//	        the container's main process, PID 1: serves every session on the abstract unix socket
//	        @trafficlab-agent.C (C: the agent container's name), so what a session installs (owned
//	        nftables tables) lives as long as this process; exits after the idle timeout with no
//	        session attached (at most 10m with NET_ADMIN or NET_RAW)
//	trafficlab-agent attach --name=C [--debug] [--dial-timeout=D]
//	        one plugin session, exec'd by the plugin: relays stdin/stdout (the control channel) to the
//	        main process, which checks with SO_PEERCRED that it is a process of this container and
//	        runs the session; data arrives on a 127.0.0.1 port
//	trafficlab-agent relay 127.0.0.1:PORT
//	        the slow data path when port-forward is forbidden: stdin/stdout joined to a loopback port
//	trafficlab-agent sessions --name=C [--end=ID --by-user=U --by-host=H]
//	        exec'd by `kubectl trafficlab sessions`: asks the main process (same socket and peer check
//	        as attach) for its sessions and prints them as JSON, or ends session ID, whose plugin is
//	        told who ended it
//	trafficlab-agent profile --name=C [--kind=cpu|heap] [--seconds=30]
//	        exec'd by hand: asks the main process (same socket and peer check as attach) for a CPU
//	        profile over the given seconds, or a heap profile, and writes it to stdout (pprof format)
//	trafficlab-agent guard SESSION-ID PID
//	        removes a table the kernel cannot own (before 5.12) once PID is gone
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/harden"
)

// version is set at link time with -ldflags "-X main.version=v1.2.3". The linker can only set
// package variables, which is why this is not a constant.
var version = ""

func main() {
	// Every agent process hardens itself first: an exec'd process starts from the runtime's OOM score and
	// dumpable state, not the main process's. A failure is logged, not fatal: a seccomp profile or LSM
	// may refuse the prctl or the write, and an agent that then keeps the defaults is no worse than
	// before this hardening existed, whereas exiting would make trafficlab unusable on that cluster.
	// Only the main process's stderr is the container log, where an admin looks; an exec'd process's
	// stderr reaches the plugin, which shows it at -v=4.
	if err := harden.Process(); err != nil {
		fmt.Fprintf(os.Stderr, "trafficlab-agent: warning: %v; going on without it\n", err)
	}
	applyMemoryLimit(os.LookupEnv)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	var err error
	args := os.Args[1:]
	switch {
	case len(args) > 0 && args[0] == "attach":
		//nolint:forbidigo // the exec stream's stdout is the control channel, and exec output is not logged
		err = runAttach(args[1:], os.Stdin, os.Stdout, os.Stderr)
	case len(args) > 0 && args[0] == "relay":
		//nolint:forbidigo // the exec stream's stdout carries the relayed bytes, and exec output is not logged
		err = runRelay(ctx, args[1:], os.Stdin, os.Stdout, os.Stderr)
	case len(args) > 0 && args[0] == "sessions":
		//nolint:forbidigo // the exec stream's stdout carries the answer, and exec output is not logged
		err = runSessions(args[1:], os.Stdout, os.Stderr)
	case len(args) > 0 && args[0] == "profile":
		//nolint:forbidigo // the exec stream's stdout carries the profile, and exec output is not logged
		err = runProfile(args[1:], os.Stdout, os.Stderr)
	case len(args) > 0 && args[0] == "guard":
		err = runGuard(ctx, args[1:], os.Stderr)
	default:
		err = run(ctx, args, processEnv(), os.Stderr)
	}
	stop()
	switch {
	case err == nil:
	case errors.Is(err, errUsage), errors.Is(err, flag.ErrHelp):
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "trafficlab-agent: %v\n", err)
		os.Exit(1)
	}
}
