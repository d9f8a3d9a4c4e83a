package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// pluginSession is a plugin's side of one real session in the main process: the relay, and the
// control channel through it.
type pluginSession struct {
	relay   *attachment
	welcome wire.Welcome
	ended   chan error // ctrl.Run's result
}

func startPluginSession(t *testing.T, name, user, host string) *pluginSession {
	t.Helper()
	a := startAttach(t, "--name="+name)
	ctrl := wire.NewControl(a.stdout, a.stdin, wire.ControlConfig{Role: wire.RolePlugin, Version: "test"})
	secret, err := wire.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w, err := ctrl.Hello(ctx, wire.Hello{Secret: secret, DataConns: 1, Options: wire.SessionOptions{User: user, Host: host}})
	if err != nil {
		t.Fatalf("hello as %s: %v", user, err)
	}
	p := &pluginSession{relay: a, welcome: w, ended: make(chan error, 1)}
	go func() { p.ended <- ctrl.Run(context.Background()) }()
	return p
}

// ask runs `trafficlab-agent sessions` with args against agent name.
func ask(t *testing.T, name string, args ...string) (wire.AgentSessions, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	if err := runSessions(append([]string{"--name=" + name}, args...), &out, &errOut); err != nil {
		return wire.AgentSessions{}, err
	}
	if len(args) > 0 {
		if out.Len() != 0 {
			t.Errorf("sessions %q printed %q, want nothing", args, out.String())
		}
		return wire.AgentSessions{}, nil
	}
	a, err := wire.ParseAgentSessions(out.Bytes())
	if err != nil {
		t.Fatalf("the agent's answer %q: %v", out.String(), err)
	}
	return a, nil
}

// Two real sessions in one main process are listed with the users and machines their plugins
// reported; ending one tells its plugin who ended it (a Bye) and leaves the other running; with no
// session left the answer says when the idle timeout ends the agent.
func TestSessionsListAndEnd(t *testing.T) {
	name := testName(t)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socketName(name), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(serveSession, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv.about.IdleTimeout = wire.Millis(10 * time.Minute)
	go srv.Serve(context.Background(), ln)
	t.Cleanup(func() {
		ln.Close()
		srv.Wait(time.Minute)
	})

	before := time.Now()
	idle, err := ask(t, name)
	if err != nil {
		t.Fatal(err)
	}
	if len(idle.Sessions) != 0 || idle.ExitsAt == nil || idle.ExitsAt.Before(before.Add(9*time.Minute)) {
		t.Errorf("a fresh agent answered %+v, want no session and an exit about 10m after its start", idle)
	}

	alice := startPluginSession(t, name, "alice", "alice-laptop")
	bob := startPluginSession(t, name, "system:serviceaccount:dev:bob", "build-7")
	waitFor(t, "two registered sessions", func() bool { return len(srv.list().Sessions) == 2 })
	got, err := ask(t, name)
	if err != nil {
		t.Fatal(err)
	}
	type who struct{ ID, User, Host string }
	var listed []who
	for _, s := range got.Sessions {
		listed = append(listed, who{s.ID, s.User, s.Host})
		if s.Since.Before(before) || s.Bytes != 0 || s.Connections != 0 || len(s.Verbs) != 0 {
			t.Errorf("session %s: %+v, want since after the test's start and nothing done yet", s.ID, s)
		}
	}
	want := []who{{alice.welcome.SessionID, "alice", "alice-laptop"}, {bob.welcome.SessionID, "system:serviceaccount:dev:bob", "build-7"}}
	if diff := cmp.Diff(want, listed); diff != "" {
		t.Errorf("listed sessions (-want +got):\n%s", diff)
	}
	if got.ExitsAt != nil || got.Version != agentVersion() {
		t.Errorf("with sessions the answer has exitsAt %v and version %q, want none and %q", got.ExitsAt, got.Version, agentVersion())
	}

	if _, err := ask(t, name, "--end=000000000000", "--by-user=carol", "--by-host=desk"); err == nil || !strings.Contains(err.Error(), `no session "000000000000"`) {
		t.Errorf("ending an unknown session = %v, want it named as unknown", err)
	}
	if _, err := ask(t, name, "--end="+alice.welcome.SessionID, "--by-user=carol\x1b[2J", "--by-host=desk"); err == nil || !strings.Contains(err.Error(), "not printable") {
		t.Errorf("ending with a control sequence in the user = %v, want a refusal", err)
	}
	if _, err := ask(t, name, "--end="+alice.welcome.SessionID, "--by-user=carol", "--by-host=desk"); err != nil {
		t.Fatalf("end alice's session: %v", err)
	}
	err = <-alice.ended
	var bye *wire.ByeError
	if !errors.As(err, &bye) || bye.Reason != wire.EndedReason("carol", "desk") {
		t.Fatalf("alice's control channel ended with %v, want a Bye saying carol ended it", err)
	}
	// Her plugin hangs up on the Bye, as the tunnel does, and the main process lets her session go.
	alice.relay.stdin.Close()
	if err := <-alice.relay.done; err != nil {
		t.Errorf("alice's relay ended with %v", err)
	}
	waitFor(t, "alice's session gone", func() bool { return len(srv.list().Sessions) == 1 })
	got, err = ask(t, name)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Sessions) != 1 || got.Sessions[0].ID != bob.welcome.SessionID {
		t.Errorf("after the end the agent lists %+v, want bob's session only", got.Sessions)
	}
	select {
	case err := <-bob.ended:
		t.Fatalf("bob's session ended with %v when alice's was ended", err)
	default:
	}
	bob.relay.stdin.Close()
	<-bob.relay.done
	waitFor(t, "no session", func() bool { return srv.Sessions() == 0 })
	afterBob := time.Now()
	got, err = ask(t, name)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Sessions) != 0 || got.ExitsAt == nil || got.ExitsAt.Before(afterBob.Add(9*time.Minute)) {
		t.Errorf("after the last session the agent answered %+v, want no session and an exit 10m after it", got)
	}
}

// A query from a process the main process does not take for one of its container's (another uid here)
// gets no answer, as such an attachment gets no session.
func TestSessionsQueryRefusesForeignPeer(t *testing.T) {
	name := testName(t)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socketName(name), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(serveSession, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv.uid++ // the agent runs as someone else than this test's query
	go srv.Serve(context.Background(), ln)
	t.Cleanup(func() {
		ln.Close()
		srv.Wait(time.Minute)
	})
	if _, err := ask(t, name); err == nil || !strings.Contains(err.Error(), "main process") {
		t.Errorf("a query refused by the main process = %v, want no answer", err)
	}
}

func TestSessionsUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"--no-such-flag"}, {"extra"}} {
		var stderr syncBuffer
		if _, err := sessionsFlags(args, &stderr); !errors.Is(err, errUsage) || stderr.String() == "" {
			t.Errorf("sessionsFlags(%q) = %v with stderr %q, want an explained usage error", args, err, stderr.String())
		}
	}
}
