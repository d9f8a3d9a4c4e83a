// Command kubectl-trafficlab is the kubectl plugin. Everything but process setup lives in pkg/cmd.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/trafficlab/kubectl-trafficlab/pkg/cmd"
)

func main() {
	os.Exit(run())
}

// run keeps deferred cleanups (the signal handler, and through the context every session's teardown)
// ahead of os.Exit.
func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := cmd.NewCmdTrafficlab(genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	return 0
}
