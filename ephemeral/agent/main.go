// Command trafficlab-agent is the process that kubectl trafficlab injects into a target pod as an
// ephemeral container. It shares the pod's network namespace and must never disturb the app: it logs
// to stderr only, caps its own heap, and writes to stdout only in the exec'd subcommands, whose stdout
// is the plugin's exec stream (the runtime logs a container's own stdout to node files, never an
// exec's).
//
//	trafficlab-agent [--idle-timeout=10m]    the container's main process: keeps the container up
//	                                          while sessions come and go
//	trafficlab-agent attach                 one plugin session, exec'd by the plugin: control on
//	                                          stdin/stdout, data on a 127.0.0.1 port
//	trafficlab-agent relay 127.0.0.1:PORT    the slow data path when port-forward is forbidden:
//	                                          stdin/stdout joined to a loopback port
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is set at link time with -ldflags "-X main.version=v1.2.3". The linker can only set
// package variables, which is why this is not a constant.
var version = ""

func main() {
	applyMemoryLimit(os.LookupEnv)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	var err error
	args := os.Args[1:]
	switch {
	case len(args) > 0 && args[0] == "attach":
		//nolint:forbidigo // the exec stream's stdout is the control channel, and exec output is not logged
		err = runSession(ctx, args[1:], os.Stdin, os.Stdout, os.Stderr)
	case len(args) > 0 && args[0] == "relay":
		//nolint:forbidigo // the exec stream's stdout carries the relayed bytes, and exec output is not logged
		err = runRelay(ctx, args[1:], os.Stdin, os.Stdout, os.Stderr)
	case len(args) > 0 && args[0] == "guard":
		err = runGuard(ctx, args[1:], os.Stderr)
	default:
		err = run(ctx, args, procEnv(), os.Stderr)
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
