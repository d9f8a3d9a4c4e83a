package httpx

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/keepalive"
)

// An idle h2c client connection ends (GOAWAY, then close) when the app closes its side of it, and,
// when only the local process held it, when that one closes; the agent has no idle timer of its own
// (review M4). HTTP/1's twin is TestHTTP1IdleClosedWithUpstream.
func TestH2CIdleClosedWithUpstream(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steal []bool // the requests sent before the connection idles: stolen or not
	}{
		{name: "app closes", steal: []bool{false}},
		{name: "app closes while the local process keeps its side", steal: []bool{true, false}},
		{name: "local process closes, no app connection", steal: []bool{true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkLeaks(t)
			idle := func(d time.Duration) func(*http.Server) { return func(s *http.Server) { s.IdleTimeout = d } }
			// The side expected to close does so at once; the other keeps its side for the test.
			appIdle, localIdle := 20*time.Millisecond, time.Hour
			if !slices.Contains(tc.steal, false) {
				appIdle, localIdle = time.Hour, 20*time.Millisecond
			}
			app := whoServer(t, "app", true, nil, idle(appIdle))
			local := whoServer(t, "local", true, nil, idle(localIdle))
			p := startProxy(t, proxyConfig{app: app.addr(), local: local.addr(), steal: stealHeader(t)})
			tr := &http.Transport{Protocols: h2cOnly}
			cc, err := tr.NewClientConn(context.Background(), "http", p.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			closed := make(chan struct{})
			var once atomic.Bool
			cc.SetStateHook(func(cc *http.ClientConn) {
				if cc.Err() != nil && once.CompareAndSwap(false, true) {
					close(closed)
				}
			})
			for _, steal := range tc.steal {
				req, err := http.NewRequest(http.MethodGet, "http://"+p.addr+"/", nil)
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("X-Steal", map[bool]string{true: "yes", false: "no"}[steal])
				resp, err := cc.RoundTrip(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
			}
			// The bound only keeps a broken proxy from hanging the test; the outcome is what counts.
			select {
			case <-closed:
			case <-time.After(10 * time.Second):
				t.Error("the idle client connection is still open after its upstream closed")
			}
		})
	}
}

// A gRPC app that drains idle connections (MaxConnectionIdle: GOAWAY) drains its clients through a
// filtered steal too: the client's channel leaves READY, as it would talking to the app directly.
func TestGRPCAppDrainReachesTheClient(t *testing.T) {
	checkLeaks(t)
	app := grpcServer(t, "app", grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: 50 * time.Millisecond}))
	local := grpcServer(t, "local")
	p := startProxy(t, proxyConfig{app: app.addr, local: local.addr, steal: stealHeader(t)})
	cc, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "n"}); err != nil {
		t.Fatal(err)
	}
	// The bound (ctx) only keeps a broken proxy from hanging the test.
	for cc.GetState() == connectivity.Ready {
		if !cc.WaitForStateChange(ctx, connectivity.Ready) {
			t.Fatal("the client's channel is still READY after the app drained its connection")
		}
	}
}

// Header limits are the same for HTTP/1 and h2c: a head up to 64 KiB goes through, a larger one is
// refused (431, or the h2c client refuses to send it, having read the proxy's limit) and reaches no
// side (review M4: h2c took net/http's 1 MiB default).
func TestHeaderLimitSameForHTTP1AndH2C(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(protoName(h2), func(t *testing.T) {
			checkLeaks(t)
			var appGot, localGot atomic.Int64
			app := whoServer(t, "app", h2, nil, counting(&appGot))
			local := whoServer(t, "local", h2, nil, counting(&localGot))
			p := startProxy(t, proxyConfig{app: app.addr(), local: local.addr(), steal: stealHeader(t)})
			var c *http.Client
			if h2 {
				var dials atomic.Int64
				c = h2Client(t, &dials)
			} else {
				c = oneConnClient(t)
			}
			send := func(size int) (int, error) {
				req, err := http.NewRequest(http.MethodGet, "http://"+p.addr+"/", nil)
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("X-Big", strings.Repeat("b", size))
				resp, err := c.Do(req)
				if err != nil {
					return 0, err
				}
				// Read to the end, so that the HTTP/1 connection is reused.
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp.StatusCode, nil
			}
			// The first HTTP/1 request sets up the connection, so that the large head is a later one
			// (a first head over the limit goes to the app raw: TestHTTP1LargeFirstHeadRelayedIntact).
			if status, err := send(60 << 10); err != nil || status != http.StatusOK {
				t.Fatalf("a 60 KiB head: %d, %v; want 200", status, err)
			}
			status, err := send(100 << 10)
			var refused bool
			switch {
			case err == nil:
				refused = status == http.StatusRequestHeaderFieldsTooLarge
			case h2:
				refused = strings.Contains(err.Error(), "larger than peer's advertised limit")
			}
			if !refused {
				t.Errorf("a 100 KiB head: %d, %v; want it refused", status, err)
			}
			if n := p.accepts.Load(); n != 1 {
				t.Errorf("proxy accepted %d connections, want 1", n)
			}
			if a, l := appGot.Load(), localGot.Load(); a != 1 || l != 0 {
				t.Errorf("the app got %d requests and the local process %d, want 1 and 0", a, l)
			}
		})
	}
}
