//go:build linux && kernel

package steal_test

import (
	"bufio"
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

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/budget"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/steal"
	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// toLocal is the plugin's side: every incoming stream is a connection to the local server.
type toLocal struct{ addr string }

func (d toLocal) OpenIncoming(ctx context.Context, _ wire.OpenRequest) (net.Conn, error) {
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d.addr)
}

// named is a real HTTP/1.1 server that answers with its name.
func named(t *testing.T, l net.Listener, name string) {
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, name)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
}

// filtered is a filtered steal of port 8080 in a pod namespace, a dial function from a client
// namespace, and the steal's events.
type filtered struct {
	dial  func(ctx context.Context, network, addr string) (net.Conn, error)
	steal *steal.Steal
	mu    sync.Mutex
	evs   []wire.StealEvent
}

func (f *filtered) warnings() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var w []string
	for _, e := range f.evs {
		if e.Kind == wire.EventWarning {
			w = append(w, e.Message)
		}
	}
	return w
}

// startFiltered starts a steal of requests with "X-Steal: yes"; the app and the local process answer
// with their names.
func startFiltered(t *testing.T, spec wire.StealSpec, mem *budget.Budget) *filtered {
	pod, client := testnet.New(t), testnet.New(t)
	testnet.Connect(t, pod, []netip.Prefix{netip.MustParsePrefix("10.79.0.1/24")}, client, []netip.Prefix{netip.MustParsePrefix("10.79.0.2/24")})
	named(t, pod.Listen(t, "tcp", "10.79.0.1:8080"), "app")
	ll, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	named(t, ll, "local")
	spec.Ports = []int{8080}
	spec.Filter = &wire.HTTPFilter{Headers: []string{"X-Steal: yes"}}
	f := &filtered{dial: client.DialContext}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := pod.Do(func() error {
		var err error
		f.steal, err = steal.Start(ctx, steal.Config{ID: "filteredtest", Spec: spec, Open: toLocal{addr: ll.Addr().String()},
			InNetns: pod.Do, Budget: mem, Events: func(e wire.StealEvent) {
				f.mu.Lock()
				f.evs = append(f.evs, e)
				f.mu.Unlock()
			}})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.steal.Close(); err != nil {
			t.Error(err)
		}
	})
	return f
}

// get sends one stolen request on a new connection and returns who answered.
func (f *filtered) get(t *testing.T) string {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: f.dial, DisableKeepAlives: true}}
	req, err := http.NewRequest(http.MethodGet, "http://10.79.0.1:8080/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Steal", "yes")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Past the memory budget a filtered steal's new connections go to the app unparsed, counted, with
// one warning at each change; within it they are filtered again (issue 16, memory budget).
func TestKernelFilteredStealOverBudget(t *testing.T) {
	var over atomic.Bool
	// The container's usage is over the limit when over says so; the clock moves a second at each
	// reading, past the budget's cache, so every check sees the usage of now.
	var clock atomic.Int64
	mem, err := budget.New(budget.MinLimit, budget.Options{
		Usage: func() (int64, error) {
			if over.Load() {
				return 2 * budget.MinLimit, nil
			}
			return 0, nil
		},
		Now: func() time.Time { return time.Unix(0, clock.Add(int64(time.Second))) },
	})
	if err != nil {
		t.Fatal(err)
	}
	f := startFiltered(t, wire.StealSpec{}, mem)
	if got := f.get(t); got != "local" {
		t.Fatalf("within the budget: answered by %q, want the local process", got)
	}
	over.Store(true)
	for range 2 {
		if got := f.get(t); got != "app" {
			t.Errorf("over the budget: answered by %q, want the app", got)
		}
	}
	if n := f.steal.OverBudgetConns(); n != 2 {
		t.Errorf("%d connections counted as sent raw over the budget, want 2", n)
	}
	over.Store(false)
	if got := f.get(t); got != "local" {
		t.Errorf("back within the budget: answered by %q, want the local process", got)
	}
	w := f.warnings()
	if len(w) != 2 || !strings.Contains(w[0], "over its memory budget") || !strings.Contains(w[1], "back within") {
		t.Errorf("warnings %q, want one on going over and one on coming back", w)
	}
}

// The steal spec's head deadline reaches the proxy: a head that does not end in time gets 408.
func TestKernelFilteredStealHeadTimeout(t *testing.T) {
	f := startFiltered(t, wire.StealSpec{HeadTimeout: wire.Millis(200 * time.Millisecond)}, nil)
	c, err := f.dial(context.Background(), "tcp", "10.79.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: x\r\nX-Steal: yes\r\n")
	// The bound only keeps a broken steal from hanging the test; the outcome is what counts.
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a head that never ends: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Errorf("got %d, want 408", resp.StatusCode)
	}
}

// While the session's plugin is away a filtered steal's matching requests go to the app; the
// redirect stays (the agent routes every request), and they are stolen again once it is back.
func TestKernelFilteredStealAway(t *testing.T) {
	f := startFiltered(t, wire.StealSpec{}, nil)
	if got := f.get(t); got != "local" {
		t.Fatalf("matching request answered by %q, want the local process", got)
	}
	if err := f.steal.SetAway(true); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if got := f.get(t); got != "app" {
			t.Errorf("matching request %d while the plugin is away answered by %q, want the app", i, got)
		}
	}
	if err := f.steal.SetAway(false); err != nil {
		t.Fatal(err)
	}
	if got := f.get(t); got != "local" {
		t.Errorf("matching request after the plugin is back answered by %q, want the local process", got)
	}
}
