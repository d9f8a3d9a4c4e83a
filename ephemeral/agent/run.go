package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"time"
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

	defaultPollInterval = time.Second
)

// errUsage marks command-line mistakes so main can exit with status 2 after the flag package
// has already printed the reason.
var errUsage = errors.New("usage error")

// config is the parsed command line of the container's main process.
type config struct {
	showVersion bool
	idleTimeout time.Duration
	targetPID   int
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("trafficlab-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&cfg.showVersion, "version", false, "print the version to stderr and exit")
	fs.DurationVar(&cfg.idleTimeout, "idle-timeout", defaultIdleTimeout,
		"exit after this long without a session; 0 disables the timeout")
	fs.IntVar(&cfg.targetPID, "target-pid", 1,
		"exit when this process goes away (PID 1 is the target container's process in its PID namespace)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cfg, err
		}
		return cfg, fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected arguments: %q\n", fs.Args())
		return cfg, fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	if cfg.idleTimeout < 0 {
		fmt.Fprintf(stderr, "--idle-timeout must not be negative, got %q\n", cfg.idleTimeout)
		return cfg, fmt.Errorf("%w: negative --idle-timeout %q", errUsage, cfg.idleTimeout)
	}
	return cfg, nil
}

// env is what the main process observes of the pod, injectable for tests.
type env struct {
	// sessions counts the live `trafficlab-agent attach` processes.
	sessions func() int
	// alive reports whether the target process still runs; it is built once from --target-pid.
	alive func(pid int) func() bool
	poll  time.Duration
}

// run is the container's main process. Ephemeral containers cannot be removed from a pod, so the
// agent removes itself from the running set: it exits after the idle timeout with no session, when
// the target's process is gone, or on a signal. Sessions are separate exec'd processes, so an exit
// here never cuts one short: the idle clock only runs while none is alive.
func run(ctx context.Context, args []string, e env, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
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
	if e.poll <= 0 {
		e.poll = defaultPollInterval
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	start := time.Now()
	log.Info("agent started",
		"version", agentVersion(),
		"pid", os.Getpid(),
		"idle_timeout", cfg.idleTimeout,
		"target_pid", cfg.targetPID,
		"memory_limit", debug.SetMemoryLimit(-1))
	reason := waitForStop(ctx, cfg, e)
	log.Info("agent stopped", "reason", reason, "uptime", time.Since(start))
	return nil
}

// waitForStop blocks until one of the stop conditions holds and says which one.
func waitForStop(ctx context.Context, cfg config, e env) string {
	alive := e.alive(cfg.targetPID)
	tick := time.NewTicker(e.poll)
	defer tick.Stop()
	lastActive := time.Now()
	for {
		select {
		case <-ctx.Done():
			// signal.NotifyContext cancels with a cause that names the signal.
			return context.Cause(ctx).Error()
		case <-tick.C:
		}
		if !alive() {
			return fmt.Sprintf("target process %d is gone", cfg.targetPID)
		}
		if e.sessions() > 0 {
			lastActive = time.Now()
			continue
		}
		if cfg.idleTimeout > 0 && time.Since(lastActive) >= cfg.idleTimeout {
			return "idle timeout"
		}
	}
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
