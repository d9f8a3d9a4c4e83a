package httpx

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/metrics"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// BenchmarkLatency measures request latency through the proxy against the same server directly,
// with the requests paced at 2,000 per second over 8 keep-alive connections (the load the filter is
// specified for) and a header filter with look-ahead deciding each one. It reports p50 and p99.
func BenchmarkLatency(b *testing.B) {
	app := whoServer(b, "app", false, nil)
	local := whoServer(b, "local", false, nil)
	steal := filterSteal(b, wire.HTTPFilter{Headers: []string{`^User-Agent: (?!kube-probe)`, `^x-steal: yes$`}, Match: wire.MatchAll})
	p := startProxy(b, proxyConfig{app: app.addr(), local: local.addr(), steal: steal})
	for _, target := range []struct{ name, addr string }{{"direct", app.addr()}, {"proxied", p.addr}} {
		b.Run(target.name, func(b *testing.B) {
			const conns, rate = 8, 2000
			tr := &http.Transport{MaxConnsPerHost: conns, MaxIdleConnsPerHost: conns}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr}
			var mu sync.Mutex
			lat := make([]time.Duration, 0, b.N)
			tick := time.NewTicker(time.Second / rate)
			defer tick.Stop()
			sem := make(chan struct{}, conns)
			var wg sync.WaitGroup
			b.ResetTimer()
			for i := range b.N {
				<-tick.C
				sem <- struct{}{}
				wg.Add(1)
				go func() {
					defer func() { <-sem; wg.Done() }()
					req, _ := http.NewRequest(http.MethodGet, "http://"+target.addr+"/x", nil)
					req.Header.Set("User-Agent", "bench/1")
					if i%2 == 0 {
						req.Header.Set("X-Steal", "yes")
					}
					start := time.Now()
					resp, err := c.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					d := time.Since(start)
					mu.Lock()
					lat = append(lat, d)
					mu.Unlock()
				}()
			}
			wg.Wait()
			b.StopTimer()
			slices.Sort(lat)
			if len(lat) > 0 {
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			}
		})
	}
}

// BenchmarkSequential is one keep-alive connection sending requests back to back, alternating
// between the sides: its ns/op difference between proxied and direct is the proxy's cost per request.
func BenchmarkSequential(b *testing.B) {
	app := whoServer(b, "app", false, nil)
	local := whoServer(b, "local", false, nil)
	steal := filterSteal(b, wire.HTTPFilter{Headers: []string{`^User-Agent: (?!kube-probe)`, `^x-steal: yes$`}, Match: wire.MatchAll})
	p := startProxy(b, proxyConfig{app: app.addr(), local: local.addr(), steal: steal})
	for _, target := range []struct{ name, addr string }{{"direct", app.addr()}, {"proxied", p.addr}} {
		b.Run(target.name, func(b *testing.B) {
			tr := &http.Transport{MaxConnsPerHost: 1}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				req, _ := http.NewRequest(http.MethodGet, "http://"+target.addr+"/x", nil)
				req.Header.Set("User-Agent", "bench/1")
				if i%2 == 0 {
					req.Header.Set("X-Steal", "yes")
				}
				resp, err := c.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}

// BenchmarkSequentialSessions is BenchmarkSequential's proxied run with a Pick among 1 and 10
// sessions' header filters (each its own Target), alternating between a request the last session
// takes and one for the app: the ns/op difference between the two is what more sessions on a port
// cost per request.
func BenchmarkSequentialSessions(b *testing.B) {
	app := whoServer(b, "app", false, nil)
	local := whoServer(b, "local", false, nil)
	for _, n := range []int{1, 10} {
		type session struct {
			steal  func(h *RequestHead) bool
			target *Target
		}
		var ss []session
		for i := range n {
			addr := local.addr()
			ss = append(ss, session{
				steal: filterSteal(b, wire.HTTPFilter{Headers: []string{fmt.Sprintf(`^X-Dev: dev%d$`, i)}}),
				target: &Target{Local: func(ctx context.Context) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "tcp", addr)
				}},
			})
		}
		pick := func(h *RequestHead) *Target {
			for _, s := range ss {
				if s.steal(h) {
					return s.target
				}
			}
			return nil
		}
		p := startProxy(b, proxyConfig{app: app.addr(), pick: pick})
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) {
			tr := &http.Transport{MaxConnsPerHost: 1}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				req, _ := http.NewRequest(http.MethodGet, "http://"+p.addr+"/x", nil)
				req.Header.Set("User-Agent", "bench/1")
				if i%2 == 0 {
					req.Header.Set("X-Dev", fmt.Sprintf("dev%d", n-1))
				}
				resp, err := c.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}

// BenchmarkPacedCPU is the agent's load in the steal bench in miniature: 64 kept-alive connections
// sharing a paced 2,000 requests per second, every one passed to the app by a filter that matches
// nothing. It reports the process's CPU (user + system, getrusage) per request: the proxied run's
// figure minus the direct one's is what the proxy costs per passed request, wake-ups and scheduling
// included, which a back-to-back benchmark (BenchmarkSequential) hides. It also reports the
// goroutines the proxy started per request (runtime/metrics), the hand-offs that cost wake-ups.
func BenchmarkPacedCPU(b *testing.B) {
	app := whoServer(b, "app", false, nil)
	steal := filterSteal(b, wire.HTTPFilter{Headers: []string{`^X-Steal: yes$`}})
	// A drain channel, as the agent's dispatcher always gives one.
	p := startProxy(b, proxyConfig{app: app.addr(), steal: steal, drain: make(chan struct{})})
	for _, target := range []struct{ name, addr string }{{"direct", app.addr()}, {"proxied", p.addr}} {
		b.Run(target.name, func(b *testing.B) {
			const conns, rate = 64, 2000
			tr := &http.Transport{MaxConnsPerHost: conns, MaxIdleConnsPerHost: conns}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr}
			work := make(chan struct{})
			var wg sync.WaitGroup
			for range conns {
				wg.Go(func() {
					for range work {
						req, _ := http.NewRequest(http.MethodGet, "http://"+target.addr+"/x", nil)
						resp, err := c.Do(req)
						if err != nil {
							b.Error(err)
							return
						}
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				})
			}
			tick := time.NewTicker(time.Second / rate)
			defer tick.Stop()
			before, spawned := processCPU(), goroutinesCreated()
			b.ResetTimer()
			for range b.N {
				<-tick.C
				work <- struct{}{}
			}
			close(work)
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64((processCPU()-before).Microseconds())/float64(b.N), "cpu-µs/op")
			b.ReportMetric(float64(goroutinesCreated()-spawned)/float64(b.N), "goroutines/op")
		})
	}
}

// processCPU is the process's user and system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// goroutinesCreated is the goroutines the process has started so far.
func goroutinesCreated() uint64 {
	s := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
