package session

import (
	"context"
	"errors"
	"fmt"
	"io"

	"k8s.io/klog/v2"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/tunnel"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/exitcode"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// agentConn is what the waits need of the tunnel: when it ended, and why.
type agentConn interface {
	Done() <-chan struct{}
	Err() error
}

// Lost is the error a verb ends with when its tunnel to the agent has gone away.
func (s *Session) Lost() error { return lost(s.Tunnel) }

// Wait waits until ctx ends (the user's Ctrl-C), which is no error, or the agent is lost.
func (s *Session) Wait(ctx context.Context) error { return wait(ctx, s.Tunnel) }

// WaitCommand waits for the user's command name, as exitcode.Wait does, for as long as the agent is
// there. A lost agent kills the command and is the error: the command's end is then our doing, and
// the lost agent is what the user needs to hear.
func (s *Session) WaitCommand(ctx context.Context, name string, waitCmd func() (int, error), interrupt, kill func()) (int, error) {
	return waitCommand(ctx, s.Tunnel, name, waitCmd, interrupt, kill)
}

// Announce says that the verb's work is in place: a progress step, or with -q a plain line on
// stderr, since even a quiet script needs to know when it may start, as port-forward's "Forwarding
// from" line tells it.
func (s *Session) Announce(format string, args ...any) {
	if s.quiet {
		fmt.Fprintf(s.errOut, format+"\n", args...)
		return
	}
	s.Progress.Stepf(format, args...)
}

// lost says why the tunnel ended: an agent that said goodbye ended the session on purpose (another user's
// `kubectl trafficlab sessions end`), and its reason says who; anything else lost the agent.
func lost(c agentConn) error {
	err := c.Err()
	var bye *wire.ByeError
	if errors.As(err, &bye) && bye.Reason != "" {
		return &EndedError{Reason: bye.Reason, Err: err}
	}
	// Past the grace the tunnel's error is the one line that says what happened and what to do.
	if errors.Is(err, tunnel.ErrForgotten) {
		return err
	}
	return fmt.Errorf("lost the agent: %w", err)
}

// EndedError is a session the agent ended on purpose, with the reason it gave.
type EndedError struct {
	Reason string
	Err    error
}

func (e *EndedError) Error() string { return "the session was " + e.Reason }
func (e *EndedError) Unwrap() error { return e.Err }

// reconnectNotice prints the tunnel's reconnects to errOut. The end past the grace is left to the
// verb's error (lost), so that it is said once.
func reconnectNotice(errOut io.Writer, pod string) func(tunnel.Event) {
	return func(e tunnel.Event) {
		switch e.Kind {
		case tunnel.Reconnecting:
			fmt.Fprintf(errOut, "reconnecting to the agent in pod %s … (%v; the app answers meanwhile, for up to %s)\n", pod, e.Err, e.Grace)
		case tunnel.Reconnected:
			fmt.Fprintf(errOut, "reconnected after %.1fs\n", e.Away.Seconds())
		}
	}
}

func wait(ctx context.Context, c agentConn) error {
	select {
	case <-ctx.Done():
		return nil
	case <-c.Done():
		return lost(c)
	}
}

func waitCommand(ctx context.Context, c agentConn, name string, waitCmd func() (int, error), interrupt, kill func()) (int, error) {
	code, agentLost, err := exitcode.Wait(ctx, c.Done(), waitCmd, interrupt, kill)
	if agentLost {
		if err != nil {
			klog.V(2).InfoS("command stopped after the agent was lost", "command", name, "err", err)
		}
		return 0, lost(c)
	}
	return code, err
}
