package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

func TestCheckPeer(t *testing.T) {
	cgroups := map[int]string{0: "0::/agent\n", 7: "0::/agent\n", 8: "0::/../app\n"}
	cgroupOf := func(pid int) (string, error) {
		if c, ok := cgroups[pid]; ok {
			return c, nil
		}
		return "", errors.New("no such process")
	}
	for _, tt := range []struct {
		name string
		cred unix.Ucred
		want string // empty: accepted
	}{
		{"a process of this container", unix.Ucred{Pid: 7, Uid: 1000}, ""},
		{"outside our PID namespace (another container, the host)", unix.Ucred{Pid: 0, Uid: 1000}, "outside the agent's PID namespace"},
		{"another user", unix.Ucred{Pid: 7, Uid: 0}, "runs as uid 0, not the agent's 1000"},
		{"visible but in the app's cgroup (shareProcessNamespace)", unix.Ucred{Pid: 8, Uid: 1000}, "another container's cgroup"},
		{"gone before we looked", unix.Ucred{Pid: 9, Uid: 1000}, "no such process"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := checkPeer(&tt.cred, 1000, cgroupOf)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("checkPeer = %v, want accepted", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("checkPeer = %v, want an error with %q", err, tt.want)
			}
		})
	}
}

// attachment is one `trafficlab-agent attach` run in this process against a main process, its exec
// stream faked by pipes.
type attachment struct {
	stdin  *io.PipeWriter
	stdout *bufio.Reader
	stderr *os.File // read end of the relay's stderr
	done   chan error
}

func startAttach(t *testing.T, args ...string) *attachment {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	errR, errW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	a := &attachment{stdin: inW, stdout: bufio.NewReader(outR), stderr: errR, done: make(chan error, 1)}
	go func() {
		err := runAttach(args, inR, outW, errW)
		errW.Close()
		outW.CloseWithError(io.EOF)
		a.done <- err
	}()
	t.Cleanup(func() {
		inW.Close()
		errR.Close()
	})
	return a
}

// echoSession answers each control line with "echo: LINE", logs its arguments, and ends at EOF.
func echoSession(started chan<- []string) sessionFunc {
	return func(ctx context.Context, a sessionIO) error {
		fmt.Fprintf(a.Log, "session args %q\n", a.Args)
		started <- a.Args
		sc := bufio.NewScanner(a.In)
		for sc.Scan() {
			if _, err := fmt.Fprintf(a.Out, "echo: %s\n", sc.Text()); err != nil {
				return err
			}
		}
		return nil
	}
}

// The main process serves each attachment itself, counts it as a live session for as long as its
// connection lives, and runs the idle clock only while there is none.
func TestServerSessionsAndIdle(t *testing.T) {
	name := testName(t)
	timers := newFakeTimers()
	started := make(chan []string, 2)
	var stderr syncBuffer
	done := startRun(context.Background(), []string{"--idle-timeout=1m", "--name=" + name}, testEnv(timers, echoSession(started)), &stderr)
	first := timers.waitArmed(t) // no session yet: the idle clock runs

	a := startAttach(t, "--name="+name, "--debug")
	if got := <-started; strings.Join(got, " ") != "--name="+name+" --debug" {
		t.Errorf("session args %q, want the relay's own", got)
	}
	fmt.Fprintln(a.stdin, "hello")
	if line, err := a.stdout.ReadString('\n'); err != nil || line != "echo: hello\n" {
		t.Fatalf("relay read %q, %v; want the session's answer", line, err)
	}
	b := startAttach(t, "--name="+name)
	<-started
	waitFor(t, "two live sessions in the log", func() bool { return strings.Count(stderr.String(), "session attached") == 2 })
	// A timer firing while sessions live does not end the agent, and no new one is armed until the
	// last session ends.
	first <- time.Now()
	armed := timers.count()
	a.stdin.Close()
	if err := <-a.done; err != nil {
		t.Errorf("first relay ended with %v, want nil", err)
	}
	waitFor(t, "one session left", func() bool { return strings.Count(stderr.String(), "session detached") == 1 })
	if got := timers.count(); got != armed {
		t.Errorf("%d idle timers armed with a session live, want %d", got, armed)
	}
	// The session's log went to the relay's stderr, which the plugin reads.
	log, _ := io.ReadAll(a.stderr)
	if want := fmt.Sprintf("session args %q", []string{"--name=" + name, "--debug"}); !strings.Contains(string(log), want) {
		t.Errorf("relay stderr %q lacks %q", log, want)
	}
	b.stdin.Close()
	<-b.done
	timers.waitArmed(t) <- time.Now()
	if err := waitResult(t, done); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), `reason="idle timeout"`) {
		t.Errorf("stderr lacks the idle timeout:\n%s", stderr.String())
	}
}

// portSession takes its data port from its first control line, then answers every line with the live
// sessions' data ports as it sees them.
func portSession(ctx context.Context, a sessionIO) error {
	sc := bufio.NewScanner(a.In)
	if !sc.Scan() {
		return sc.Err()
	}
	port, err := strconv.Atoi(sc.Text())
	if err != nil {
		return err
	}
	a.Listening(port)
	for {
		if _, err := fmt.Fprintf(a.Out, "%v\n", a.DataPorts()); err != nil {
			return err
		}
		if !sc.Scan() {
			return sc.Err()
		}
	}
}

// The main process knows every live session's data port, for as long as the session lives, and each
// session can list them all: a capture or redirect of one session must leave every other's tunnels
// alone.
func TestServerDataPorts(t *testing.T) {
	name := testName(t)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socketName(name), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(portSession, slog.New(slog.NewTextHandler(io.Discard, nil)))
	// An ended session's port lingers until the test expires it.
	expire := make(chan func(), 2)
	srv.afterFunc = func(d time.Duration, f func()) *time.Timer {
		if d != dataPortLinger {
			t.Errorf("an ended session's port lingers %v, want %v", d, dataPortLinger)
		}
		expire <- f
		return nil
	}
	go srv.Serve(context.Background(), ln)
	t.Cleanup(func() {
		ln.Close()
		srv.Wait(time.Minute)
	})
	ask := func(a *attachment, line string) string {
		t.Helper()
		fmt.Fprintln(a.stdin, line)
		got, err := a.stdout.ReadString('\n')
		if err != nil {
			t.Fatalf("relay read %q, %v", got, err)
		}
		return strings.TrimSpace(got)
	}
	// A capture that runs before any session is told every change, the first right away.
	var mu sync.Mutex
	var seen [][]int
	stopWatch := srv.WatchDataPorts(func(ports []int) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, ports)
	})
	watched := func() [][]int {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
	a := startAttach(t, "--name="+name)
	if got := ask(a, "41000"); got != "[41000]" {
		t.Errorf("first session sees ports %s, want [41000]", got)
	}
	b := startAttach(t, "--name="+name)
	if got := ask(b, "40000"); got != "[40000 41000]" {
		t.Errorf("second session sees ports %s, want [40000 41000]", got)
	}
	if diff := cmp.Diff([]int{40000, 41000}, srv.DataPorts()); diff != "" {
		t.Errorf("DataPorts (-want +got):\n%s", diff)
	}
	a.stdin.Close()
	if err := <-a.done; err != nil {
		t.Fatalf("first relay ended with %v", err)
	}
	// The first session's connections may still send their last segments: its port stays left out
	// until the linger expires, then it is the app's again.
	if got := ask(b, "again"); got != "[40000 41000]" {
		t.Errorf("right after the first session ended, the second sees ports %s, want [40000 41000]", got)
	}
	(<-expire)()
	if got := ask(b, "again"); got != "[40000]" {
		t.Errorf("after the linger, the second session sees ports %s, want [40000]", got)
	}
	stopWatch()
	b.stdin.Close()
	<-b.done
	(<-expire)()
	if got := srv.DataPorts(); len(got) != 0 {
		t.Errorf("DataPorts = %v with no session and no linger, want none", got)
	}
	// The session reports its port before it answers, so each set was seen before the answer that
	// shows it; after stop, the second session's end is not.
	if diff := cmp.Diff([][]int{{}, {41000}, {40000, 41000}, {40000, 41000}, {40000}}, watched()); diff != "" {
		t.Errorf("the watcher saw (-want +got):\n%s", diff)
	}
}

// A peer that fails the check is never served and never counts as a session.
func TestServerRefusesForeignPeer(t *testing.T) {
	name := testName(t)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socketName(name), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	var served sync.WaitGroup
	var log syncBuffer
	srv := newServer(func(context.Context, sessionIO) error {
		t.Error("a refused peer was served")
		return nil
	}, slog.New(slog.NewTextHandler(&log, nil)))
	srv.uid = os.Geteuid() + 1 // the agent runs as someone else than this test's relay
	served.Add(1)
	go func() {
		defer served.Done()
		srv.Serve(context.Background(), ln)
	}()
	a := startAttach(t, "--name="+name)
	if _, err := a.stdout.ReadString('\n'); !errors.Is(err, io.EOF) {
		t.Errorf("relay read %v, want EOF: the main process closed the connection", err)
	}
	<-a.done
	waitFor(t, "the refusal in the log", func() bool { return strings.Contains(log.String(), "attachment refused") })
	if n := srv.Sessions(); n != 0 {
		t.Errorf("Sessions() = %d after a refused peer, want 0", n)
	}
	ln.Close()
	served.Wait()
	srv.Wait(time.Minute)
}

// Without a main process the relay says what it could not reach.
func TestAttachWithoutMainProcess(t *testing.T) {
	a := startAttach(t, "--name="+testName(t))
	err := <-a.done
	if err == nil || !strings.Contains(err.Error(), "reach the agent's main process") {
		t.Errorf("runAttach = %v, want it to name the unreachable main process", err)
	}
}

func TestAttachUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"--no-such-flag"}, {"--dial-timeout=soon"}, {"extra"}} {
		var stderr syncBuffer
		if _, err := attachFlags(args, &stderr); !errors.Is(err, errUsage) || stderr.String() == "" {
			t.Errorf("attachFlags(%q) = %v with stderr %q, want an explained usage error", args, err, stderr.String())
		}
	}
}
