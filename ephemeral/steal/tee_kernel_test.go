//go:build linux && kernel

package steal

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// pathServer is an HTTP/1.1 server that answers "<name> <path>"; it returns its address.
func pathServer(t *testing.T, l net.Listener, name string) string {
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, name+" "+r.URL.Path)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// copies is a redirect mirror's handler: every connection's bytes, each direction on its own.
type copies struct {
	mu      sync.Mutex
	flows   []*[2]bytes.Buffer
	changed chan struct{}
}

func newCopies() *copies { return &copies{changed: make(chan struct{}, 1)} }

func (c *copies) tee(capture.Flow) capture.StreamHandler {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := &[2]bytes.Buffer{}
	c.flows = append(c.flows, f)
	return &flowCopy{c: c, f: f}
}

type flowCopy struct {
	c *copies
	f *[2]bytes.Buffer
}

func (h *flowCopy) Data(dir capture.Direction, p []byte, _ time.Time) {
	h.c.mu.Lock()
	h.f[dir].Write(p)
	h.c.mu.Unlock()
	select {
	case h.c.changed <- struct{}{}:
	default:
	}
}

func (*flowCopy) Gap(capture.Direction, int, time.Time)               {}
func (*flowCopy) End(capture.Direction, capture.EndReason, time.Time) {}

// snapshot is every connection's copy so far, client's bytes then answers.
func (c *copies) snapshot() [][2]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out [][2]string
	for _, f := range c.flows {
		out = append(out, [2]string{f[capture.ClientToServer].String(), f[capture.ServerToClient].String()})
	}
	return out
}

// has reports whether some connection's copy holds the request for path and, when answer is not
// empty, the answer to it.
func has(flows [][2]string, path, answer string) bool {
	for _, f := range flows {
		if strings.Contains(f[0], "GET "+path+" HTTP/1.1\r\n") && (answer == "" || strings.Contains(f[1], answer+" "+path)) {
			return true
		}
	}
	return false
}

// waitAll waits until the copy holds every request of want with its answer; it names those missing
// when the copies stop coming.
func (c *copies) waitAll(t *testing.T, name string, want map[string]string) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		var missing []string
		flows := c.snapshot()
		for path, answer := range want {
			if !has(flows, path, answer) {
				missing = append(missing, path+" ("+answer+")")
			}
		}
		if len(missing) == 0 {
			return
		}
		select {
		case <-c.changed:
		case <-deadline.C:
			t.Fatalf("mirror %s lacks %d of %d requests with their answers, e.g. %v", name, len(missing), len(want), missing[:min(5, len(missing))])
		}
	}
}

// TestKernelHubMirrorAndSteal: a redirect mirror and a filtered steal share port 8080 through one
// dispatcher (one table), with a second mirror joining them: each mirror gets a copy of every
// request, matched or not, with the answer the client got (the session's for a stolen one, the
// app's for the rest); the steal gets exactly its matches and the app the rest. The first mirror
// leaves: the steal keeps working and that mirror gets nothing more. The steal leaves: the other
// mirror keeps copying, now with the app's answers to what the steal took. After the last, no
// table is left. Throughout, a client sends requests that match no filter: none fails.
func TestKernelHubMirrorAndSteal(t *testing.T) {
	pod, client := testnet.New(t), testnet.New(t)
	testnet.Connect(t, pod, []netip.Prefix{netip.MustParsePrefix("10.82.0.1/24")}, client, []netip.Prefix{netip.MustParsePrefix("10.82.0.2/24")})
	pathServer(t, pod.Listen(t, "tcp", "10.82.0.1:8080"), "app")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	alice := &tunnel{addr: pathServer(t, l, "alice")}
	hub, err := NewHub(Config{InNetns: pod.Do}, "agent-a")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mirrorAs := func(session string, c *copies) *Lease {
		t.Helper()
		var lease *Lease
		if err := pod.Do(func() error {
			var err error
			lease, _, err = hub.Mirror(ctx, SessionConfig{Session: session, User: session, Host: "laptop"},
				Config{ID: session, Spec: wire.StealSpec{Ports: []int{8080}, KeepOpen: true}, Tee: c.tee})
			return err
		}); err != nil {
			t.Fatalf("mirror %s: %v", session, err)
		}
		return lease
	}

	m1, m2 := newCopies(), newCopies()
	l1 := mirrorAs("mirror1", m1)
	defer l1.Close()
	var aEvs eventLog
	var la *Lease
	if err := pod.Do(func() error {
		var err error
		la, err = hub.Steal(ctx, SessionConfig{Session: "alice01", User: "alice", Host: "laptop",
			Spec: wire.StealSpec{Ports: []int{8080}, Filter: &wire.HTTPFilter{Headers: []string{"^X-Dev: alice$"}}, KeepOpen: true},
			Open: alice, Events: aEvs.add}, nil)
		return err
	}); err != nil {
		t.Fatalf("filtered steal of a port mirrored with a redirect: %v", err)
	}
	defer la.Close()
	l2 := mirrorAs("mirror2", m2)
	defer l2.Close()
	if got := tablesIn(t, pod); len(got) != 1 {
		t.Errorf("tables with a steal and two mirrors on the port: %v, want one dispatcher's", got)
	}
	for _, ev := range aEvs.all() {
		if ev.Kind == wire.EventShared {
			t.Errorf("the steal was told of sharing with mirrors, which take no request: %+v", ev)
		}
	}

	hc := &http.Client{Transport: &http.Transport{DialContext: client.DialContext}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	get := func(dev, path string) (string, error) {
		req, _ := http.NewRequest(http.MethodGet, "http://10.82.0.1:8080"+path, nil)
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
	// Requests that match no filter, all along, on keep-alive connections; each one's path is its
	// own, so that the copies can be checked request by request.
	var mu sync.Mutex
	unmatched := map[string]int{} // path: phase it was answered in
	phase := atomic.Int32{}
	var sent, failed atomic.Int64
	var firstFail atomic.Value
	loadCtx, stopLoad := context.WithCancel(ctx)
	var load sync.WaitGroup
	for w := range 2 {
		load.Go(func() {
			for i := 0; loadCtx.Err() == nil; i++ {
				path := fmt.Sprintf("/u%d-%d", w, i)
				p := phase.Load()
				sent.Add(1)
				got, err := get("carol", path)
				if err != nil || got != "app "+path {
					failed.Add(1)
					firstFail.CompareAndSwap(nil, fmt.Sprintf("%s: %q, %v", path, got, err))
					continue
				}
				if phase.Load() == p {
					mu.Lock()
					unmatched[path] = int(p)
					mu.Unlock()
				}
			}
		})
	}
	defer func() {
		stopLoad()
		load.Wait()
	}()
	unmatchedIn := func(p int) map[string]string {
		mu.Lock()
		defer mu.Unlock()
		out := map[string]string{}
		for path, q := range unmatched {
			if q == p {
				out[path] = "app"
			}
		}
		return out
	}
	expect := func(dev, want string, paths ...string) map[string]string {
		t.Helper()
		out := map[string]string{}
		for _, path := range paths {
			if got, err := get(dev, path); err != nil || got != want+" "+path {
				t.Fatalf("request %s for %s: %q, %v; want %q", path, dev, got, err, want+" "+path)
			}
			out[path] = want
		}
		return out
	}
	paths := func(prefix string, n int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("/%s-%d", prefix, i))
		}
		return out
	}

	// Phase 0: both mirrors copy everything, the steal takes its matches.
	stolen := expect("alice", "alice", paths("a0", 20)...)
	toApp := expect("bob", "app", paths("b0", 10)...)
	phase.Store(1)
	for _, m := range []struct {
		name string
		c    *copies
	}{{"mirror1", m1}, {"mirror2", m2}} {
		m.c.waitAll(t, m.name, stolen)
		m.c.waitAll(t, m.name, toApp)
		m.c.waitAll(t, m.name, unmatchedIn(0))
	}
	if len(unmatchedIn(0)) == 0 {
		t.Fatal("no unmatched request was answered while both mirrors copied")
	}

	// Phase 1: the first mirror leaves; the steal keeps its matches, the other mirror its copies.
	if err := l1.Close(); err != nil {
		t.Fatal(err)
	}
	if got := tablesIn(t, pod); len(got) != 1 {
		t.Errorf("tables after a mirror left: %v, want the dispatcher's still", got)
	}
	stolen = expect("alice", "alice", paths("a1", 10)...)
	toApp = expect("bob", "app", paths("b1", 5)...)
	phase.Store(2)
	m2.waitAll(t, "mirror2", stolen)
	m2.waitAll(t, "mirror2", toApp)
	m2.waitAll(t, "mirror2", unmatchedIn(1))
	for path := range stolen {
		if has(m1.snapshot(), path, "") {
			t.Errorf("mirror1 got a copy of %s after it left", path)
		}
	}

	// Phase 2: the steal leaves; its matches go to the app, and the mirror still copies them.
	if err := la.Close(); err != nil {
		t.Fatal(err)
	}
	if got := tablesIn(t, pod); len(got) != 1 {
		t.Errorf("tables after the steal left: %v, want the mirror's dispatcher still", got)
	}
	toApp = expect("alice", "app", paths("a2", 10)...)
	phase.Store(3)
	m2.waitAll(t, "mirror2", toApp)
	m2.waitAll(t, "mirror2", unmatchedIn(2))

	// The last one leaves: no table. The load stops first: what a redirect mirror alone relays is
	// raw, and its drain resets what is still open at the window's end.
	stopLoad()
	load.Wait()
	hc.CloseIdleConnections()
	if err := l2.Close(); err != nil {
		t.Fatal(err)
	}
	if got := tablesIn(t, pod); len(got) != 0 {
		t.Errorf("tables after the last registration left: %v", got)
	}
	expect("alice", "app", paths("a3", 2)...)
	if n := failed.Load(); n > 0 || sent.Load() == 0 {
		t.Errorf("%d of %d unmatched requests failed (first: %v)", n, sent.Load(), firstFail.Load())
	}
	t.Logf("%d unmatched requests, none failed; copies checked per request in each phase", sent.Load())
}
