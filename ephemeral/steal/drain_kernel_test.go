//go:build linux && kernel

package steal_test

import (
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

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/steal"
	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// pooled is a pod whose app speaks HTTP/1.1 and h2c on 10.79.1.1:8080, a client netns, and a Go
// http.Transport there whose keep-alive pool (or single h2c connection) carries a steady load.
type pooled struct {
	t           *testing.T
	pod, client *testnet.NS
	local       string

	mu  sync.Mutex
	evs []wire.StealEvent

	ok, failed atomic.Int64
	errMu      sync.Mutex
	errs       []error
	gateMu     sync.Mutex
	gate       chan struct{} // non-nil while the test pauses the load; closed to resume it
	stop       context.CancelFunc
	wg         sync.WaitGroup
}

const pooledApp = "10.79.1.1:8080"

func newPooled(t *testing.T, h2 bool) *pooled {
	p := &pooled{t: t, pod: testnet.New(t), client: testnet.New(t)}
	testnet.Connect(t, p.pod, []netip.Prefix{netip.MustParsePrefix("10.79.1.1/24")}, p.client, []netip.Prefix{netip.MustParsePrefix("10.79.1.2/24")})
	both := new(http.Protocols)
	both.SetHTTP1(true)
	both.SetUnencryptedHTTP2(true)
	serve := func(l net.Listener, name string) {
		srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Protocols: both, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			fmt.Fprint(w, name)
		})}
		go func() { _ = srv.Serve(l) }()
		t.Cleanup(func() { srv.Close() })
	}
	serve(p.pod.Listen(t, "tcp", pooledApp), "app")
	ll, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serve(ll, "local")
	p.local = ll.Addr().String()

	tr := &http.Transport{DialContext: p.client.DialContext, MaxIdleConnsPerHost: 8}
	if h2 {
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
	}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	ctx, stop := context.WithCancel(context.Background())
	p.stop = stop
	// POSTs, which a client does not repeat on its own when a kept connection fails under them:
	// every failure counts.
	for range 4 {
		p.wg.Go(func() {
			for ctx.Err() == nil {
				p.gateMu.Lock()
				g := p.gate
				p.gateMu.Unlock()
				if g != nil {
					<-g
				}
				resp, err := hc.Post("http://"+pooledApp+"/", "text/plain", strings.NewReader("request"))
				if err == nil {
					var b []byte
					b, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					if err == nil && string(b) != "app" {
						err = fmt.Errorf("answered %q, want the app", b)
					}
				}
				if err != nil {
					p.failed.Add(1)
					p.errMu.Lock()
					p.errs = append(p.errs, err)
					p.errMu.Unlock()
					continue
				}
				p.ok.Add(1)
			}
		})
	}
	t.Cleanup(p.end)
	return p
}

func (p *pooled) end() {
	p.stop()
	p.resume()
	p.wg.Wait()
}

func (p *pooled) pause() {
	p.gateMu.Lock()
	defer p.gateMu.Unlock()
	if p.gate == nil {
		p.gate = make(chan struct{})
	}
}

func (p *pooled) resume() {
	p.gateMu.Lock()
	defer p.gateMu.Unlock()
	if p.gate != nil {
		close(p.gate)
		p.gate = nil
	}
}

func (p *pooled) start(spec wire.StealSpec) *steal.Steal {
	spec.Ports = []int{8080}
	spec.Filter = &wire.HTTPFilter{Headers: []string{"X-Steal: yes"}}
	spec.PassedEvents = true
	var st *steal.Steal
	if err := p.pod.Do(func() error {
		var err error
		st, err = steal.Start(context.Background(), steal.Config{ID: "pooledtest", Spec: spec, Open: toLocal{addr: p.local},
			InNetns: p.pod.Do, Events: func(e wire.StealEvent) {
				p.mu.Lock()
				p.evs = append(p.evs, e)
				p.mu.Unlock()
			}})
		return err
	}); err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() { _ = st.Close() })
	return st
}

// events returns the steal's events of one kind.
func (p *pooled) events(kind string) []wire.StealEvent {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []wire.StealEvent
	for _, e := range p.evs {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// passedSeen counts the requests the agent relayed to the app.
func (p *pooled) passedSeen() int {
	n := 0
	for _, e := range p.events(wire.EventRequest) {
		if !e.Stolen {
			n++
		}
	}
	return n
}

// waitFor waits until cond holds, or fails the test with what.
func (p *pooled) waitFor(what string, cond func() bool) {
	p.t.Helper()
	for deadline := time.Now().Add(45 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			p.t.Fatalf("gave up waiting for %s (%d requests ok, %d failed; flush events %+v)", what, p.ok.Load(), p.failed.Load(), p.events(wire.EventFlush))
		}
	}
}

// waitServed waits for n more successful requests.
func (p *pooled) waitServed(n int64) {
	p.t.Helper()
	target := p.ok.Load() + n
	p.waitFor(fmt.Sprintf("%d more requests", n), func() bool { return p.ok.Load() >= target })
}

func (p *pooled) failures() string {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return fmt.Sprint(p.errs)
}

// A client's keep-alive pool, under a steady load across the steal's start and end, loses no
// request: its connections open before the steal move onto the redirect once idle (requests after
// that are seen by the agent), and at the end the agent drains the ones it relays instead of
// closing them under the client.
func TestKernelPooledClientAcrossSteal(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "HTTP/1.1", true: "h2c"}[h2], func(t *testing.T) {
			p := newPooled(t, h2)
			p.waitServed(100)
			st := p.start(wire.StealSpec{})
			p.waitServed(100)
			// The pooled connections are busy while the load runs; a pause leaves them idle, and
			// the steal resets them then.
			p.pause()
			p.waitFor("the open connections flushed", func() bool {
				for _, e := range p.events(wire.EventFlush) {
					if e.Done && e.Left == 0 {
						return true
					}
				}
				return false
			})
			p.resume()
			flushed := 0
			for _, e := range p.events(wire.EventFlush) {
				flushed += e.Flushed
				if e.Reset != 0 {
					t.Errorf("busy connections reset without --flush-connections: %+v", e)
				}
			}
			if flushed == 0 {
				t.Errorf("no idle connection flushed: %+v", p.events(wire.EventFlush))
			}
			p.waitFor("requests seen by the agent", func() bool { return p.passedSeen() >= 100 })

			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
			seen := p.passedSeen()
			p.waitServed(100)
			p.end()
			if n := p.failed.Load(); n != 0 {
				t.Errorf("%d of %d requests failed: %s", n, n+p.ok.Load(), p.failures())
			}
			if got := p.passedSeen(); got != seen {
				t.Errorf("%d requests relayed by the agent after its end", got-seen)
			}
			drains := p.events(wire.EventDrain)
			if len(drains) != 1 || drains[0].Drained == 0 || drains[0].Reset != 0 {
				t.Errorf("drain events %+v, want one with connections drained and none reset", drains)
			}
			t.Logf("%d requests ok, %d idle connections flushed at the start, drain %+v", p.ok.Load(), flushed, drains)
		})
	}
}

// With --flush-connections the busy pooled connections are reset at once, counted: the agent sees
// requests without the load pausing, and no more requests fail than connections were reset.
func TestKernelPooledClientFlushBusy(t *testing.T) {
	p := newPooled(t, false)
	p.waitServed(100)
	p.start(wire.StealSpec{FlushConnections: true})
	p.waitFor("requests seen by the agent", func() bool { return p.passedSeen() >= 100 })
	p.end()
	reset := 0
	for _, e := range p.events(wire.EventFlush) {
		reset += e.Reset
	}
	if reset == 0 {
		t.Errorf("no busy connection reset: %+v", p.events(wire.EventFlush))
	}
	if n := p.failed.Load(); n > int64(reset) {
		t.Errorf("%d requests failed, more than the %d connections reset: %s", n, reset, p.failures())
	}
	t.Logf("%d busy connections reset, %d requests failed", reset, p.failed.Load())
}
