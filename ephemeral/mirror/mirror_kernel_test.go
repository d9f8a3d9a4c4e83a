//go:build linux && kernel

package mirror_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/budget"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/mirror"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/steal"
	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// toLocal is the plugin's side: every mirrored connection is joined to the local server.
type toLocal struct{ addr string }

func (d toLocal) OpenIncoming(ctx context.Context, _ wire.OpenRequest) (net.Conn, error) {
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d.addr)
}

// recorded is a real HTTP server (HTTP/1.1 and h2c) that records the sha256 of every body it gets.
type recorded struct {
	mu   sync.Mutex
	seen []string
	addr string
}

func serveRecorded(t *testing.T, l net.Listener, answer string) *recorded {
	r := &recorded{addr: l.Addr().String()}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.seen = append(r.seen, fmt.Sprintf("%s %s %s %x", req.Proto, req.Method, req.URL.Path, sha256.Sum256(b)))
		r.mu.Unlock()
		fmt.Fprintf(w, "%s %s\n", answer, req.URL.Path)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return r
}

func (r *recorded) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	// Connections are copied side by side, so only their requests keep their order.
	return slices.Sorted(slices.Values(r.seen))
}

// clients sends HTTP/1.1 and h2c requests with bodies through client's namespace to addr, checks that
// the app answered each, and returns what the app recorded should be.
func clients(t *testing.T, dial func(ctx context.Context, network, addr string) (net.Conn, error), addr string) []string {
	t.Helper()
	var h1, h2 http.Protocols
	h1.SetHTTP1(true)
	h2.SetUnencryptedHTTP2(true)
	var want []string
	for _, p := range []struct {
		proto, short string
		protos       *http.Protocols
	}{{"HTTP/1.1", "h1", &h1}, {"HTTP/2.0", "h2", &h2}} {
		hc := &http.Client{Transport: &http.Transport{DialContext: dial, Protocols: p.protos}}
		for i, size := range []int{0, 5, 300 << 10} {
			body := strings.Repeat(fmt.Sprint(i), size)
			method := "GET"
			if size > 0 {
				method = "POST"
			}
			path := fmt.Sprintf("/%s/%d", p.short, i)
			req, _ := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "app "+path+"\n" {
				t.Fatalf("client got %q, want the app's answer", b)
			}
			want = append(want, fmt.Sprintf("%s %s %s %x", p.proto, method, path, sha256.Sum256([]byte(body))))
		}
		hc.CloseIdleConnections()
	}
	slices.Sort(want)
	return want
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestKernelMirrorModes: real HTTP/1.1 and h2c traffic to an app in a namespace is copied request by
// request to a local server, sniffed and redirected, while the client gets the app's answers; the
// local server sees the same requests with the same bodies.
func TestKernelMirrorModes(t *testing.T) {
	testnet.RequireRoot(t)
	for _, mode := range []string{wire.MirrorSniff, wire.MirrorRedirect} {
		t.Run(mode, func(t *testing.T) {
			pod, client := testnet.New(t), testnet.New(t)
			testnet.Connect(t, pod, []netip.Prefix{netip.MustParsePrefix("10.79.0.1/24")}, client, []netip.Prefix{netip.MustParsePrefix("10.79.0.2/24")})
			app := serveRecorded(t, pod.Listen(t, "tcp", "10.79.0.1:8080"), "app")
			ll, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			local := serveRecorded(t, ll, "local")

			spec := wire.MirrorSpec{Ports: []int{8080}, Mode: mode, Diff: true}
			var mu sync.Mutex
			var evs []wire.MirrorEvent
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			m, err := mirror.New(ctx, mirror.Config{Spec: spec, Open: toLocal{addr: local.addr}, Events: func(e wire.MirrorEvent) {
				mu.Lock()
				evs = append(evs, e)
				mu.Unlock()
			}})
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			if mode == wire.MirrorSniff {
				var c *capture.Capture
				if err := pod.Do(func() error {
					var err error
					c, err = capture.Open(capture.Options{Filter: &capture.Filter{Proto: capture.TCP, Port: 8080}})
					return err
				}); err != nil {
					t.Fatal(err)
				}
				go func() { done <- m.Sniff(ctx, c) }()
			} else {
				var st *steal.Steal
				if err := pod.Do(func() error {
					var err error
					st, err = steal.Start(ctx, steal.Config{ID: "mirrortest", Spec: wire.StealSpec{Ports: []int{8080}}, Tee: m.Handler, InNetns: pod.Do})
					return err
				}); err != nil {
					t.Fatal(err)
				}
				go func() {
					<-ctx.Done()
					done <- st.Close()
				}()
			}
			want := clients(t, client.DialContext, "10.79.0.1:8080")
			waitFor(t, "the copies", func() bool { return len(local.list()) == len(want) })
			if got := local.list(); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("local server got\n%q\nwant\n%q", got, want)
			}
			if got := app.list(); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("app got\n%q\nwant\n%q", got, want)
			}
			// Every answer differs in its first word, and --diff says so for each.
			waitFor(t, "the diffs", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(evs) == len(want)
			})
			mu.Lock()
			for _, e := range evs {
				if len(e.Differences) != 1 || !strings.HasPrefix(e.Differences[0], "body differs from byte 0") {
					t.Errorf("event %+v, want a body difference", e)
				}
			}
			mu.Unlock()
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			m.Close()
			s := m.Stats()
			if s.Mirrored != int64(len(want)) || s.Answered != s.Mirrored || s.Dropped() != 0 || s.KernelDropped != 0 {
				t.Errorf("stats %+v, want every request mirrored and answered", s)
			}
		})
	}
}

// TestKernelRedirectMirrorOverBudget: with the agent over its memory budget, a redirect mirror copies
// nothing and counts every connection's copy as the budget's drop, while the clients get each of the
// app's answers and the app every request, bodies whole: the app's traffic is never what gives.
func TestKernelRedirectMirrorOverBudget(t *testing.T) {
	testnet.RequireRoot(t)
	pod, client := testnet.New(t), testnet.New(t)
	testnet.Connect(t, pod, []netip.Prefix{netip.MustParsePrefix("10.79.1.1/24")}, client, []netip.Prefix{netip.MustParsePrefix("10.79.1.2/24")})
	app := serveRecorded(t, pod.Listen(t, "tcp", "10.79.1.1:8080"), "app")
	ll, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	local := serveRecorded(t, ll, "local")
	b, err := budget.New(budget.MinLimit, budget.Options{Usage: func() (int64, error) { return 2 * budget.MinLimit, nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m, err := mirror.New(ctx, mirror.Config{Spec: wire.MirrorSpec{Ports: []int{8080}, Mode: wire.MirrorRedirect}, Open: toLocal{addr: local.addr}, Budget: b})
	if err != nil {
		t.Fatal(err)
	}
	var st *steal.Steal
	if err := pod.Do(func() error {
		var err error
		st, err = steal.Start(ctx, steal.Config{ID: "budgettest", Spec: wire.StealSpec{Ports: []int{8080}}, Tee: m.Handler, InNetns: pod.Do, Budget: b})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	want := clients(t, client.DialContext, "10.79.1.1:8080")
	if got := app.list(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("app got\n%q\nwant\n%q", got, want)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	m.Close()
	s := m.Stats()
	// clients uses one connection per protocol.
	if s.Mirrored != 0 || s.DroppedOverBudget != 2 || s.Dropped() != s.DroppedOverBudget {
		t.Errorf("stats %+v, want nothing mirrored and both connections' copies dropped over budget", s)
	}
	if got := local.list(); len(got) != 0 {
		t.Errorf("the local server got %q over budget", got)
	}
	if r := b.Reserved(); r != 0 {
		t.Errorf("%d bytes still reserved", r)
	}
}
