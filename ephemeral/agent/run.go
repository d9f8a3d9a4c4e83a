package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/budget"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/netfilter"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/steal"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

const (
	// devVersion is reported by builds made without -ldflags, so a stray local build is never
	// mistaken for a release.
	devVersion = "v0.0.0-dev"

	defaultIdleTimeout = 10 * time.Minute

	// defaultMemoryLimit keeps the agent's heap small: it runs inside the app's pod, and the app,
	// not the agent, must win if the pod comes near its memory limit. It is a soft limit (the GC
	// works harder as the heap approaches it); GOMEMLIMIT overrides it.
	defaultMemoryLimit = 64 << 20
)

// errUsage marks command-line mistakes so main can exit with status 2 after the flag package
// has already printed the reason.
var errUsage = errors.New("usage error")

// defaultName names the session socket when the main process was started by hand; the plugin passes
// the agent container's name, unique in the pod.
const defaultName = "agent"

// privileged are the capabilities that make a leftover agent worth exec'ing into: whoever may exec
// into the pod can run a session in it and steal (NET_ADMIN) or capture (NET_RAW) the pod's traffic.
const privileged = 1<<unix.CAP_NET_ADMIN | 1<<unix.CAP_NET_RAW

// parseFlags parses a subcommand's flags, which take no positional argument: a mistake is errUsage,
// after the flag package (or this) has printed it to stderr; -h is flag.ErrHelp.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected arguments: %q\n", fs.Args())
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	return nil
}

// config is the parsed command line of the container's main process.
type config struct {
	showVersion bool
	idleTimeout time.Duration
	name        string
}

func parseMainFlags(args []string, stderr io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("trafficlab-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&cfg.showVersion, "version", false, "print the version to stderr and exit")
	fs.DurationVar(&cfg.idleTimeout, "idle-timeout", defaultIdleTimeout,
		"exit after this long without a session; 0 disables the timeout (not for an agent with NET_ADMIN or NET_RAW)")
	fs.StringVar(&cfg.name, "name", defaultName, "the agent container's name, which names the session socket")
	if err := parseFlags(fs, args, stderr); err != nil {
		return cfg, err
	}
	if cfg.idleTimeout < 0 {
		fmt.Fprintf(stderr, "--idle-timeout must not be negative, got %q\n", cfg.idleTimeout)
		return cfg, fmt.Errorf("%w: negative --idle-timeout %q", errUsage, cfg.idleTimeout)
	}
	if cfg.name == "" {
		fmt.Fprintln(stderr, "--name must not be empty")
		return cfg, fmt.Errorf("%w: empty --name", errUsage)
	}
	return cfg, nil
}

// env is what the main process takes from its surroundings, injectable for tests.
type env struct {
	// capEff is the process's effective capability set (CapEff in /proc/self/status).
	capEff   func() (uint64, error)
	newTimer timerFunc
	serve    sessionFunc
	// sweep deletes the nftables tables of agents that are gone (netfilter.SweepStale).
	sweep func() ([]string, error)
	// getenv reads the container's environment, where the plugin puts the memory budget.
	getenv func(string) string
	// listening says on which of the ports the app still listens (netfilter.Listening).
	listening func(ports []uint16) ([]uint16, error)
}

func processEnv() env {
	return env{capEff: procCapEff, newTimer: realTimer, serve: serveSession, sweep: netfilter.SweepStale, getenv: os.Getenv,
		listening: netfilter.Listening}
}

// clampIdle keeps a privileged agent from staying for good: the plugin never asks for more than
// wire.MaxPrivilegedIdleTimeout for one, and this holds even for an agent started by other means.
func clampIdle(d time.Duration, capEff uint64) (time.Duration, bool) {
	if capEff&privileged != 0 && (d == 0 || d > wire.MaxPrivilegedIdleTimeout) {
		return wire.MaxPrivilegedIdleTimeout, true
	}
	return d, false
}

// run is the container's main process: it serves every session on its socket and, since ephemeral
// containers cannot be removed from a pod, removes itself from the running set: it exits after the idle
// timeout with no session attached, or on a signal, which ends the sessions first.
func run(ctx context.Context, args []string, e env, stderr io.Writer) error {
	cfg, err := parseMainFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if cfg.showVersion {
		// stderr, not stdout: nothing the agent prints may reach the container log.
		_, err := fmt.Fprintln(stderr, agentVersion())
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	mem, err := atStart(&cfg, e, log)
	if err != nil {
		return err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socketName(cfg.name), Net: "unix"})
	if err != nil {
		return fmt.Errorf("listen for sessions: %w", err)
	}
	// Every session runs in this process, draws on its one memory budget and steals through its one
	// dispatcher per pod port.
	steals, err := steal.NewHub(steal.Config{Log: log, Budget: mem}, cfg.name)
	if err != nil {
		ln.Close()
		return err
	}
	srv := newServer(func(ctx context.Context, a sessionIO) error {
		a.Budget = mem
		a.Steals = steals
		return e.serve(ctx, a)
	}, log)
	srv.about.IdleTimeout = wire.Millis(cfg.idleTimeout)
	sctx, endSessions := context.WithCancelCause(context.WithoutCancel(ctx))
	go srv.Serve(sctx, ln)
	start := time.Now()
	log.Info("agent started",
		"version", agentVersion(),
		"pid", os.Getpid(),
		"socket", socketName(cfg.name),
		"idle_timeout", cfg.idleTimeout,
		"memory_limit", debug.SetMemoryLimit(-1),
		"memory_budget", mem.Limit(),
		"memory_usage_from", mem.Source())
	reason := srv.waitIdle(ctx, cfg.idleTimeout, e.newTimer)
	if ctx.Err() != nil {
		relayWhileAppServes(steals.Ports, e.listening, e.newTimer, log)
	}
	ln.Close()
	endSessions(errors.New(reason))
	// A session ends its steal before it returns, which removes the redirect; the bound keeps a stuck one
	// from holding the container (the kernel then drops owned tables with the process).
	if !srv.Wait(10 * time.Second) {
		log.Warn("sessions still running at exit")
	}
	log.Info("agent stopped", "reason", reason, "uptime", time.Since(start))
	return nil
}

// appPoll is how often a terminating pod's agent looks whether the app still listens.
const appPoll = 200 * time.Millisecond

// relayWhileAppServes holds the agent's end while the app still listens on a port the agent steals.
// When a pod terminates, every container gets SIGTERM at once and an ephemeral container has no
// preStop hook: ending the sessions then would reset the stolen connections and the ones relayed to
// the app while the app drains its own (the pod is already out of the Service's endpoints, but
// clients hold connections). So the redirect and the relays stay until the app's listeners are gone
// (its containers have exited) or the kubelet's SIGKILL ends the agent too, which the kernel's owned
// tables survive no worse than an exit. An error reading the sockets ends the wait: the agent does not
// stay on a guess.
func relayWhileAppServes(ports func() []int, listening func([]uint16) ([]uint16, error), newTimer timerFunc, log *slog.Logger) {
	logged := false
	for {
		var asked []uint16
		for _, p := range ports() {
			asked = append(asked, uint16(p))
		}
		if len(asked) == 0 {
			return
		}
		serving, err := listening(asked)
		if err != nil {
			log.Warn("cannot tell whether the app still listens; ending the sessions", "err", err)
			return
		}
		if len(serving) == 0 {
			if logged {
				log.Info("the app no longer listens; ending the sessions")
			}
			return
		}
		if !logged {
			log.Info("the pod is terminating: relaying until the app stops listening", "ports", serving)
			logged = true
		}
		fire, _ := newTimer(appPoll)
		<-fire
	}
}

// atStart is what the main process does once, before it listens for the first session: whatever must
// hold before any session runs belongs here, in this order. It returns the memory budget every session
// shares.
func atStart(cfg *config, e env, log *slog.Logger) (*budget.Budget, error) {
	capEff, err := e.capEff()
	if err != nil {
		// Unknown capabilities count as privileged: the clamp is the safe side.
		log.Warn("cannot read the effective capabilities", "err", err)
		capEff = privileged
	}
	if d, clamped := clampIdle(cfg.idleTimeout, capEff); clamped {
		log.Warn("idle timeout clamped: an agent with NET_ADMIN or NET_RAW must not outlive its sessions for long",
			"asked", cfg.idleTimeout, "used", d)
		cfg.idleTimeout = d
	}
	// A table left by an agent killed outright on a kernel without the nftables owner flag (its whole
	// container OOM-killed) goes now, not only at the next steal. Only an agent with NET_ADMIN can list
	// tables, and only such an agent can have left one in this pod.
	if capEff&(1<<unix.CAP_NET_ADMIN) != 0 {
		deleted, err := e.sweep()
		if len(deleted) > 0 {
			log.Warn("removed nftables tables of agents that are gone", "tables", deleted)
		}
		if err != nil {
			log.Warn("sweep of leftover nftables tables", "err", err)
		}
	}
	mem, err := budget.FromEnv(e.getenv, log)
	if err != nil {
		return nil, fmt.Errorf("memory budget: %w", err)
	}
	return mem, nil
}

// procCapEff reads CapEff from /proc/self/status.
func procCapEff() (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, errors.New("no CapEff line in /proc/self/status")
}

func agentVersion() string {
	if version == "" {
		return devVersion
	}
	return version
}

// applyMemoryLimit sets the default soft memory limit unless the environment already chose one,
// and returns the limit in force.
func applyMemoryLimit(lookupEnv func(string) (string, bool)) int64 {
	if v, ok := lookupEnv("GOMEMLIMIT"); ok && v != "" {
		return debug.SetMemoryLimit(-1)
	}
	debug.SetMemoryLimit(defaultMemoryLimit)
	return defaultMemoryLimit
}
