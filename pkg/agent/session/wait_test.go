package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/tunnel"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/progress"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// fakeConn is a tunnel that ends when the test closes done, with err.
type fakeConn struct {
	done chan struct{}
	err  error
}

func (c *fakeConn) Done() <-chan struct{} { return c.done }
func (c *fakeConn) Err() error            { return c.err }

func lostConn() *fakeConn {
	c := &fakeConn{done: make(chan struct{}), err: errors.New("heartbeat timeout")}
	close(c.done)
	return c
}

// TestWait: Ctrl-C ends a verb without an error, a lost agent with the one message every verb gives.
func TestWait(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := wait(ctx, &fakeConn{done: make(chan struct{})}); err != nil {
		t.Errorf("interrupted: %v, want nil", err)
	}
	c := lostConn()
	err := wait(context.Background(), c)
	if err == nil || err.Error() != "lost the agent: heartbeat timeout" || !errors.Is(err, c.err) {
		t.Errorf("agent lost: %v, want \"lost the agent: heartbeat timeout\" wrapping the tunnel's error", err)
	}
}

// TestWaitCommand: the command's exit code passes through; a lost agent kills the command and is
// the error, whatever the command's own end.
func TestWaitCommand(t *testing.T) {
	code, err := waitCommand(context.Background(), &fakeConn{done: make(chan struct{})}, "sh",
		func() (int, error) { return 3, nil }, nil, func() { t.Error("killed a command that exited") })
	if code != 3 || err != nil {
		t.Errorf("exited: %d, %v; want 3, nil", code, err)
	}
	killed := make(chan struct{})
	code, err = waitCommand(context.Background(), lostConn(), "sh",
		func() (int, error) { <-killed; return 137, errors.New("signal: killed") }, nil, func() { close(killed) })
	if code != 0 || err == nil || err.Error() != "lost the agent: heartbeat timeout" {
		t.Errorf("agent lost: %d, %v; want 0 and the lost agent", code, err)
	}
}

// TestAnnounce: the line that says the work is in place is a progress step, and with -q still a
// plain line, which scripts wait for.
func TestAnnounce(t *testing.T) {
	var buf bytes.Buffer
	s := &Session{Progress: progress.New(&buf, false), errOut: &buf}
	s.Announce("stealing %s", "port 80")
	if got := buf.String(); !bytes.HasSuffix(buf.Bytes(), []byte("] stealing port 80\n")) || got[0] != '[' {
		t.Errorf("progress line = %q", got)
	}
	buf.Reset()
	s = &Session{Progress: progress.New(&buf, true), errOut: &buf, quiet: true}
	s.Announce("mirroring %s (%d%% of requests)", "port 80", 10)
	if got, want := buf.String(), "mirroring port 80 (10% of requests)\n"; got != want {
		t.Errorf("quiet line = %q, want %q", got, want)
	}
}

// TestWaitEndedByAnother: an agent's Bye with a reason (another user's `sessions end`) is the session's
// end on purpose, said with that reason, not a lost agent; it still fails the verb.
func TestWaitEndedByAnother(t *testing.T) {
	reason := wire.EndedReason("carol", "desk")
	c := &fakeConn{done: make(chan struct{}), err: fmt.Errorf("agent session ended: %w", &wire.ByeError{Reason: reason})}
	close(c.done)
	err := wait(context.Background(), c)
	var ended *EndedError
	if !errors.As(err, &ended) || err.Error() != "the session was "+reason || !errors.Is(err, wire.ErrBye) {
		t.Errorf("ended by another: %v, want %q wrapping the Bye", err, "the session was "+reason)
	}
}

// TestReconnectLines: the tunnel's reconnects are two lines; past the grace the verb's error is the
// one line that says so, not "lost the agent: ...".
func TestReconnectLines(t *testing.T) {
	var out bytes.Buffer
	notice := reconnectNotice(&out, "web-1")
	notice(tunnel.Event{Kind: tunnel.Reconnecting, Err: errors.New("agent session ended: peer closed the control channel"), Grace: time.Minute})
	notice(tunnel.Event{Kind: tunnel.Reconnected, Away: 12345 * time.Millisecond, Grace: time.Minute})
	notice(tunnel.Event{Kind: tunnel.Forgotten, Away: 70 * time.Second, Grace: time.Minute})
	want := "reconnecting to the agent in pod web-1 … (agent session ended: peer closed the control channel; the app answers meanwhile, for up to 1m0s)\n" +
		"reconnected after 12.3s\n"
	if diff := cmp.Diff(want, out.String()); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
	c := &fakeConn{done: make(chan struct{}), err: &tunnel.ForgottenError{Grace: time.Minute, Cause: wire.ErrSessionGone}}
	close(c.done)
	err := wait(context.Background(), c)
	if err == nil || err.Error() != "the agent forgot the session after 1m0s away; start it again" || !errors.Is(err, tunnel.ErrForgotten) {
		t.Errorf("forgotten: %v", err)
	}
}
