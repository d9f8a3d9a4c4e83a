//go:build linux && kernel

package steal

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// hubChildEnv makes the test binary another agent (TestMain): it steals through a Hub of its own,
// in the network namespace `ip netns exec` put it in, says "ready" on stdout and holds the steal
// until stdin ends or it is killed.
const hubChildEnv = "TRAFFICLAB_TEST_HUB_CHILD"

type hubChild struct {
	Agent, Session, User string
	Port                 int
	Header               string
}

func runHubChild(arg string) int {
	var c hubChild
	if err := json.Unmarshal([]byte(arg), &c); err != nil {
		fmt.Fprintln(os.Stderr, "hub child:", err)
		return 2
	}
	hub, err := NewHub(Config{}, c.Agent)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hub child:", err)
		return 1
	}
	lease, err := hub.Steal(context.Background(), SessionConfig{Session: c.Session, User: c.User,
		Spec: wire.StealSpec{Ports: []int{c.Port}, Filter: &wire.HTTPFilter{Headers: []string{c.Header}}}, Open: deadOpener{}}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hub child:", err)
		return 1
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = lease.Close()
	return 0
}

// deadOpener is a session whose tunnel is gone.
type deadOpener struct{}

func (deadOpener) OpenIncoming(context.Context, wire.OpenRequest) (net.Conn, error) {
	return nil, fmt.Errorf("no data connection to the plugin: %w", wire.ErrSessionClosed)
}

// tunnel is a session's way to its local server, which the test can cut: as a tunnel that dies,
// it ends every stream it carries and opens no more.
type tunnel struct {
	addr  string
	mu    sync.Mutex
	dead  bool
	conns []net.Conn
}

func (t *tunnel) OpenIncoming(ctx context.Context, _ wire.OpenRequest) (net.Conn, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dead {
		return deadOpener{}.OpenIncoming(ctx, wire.OpenRequest{})
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", t.addr)
	if err == nil {
		t.conns = append(t.conns, c)
	}
	return c, err
}

func (t *tunnel) cut() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dead = true
	for _, c := range t.conns {
		c.Close()
	}
}

// nameServer is an HTTP/1.1 server that answers with its name; it returns its address.
func nameServer(t *testing.T, l net.Listener, name string) string {
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, name)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

func localServer(t *testing.T, name string) *tunnel {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return &tunnel{addr: nameServer(t, l, name)}
}

// eventLog collects one session's events.
type eventLog struct {
	mu  sync.Mutex
	evs []wire.StealEvent
}

func (e *eventLog) add(ev wire.StealEvent) {
	e.mu.Lock()
	e.evs = append(e.evs, ev)
	e.mu.Unlock()
}

func (e *eventLog) all() []wire.StealEvent {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]wire.StealEvent(nil), e.evs...)
}

// TestKernelHubSharedPort: another agent's claim on the port refuses a steal and names it, and goes
// with that agent (SIGKILL); then two sessions with different header filters share port 8080
// through one dispatcher, each getting exactly its own requests and the app the rest; one
// session's tunnel dies and only its requests change (to the app); conflicting steals are refused
// naming the session in the way; the redirect stays while a session is left and goes with the
// last. Throughout, a client sends requests that match no filter: none fails.
func TestKernelHubSharedPort(t *testing.T) {
	pod, client := testnet.New(t), testnet.New(t)
	testnet.Connect(t, pod, []netip.Prefix{netip.MustParsePrefix("10.81.0.1/24")}, client, []netip.Prefix{netip.MustParsePrefix("10.81.0.2/24")})
	nameServer(t, pod.Listen(t, "tcp", "10.81.0.1:8080"), "app")
	alice, bob := localServer(t, "alice"), localServer(t, "bob")
	hub, err := NewHub(Config{InNetns: pod.Do}, "agent-a")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stealAs := func(session, user, header string, open Opener, evs *eventLog) (*Lease, error) {
		var l *Lease
		err := pod.Do(func() error {
			var f *wire.HTTPFilter
			if header != "" {
				f = &wire.HTTPFilter{Headers: []string{header}}
			}
			var err error
			l, err = hub.Steal(ctx, SessionConfig{Session: session, User: user, Host: "laptop",
				Spec: wire.StealSpec{Ports: []int{8080}, Filter: f, KeepOpen: true}, Open: open, Events: evs.add}, nil)
			return err
		})
		return l, err
	}

	// Another agent in the pod (another process, its own hub) filters the port first.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	arg, _ := json.Marshal(hubChild{Agent: "agent-b", Session: "dave01", User: "dave", Port: 8080, Header: "^X-Dev: dave$"})
	child := exec.Command("ip", "netns", "exec", pod.Name, exe)
	child.Env = append(os.Environ(), hubChildEnv+"="+string(arg))
	child.Stderr = os.Stderr
	childIn, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	childOut, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = child.Process.Kill()
		_ = child.Wait()
	})
	if line, err := bufio.NewReader(childOut).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("other agent: %q, %v", line, err)
	}
	_, err = stealAs("alice01", "alice", "^X-Dev: alice$", alice, &eventLog{})
	if err == nil || !strings.Contains(err.Error(), `port 8080 is held by session dave01 (dave, filter header "^X-Dev: dave$", since `) ||
		!strings.Contains(err.Error(), `in agent container "agent-b", another agent in this pod`) || !errors.Is(err, wire.ErrUnsupported) {
		t.Fatalf("steal of a port another agent filters: %v, want a refusal naming that agent's session", err)
	}
	if got := tablesIn(t, pod); len(got) != 1 {
		t.Fatalf("tables after the refusal: %v, want the other agent's only", got)
	}
	// SIGKILL: its claim and its owned table go with it.
	_ = child.Process.Kill()
	_ = child.Wait()
	childIn.Close()
	if got := tablesIn(t, pod); len(got) != 0 {
		t.Fatalf("tables after the other agent was killed: %v", got)
	}

	var aEvs, bEvs eventLog
	la, err := stealAs("alice01", "alice", "^X-Dev: alice$", alice, &aEvs)
	if err != nil {
		t.Fatal(err)
	}
	defer la.Close()
	lb, err := stealAs("bob01", "bob", "^X-Dev: bob$", bob, &bEvs)
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	if got := tablesIn(t, pod); len(got) != 1 {
		t.Errorf("tables with two sessions on the port: %v, want one dispatcher's", got)
	}
	bStart := bEvs.all()
	if len(bStart) < 2 || bStart[0].Kind != wire.EventReady || bStart[1].Kind != wire.EventShared ||
		len(bStart[1].Sessions) != 1 || bStart[1].Sessions[0].ID != "alice01" || bStart[1].Sessions[0].User != "alice" ||
		bStart[1].Sessions[0].Filter != `header "^X-Dev: alice$"` || bStart[1].Port != 8080 {
		t.Errorf("second session's first events: %+v, want ready then shared naming alice01", bStart)
	}
	for _, ev := range aEvs.all() {
		if ev.Kind == wire.EventShared {
			t.Errorf("first session told of sharing: %+v", ev)
		}
	}

	// Requests that match no filter, all along, on keep-alive connections.
	var sent, failed atomic.Int64
	var firstFail atomic.Value
	loadCtx, stopLoad := context.WithCancel(ctx)
	var load sync.WaitGroup
	hc := &http.Client{Transport: &http.Transport{DialContext: client.DialContext}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	get := func(dev string) (string, error) {
		req, _ := http.NewRequest(http.MethodGet, "http://10.81.0.1:8080/", nil)
		if dev != "" {
			req.Header.Set("X-Dev", dev)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	for range 2 {
		load.Go(func() {
			for loadCtx.Err() == nil {
				sent.Add(1)
				if got, err := get("carol"); err != nil || got != "app" {
					failed.Add(1)
					firstFail.CompareAndSwap(nil, fmt.Sprintf("%q, %v", got, err))
				}
			}
		})
	}
	expect := func(dev, want string, n int) {
		t.Helper()
		for i := range n {
			if got, err := get(dev); err != nil || got != want {
				t.Fatalf("request %d for %s: %q, %v; want %q", i, dev, got, err, want)
			}
		}
	}
	expect("alice", "alice", 10)
	expect("bob", "bob", 10)
	expect("alice", "alice", 3)

	// Conflicts are refused and name the session in the way.
	if _, err := stealAs("eve01", "eve", "", localServer(t, "eve"), &eventLog{}); err == nil ||
		!strings.HasPrefix(err.Error(), `port 8080 is already stolen by session alice01 (alice on laptop, filter header "^X-Dev: alice$", since `) {
		t.Errorf("whole-port steal of a shared port: %v", err)
	}

	// Alice's tunnel dies: her requests go to the app, Bob's still to him.
	alice.cut()
	expect("alice", "app", 3)
	expect("bob", "bob", 3)
	warned := false
	for _, ev := range aEvs.all() {
		warned = warned || (ev.Kind == wire.EventWarning && strings.Contains(ev.Message, "local process unreachable"))
	}
	if !warned {
		t.Errorf("alice was not told her requests went to the app: %+v", aEvs.all())
	}
	for _, ev := range bEvs.all() {
		if ev.Kind == wire.EventWarning {
			t.Errorf("bob heard a warning: %+v", ev)
		}
	}
	// Away and Back: matches go to the app meanwhile, without re-registering.
	lb.Away()
	expect("bob", "app", 2)
	lb.Back()
	expect("bob", "bob", 2)

	// Alice's session ends: the redirect stays for Bob.
	if err := la.Close(); err != nil {
		t.Fatal(err)
	}
	if got := tablesIn(t, pod); len(got) != 1 {
		t.Errorf("tables after the first session left: %v, want the dispatcher's still", got)
	}
	expect("bob", "bob", 5)
	expect("alice", "app", 2)

	// The last one leaves: the redirect goes, the app answers everything.
	if err := lb.Close(); err != nil {
		t.Fatal(err)
	}
	if got := tablesIn(t, pod); len(got) != 0 {
		t.Errorf("tables after the last session left: %v", got)
	}
	expect("bob", "app", 3)
	// A whole-port steal is possible again.
	var wEvs eventLog
	lw, err := stealAs("eve01", "eve", "", localServer(t, "eve"), &wEvs)
	if err != nil {
		t.Fatalf("whole-port steal once the port is free: %v", err)
	}
	// ... and a filtered one is refused while it holds the port.
	if _, err := stealAs("frank01", "", "^X-Dev: frank$", localServer(t, "frank"), &eventLog{}); err == nil ||
		!strings.HasPrefix(err.Error(), `port 8080 is stolen whole by session eve01 (eve on laptop, every connection, since `) {
		t.Errorf("filtered steal of a port stolen whole: %v", err)
	}
	stopLoad()
	load.Wait()
	if err := lw.Close(); err != nil {
		t.Fatal(err)
	}
	if n := failed.Load(); n > 0 || sent.Load() == 0 {
		t.Errorf("%d of %d unmatched requests failed (first: %v)", n, sent.Load(), firstFail.Load())
	}
	t.Logf("%d unmatched requests, none failed", sent.Load())
}
