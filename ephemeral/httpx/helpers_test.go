package httpx

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/probe"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// checkLeaks fails the test if goroutines running this package's (non-test) code outlive it. Call it
// first, so that its cleanup runs after every other one.
func checkLeaks(t *testing.T) {
	t.Helper()
	t.Cleanup(func() {
		var stuck []string
		for deadline := time.Now().Add(5 * time.Second); ; {
			stuck = ourGoroutines()
			if len(stuck) == 0 {
				return
			}
			if time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("%d goroutine(s) leaked:\n%s", len(stuck), strings.Join(stuck, "\n\n"))
	})
}

func ourGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, line := range strings.Split(g, "\n") {
			if strings.Contains(line, "/ephemeral/httpx/") && strings.Contains(line, ".go:") && !strings.Contains(line, "_test.go:") {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

// events collects a proxy's events.
type events struct {
	mu  sync.Mutex
	all []Event
}

func (e *events) add(ev Event) {
	e.mu.Lock()
	e.all = append(e.all, ev)
	e.mu.Unlock()
}

func (e *events) requests() []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Event
	for _, ev := range e.all {
		if ev.Warning == "" {
			out = append(out, ev)
		}
	}
	return out
}

func (e *events) warnings() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.all {
		if ev.Warning != "" {
			out = append(out, ev.Warning)
		}
	}
	return out
}

// waitRequests waits until n request events have arrived (they are emitted after the response is
// relayed, so a client can see its response a moment before the event exists).
func (e *events) waitRequests(t *testing.T, n int) []Event {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if evs := e.requests(); len(evs) >= n || time.Now().After(deadline) {
			if len(evs) != n {
				t.Fatalf("got %d request events, want %d: %+v", len(evs), n, evs)
			}
			return evs
		}
	}
}

// proxy is the agent's per-port loop in miniature: Peek, then the server for the protocol.
type proxy struct {
	addr    string
	ev      *events
	accepts atomic.Int64
	errs    chan error
}

type proxyConfig struct {
	app, local string // addresses; local "" means down
	localDial  func(ctx context.Context) (net.Conn, error)
	steal      func(h *RequestHead) bool
	// openTimeout and headTimeout set the Route's bounds (0: the defaults).
	openTimeout, headTimeout time.Duration
	drain                    <-chan struct{} // the Route's Drain
	// pick, when set, is the Route's Pick (several sessions); steal and local are then unused.
	pick func(h *RequestHead) *Target
}

// stealHeader is the filter most tests use: "x-steal: yes" goes local, probes never do.
func stealHeader(t *testing.T) func(h *RequestHead) bool {
	return filterSteal(t, wire.HTTPFilter{Headers: []string{`^x-steal: yes$`}})
}

// filterSteal decides as the agent does: the filter on the request's method, target and header lines,
// and never a probe.
func filterSteal(t testing.TB, f wire.HTTPFilter) func(h *RequestHead) bool {
	m, err := f.Compile()
	if err != nil {
		t.Fatal(err)
	}
	return func(h *RequestHead) bool { return m.Match(h.Method, h.PathQuery(), h.HeaderLines()) && !isProbe(h) }
}

// isProbe stands for the steal's probe decision (which also needs the pod's declared probes and
// the connection's source, ephemeral/probe's tests): the kubelet's User-Agent.
func isProbe(h *RequestHead) bool {
	return probe.KubeletAgent(h.HeaderLines())
}

func startProxy(t testing.TB, cfg proxyConfig) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{addr: ln.Addr().String(), ev: &events{}, errs: make(chan error, 100)}
	dialer := func(addr string) func(ctx context.Context) (net.Conn, error) {
		return func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}
	}
	route := Route{
		Steal:       cfg.steal,
		Pick:        cfg.pick,
		App:         dialer(cfg.app),
		Event:       p.ev.add,
		OpenTimeout: cfg.openTimeout,
		HeadTimeout: cfg.headTimeout,
	}
	if cfg.drain != nil {
		// The tests close a channel, as the steal ends its drain context.
		dctx, drained := context.WithCancel(context.Background())
		go func() {
			select {
			case <-cfg.drain:
				drained()
			case <-dctx.Done():
			}
		}()
		t.Cleanup(drained)
		route.Drain = dctx
	}
	switch {
	case cfg.localDial != nil:
		route.Local = cfg.localDial
	case cfg.local != "":
		route.Local = dialer(cfg.local)
	default:
		route.Local = func(context.Context) (net.Conn, error) {
			return nil, errors.New("tunnel: local port 8080 refused the connection")
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.accepts.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				pk, err := Peek(c, 200*time.Millisecond)
				if err != nil {
					c.Close()
					return
				}
				switch pk.Proto {
				case ProtoHTTP1:
					err = ServeHTTP1(ctx, c, pk.Prefix, route)
				case ProtoH2C:
					err = ServeH2C(ctx, c, pk.Prefix, route)
				default:
					err = ServeRaw(ctx, c, pk.Prefix, route.App)
				}
				if err != nil && !errors.Is(err, context.Canceled) {
					select {
					case p.errs <- err:
					default:
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		cancel()
		wg.Wait()
	})
	return p
}

// who is an app or local process: it answers with its name and what it got, and counts the
// connections it accepted.
type who struct {
	*httptest.Server
	name  string
	conns atomic.Int64
}

func whoServer(t testing.TB, name string, h2 bool, extra func(mux *http.ServeMux), configure ...func(*http.Server)) *who {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Served-By", name)
		fmt.Fprintf(w, "%s %s %s %s", name, r.Method, r.RequestURI, r.Proto)
	})
	if extra != nil {
		extra(mux)
	}
	s := &who{Server: httptest.NewUnstartedServer(mux), name: name}
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	if h2 {
		s.Config.Protocols = new(http.Protocols)
		s.Config.Protocols.SetHTTP1(true)
		s.Config.Protocols.SetUnencryptedHTTP2(true)
	}
	for _, f := range configure {
		f(s.Config)
	}
	s.Start()
	t.Cleanup(s.Close)
	return s
}

func (s *who) addr() string { return strings.TrimPrefix(s.URL, "http://") }
