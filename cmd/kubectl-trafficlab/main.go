// Command kubectl-trafficlab is the kubectl plugin. Everything but process setup lives in pkg/cmd.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/klog/v2"

	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/exitcode"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cmd"
	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/sandbox"
)

func main() {
	// The exec verb's namespace helper is this binary re-executed; it must not start the plugin.
	if sandbox.IsHelper(os.Args) {
		os.Exit(sandbox.RunHelper())
	}
	os.Exit(run())
}

// run keeps deferred cleanups (the signal handler, and through the context every session's teardown)
// ahead of os.Exit.
func run() int {
	quietStreamErrors()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := cmd.NewCmdTrafficlab(genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})
	if err := root.ExecuteContext(ctx); err != nil {
		// A command run by the plugin (steal -- COMMAND) passes its exit code on, as kubectl exec does.
		var exit *exitcode.Error
		if errors.As(err, &exit) {
			return exit.Code
		}
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	return 0
}

// quietStreamErrors moves client-go's "Unhandled Error" lines to -v=2: its exec and port-forward readers
// report the ordinary close of a finished stream as an error, which would follow every clean exit of a
// session. Every error that matters reaches the user through a returned error instead.
func quietStreamErrors() {
	utilruntime.ErrorHandlers = []utilruntime.ErrorHandler{
		func(ctx context.Context, err error, msg string, keysAndValues ...any) {
			klog.FromContext(ctx).V(2).Info("stream error", append([]any{"err", err, "msg", msg}, keysAndValues...)...)
		},
	}
}
