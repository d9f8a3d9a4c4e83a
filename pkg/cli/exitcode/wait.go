package exitcode

import (
	"context"
	"time"
)

// Grace is how long a command may take to finish after the user's interrupt before it is killed.
const Grace = 5 * time.Second

// Wait waits for a command the plugin runs for the user, for as long as the session lives. wait
// returns the command's exit code. When ctx ends (the user's Ctrl-C, which the terminal delivers to
// the command too), interrupt is called if set and the command gets Grace to finish before kill;
// when lost closes (the agent is gone) the command is killed at once and agentLost is true, with
// the command's own end in err.
func Wait(ctx context.Context, lost <-chan struct{}, wait func() (int, error), interrupt, kill func()) (code int, agentLost bool, err error) {
	type exit struct {
		code int
		err  error
	}
	exited := make(chan exit, 1)
	go func() {
		code, err := wait()
		exited <- exit{code, err}
	}()
	select {
	case e := <-exited:
		return e.code, false, e.err
	case <-ctx.Done():
		if interrupt != nil {
			interrupt()
		}
		t := time.NewTimer(Grace)
		defer t.Stop()
		select {
		case e := <-exited:
			return e.code, false, e.err
		case <-t.C:
			kill()
			e := <-exited
			return e.code, false, e.err
		}
	case <-lost:
		kill()
		e := <-exited
		return e.code, true, e.err
	}
}
