package httpx

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// counting makes a who server count the requests its handler gets.
func counting(n *atomic.Int64) func(*http.Server) {
	return func(s *http.Server) {
		h := s.Handler
		s.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n.Add(1)
			h.ServeHTTP(w, r)
		})
	}
}

// crashing makes a who server's handler drop the connection (HTTP/2: reset the stream) without
// answering, as a handler that panics does.
func crashing(s *http.Server) {
	s.Handler = http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) })
}

// do sends a body-less request with the steal header, over HTTP/1 or h2c.
func do(t *testing.T, h2 bool, method, url string) (int, string) {
	t.Helper()
	var c *http.Client
	if h2 {
		var dials atomic.Int64
		c = h2Client(t, &dials)
	} else {
		c = oneConnClient(t)
	}
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Steal", "yes")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func protoName(h2 bool) string {
	if h2 {
		return "h2c"
	}
	return "HTTP/1"
}

// A stolen request that reached the local process never goes to the app as well, whatever the
// method: a DELETE whose handler crashed was replayed to the app (review M3).
func TestLocalFailureIsNotSentToTheApp(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(protoName(h2), func(t *testing.T) {
			checkLeaks(t)
			var appGot, localGot atomic.Int64
			app := whoServer(t, "app", h2, nil, counting(&appGot))
			local := whoServer(t, "local", h2, nil, crashing, counting(&localGot))
			p := startProxy(t, proxyConfig{app: app.addr(), local: local.addr(), steal: stealHeader(t)})
			status, body := do(t, h2, http.MethodDelete, "http://"+p.addr+"/items/1")
			if status != http.StatusBadGateway || !strings.Contains(body, "the local process failed") {
				t.Errorf("got %d %q, want 502 saying the local process failed", status, body)
			}
			if n := localGot.Load(); n != 1 {
				t.Errorf("the local process got %d requests, want 1", n)
			}
			if n := appGot.Load(); n != 0 {
				t.Errorf("the app got %d requests, want 0", n)
			}
			evs := p.ev.waitRequests(t, 1)
			if !evs[0].Stolen || evs[0].Status != http.StatusBadGateway {
				t.Errorf("event %+v, want stolen, 502", evs[0])
			}
			if w := p.ev.warnings(); len(w) != 1 || !strings.Contains(w[0], "not sent to the app") {
				t.Errorf("warnings %q", w)
			}
		})
	}
}

// The one fallback to the app: the local process could not be reached, because the plugin refused
// the open (its dial of the local process failed) or did not answer it within the bound.
func TestUnreachableLocalFallsBackToTheApp(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		for _, tc := range []struct {
			name    string
			warning string
			dial    func(abandoned *atomic.Bool) func(ctx context.Context) (net.Conn, error)
		}{
			{name: "refused", warning: "refused", dial: func(*atomic.Bool) func(ctx context.Context) (net.Conn, error) {
				return nil // startProxy's local that is down: a refusal
			}},
			{name: "unanswered", warning: "no answer within", dial: func(abandoned *atomic.Bool) func(ctx context.Context) (net.Conn, error) {
				// An open that the plugin never answers: only the bound ends it.
				return func(ctx context.Context) (net.Conn, error) {
					<-ctx.Done()
					abandoned.Store(true)
					return nil, ctx.Err()
				}
			}},
		} {
			t.Run(protoName(h2)+"/"+tc.name, func(t *testing.T) {
				checkLeaks(t)
				var appGot atomic.Int64
				var abandoned atomic.Bool
				app := whoServer(t, "app", h2, nil, counting(&appGot))
				p := startProxy(t, proxyConfig{app: app.addr(), localDial: tc.dial(&abandoned), steal: stealHeader(t),
					openTimeout: 100 * time.Millisecond})
				status, body := do(t, h2, http.MethodDelete, "http://"+p.addr+"/items/1")
				if status != http.StatusOK || !strings.HasPrefix(body, "app DELETE /items/1") {
					t.Errorf("got %d %q, want the app's answer", status, body)
				}
				if n := appGot.Load(); n != 1 {
					t.Errorf("the app got %d requests, want 1", n)
				}
				if w := p.ev.warnings(); len(w) != 1 || !strings.Contains(w[0], "local process unreachable") ||
					!strings.Contains(w[0], tc.warning) {
					t.Errorf("warnings %q, want one saying %q", w, tc.warning)
				}
				if tc.name == "unanswered" && !abandoned.Load() {
					t.Error("the unanswered open was not abandoned")
				}
			})
		}
	}
}
