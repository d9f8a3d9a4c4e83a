package httpx

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// sessions is the dispatcher's Pick in miniature: sessions by the X-Dev value they filter, in the
// order they registered, and the app for the rest.
type sessions struct {
	names   []string
	targets []*Target
}

func newSessions(t *testing.T, locals map[string]*who, order ...string) *sessions {
	s := &sessions{}
	for _, name := range order {
		addr := locals[name].addr()
		s.names = append(s.names, name)
		s.targets = append(s.targets, &Target{Local: func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}})
	}
	return s
}

func (s *sessions) pick(h *RequestHead) *Target {
	dev := h.Get("X-Dev")
	for i, n := range s.names {
		if dev == n {
			return s.targets[i]
		}
	}
	return nil
}

func (s *sessions) name(t *Target) string {
	for i, x := range s.targets {
		if x == t {
			return s.names[i]
		}
	}
	return "app"
}

// TestMultiHTTP1KeepAlive: one keep-alive connection carries requests for two sessions and the app,
// each answered by its own side; losing one session's process leaves the connection and the others
// working, and that session's requests fall back to the app.
func TestMultiHTTP1KeepAlive(t *testing.T) {
	checkLeaks(t)
	app := whoServer(t, "app", false, nil)
	locals := map[string]*who{"alice": whoServer(t, "alice", false, nil), "bob": whoServer(t, "bob", false, nil)}
	ss := newSessions(t, locals, "alice", "bob")
	p := startProxy(t, proxyConfig{app: app.addr(), pick: ss.pick})
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	get := func(dev, path string) string {
		t.Helper()
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nX-Dev: %s\r\n\r\n", path, dev)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %s for %q: %v", path, dev, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return string(b)
	}
	want := map[string]string{"alice": "alice", "bob": "bob", "carol": "app"}
	for i := range 9 {
		dev := []string{"alice", "bob", "carol"}[i%3]
		path := fmt.Sprintf("/r%d", i)
		if got, w := get(dev, path), want[dev]+" GET "+path+" HTTP/1.1"; got != w {
			t.Errorf("got %q, want %q", got, w)
		}
	}
	evs := p.ev.waitRequests(t, 9)
	for _, ev := range evs {
		dev := []string{"alice", "bob", "carol"}[int(ev.Path[2]-'0')%3]
		if got := ss.name(ev.Target); got != want[dev] || ev.Stolen != (want[dev] != "app") {
			t.Errorf("event %s went to %s (stolen %v), want %s", ev.Path, got, ev.Stolen, want[dev])
		}
	}
	// Alice's process goes away between requests: the client's connection stays, Bob and the app
	// answer on it, and Alice's requests go to the app with a warning.
	locals["alice"].CloseClientConnections()
	locals["alice"].Close()
	if got, w := get("bob", "/after"), "bob GET /after HTTP/1.1"; got != w {
		t.Errorf("after alice left: got %q, want %q", got, w)
	}
	if got, w := get("carol", "/after"), "app GET /after HTTP/1.1"; got != w {
		t.Errorf("after alice left: got %q, want %q", got, w)
	}
	if got, w := get("alice", "/after"), "app GET /after HTTP/1.1"; got != w {
		t.Errorf("alice's request after she left: got %q, want %q", got, w)
	}
	if n := p.accepts.Load(); n != 1 {
		t.Errorf("proxy accepted %d connections, want the one keep-alive connection", n)
	}
	if ws := p.ev.warnings(); len(ws) != 1 || !strings.Contains(ws[0], "local process unreachable") {
		t.Errorf("warnings %q, want one about alice's unreachable process", ws)
	}
}

// TestMultiH2CStreams: one h2c connection carries concurrent streams for two sessions and the app;
// one session's server going away (GOAWAY, then gone) affects only that session's streams.
func TestMultiH2CStreams(t *testing.T) {
	checkLeaks(t)
	app := whoServer(t, "app", true, nil)
	locals := map[string]*who{"alice": whoServer(t, "alice", true, nil), "bob": whoServer(t, "bob", true, nil)}
	ss := newSessions(t, locals, "alice", "bob")
	p := startProxy(t, proxyConfig{app: app.addr(), pick: ss.pick})
	var dials atomic.Int64
	c := h2Client(t, &dials)
	do := func(dev, path string) string {
		req, _ := http.NewRequest(http.MethodGet, "http://"+p.addr+path, nil)
		req.Header.Set("X-Dev", dev)
		resp, err := c.Do(req)
		if err != nil {
			return "error: " + err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	want := map[string]string{"alice": "alice", "bob": "bob", "carol": "app"}
	// One stream first, so that the client's concurrent streams find its connection made.
	if got, w := do("carol", "/first"), "app GET /first HTTP/2.0"; got != w {
		t.Fatalf("got %q, want %q", got, w)
	}
	var wg sync.WaitGroup
	for i := range 30 {
		dev := []string{"alice", "bob", "carol"}[i%3]
		path := fmt.Sprintf("/s%d", i)
		wg.Go(func() {
			if got, w := do(dev, path), want[dev]+" GET "+path+" HTTP/2.0"; got != w {
				t.Errorf("got %q, want %q", got, w)
			}
		})
	}
	wg.Wait()
	p.ev.waitRequests(t, 31)
	// Alice's server shuts down (GOAWAY to the agent, then its listener is gone).
	locals["alice"].Config.Shutdown(context.Background())
	locals["alice"].Close()
	want["alice"] = "app"
	for i := range 9 {
		dev := []string{"alice", "bob", "carol"}[i%3]
		path := fmt.Sprintf("/after%d", i)
		if got, w := do(dev, path), want[dev]+" GET "+path+" HTTP/2.0"; got != w {
			t.Errorf("after alice left: got %q, want %q", got, w)
		}
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("client dialed %d connections, want its one connection kept throughout", n)
	}
	if n := p.accepts.Load(); n != 1 {
		t.Errorf("proxy accepted %d connections, want 1", n)
	}
	for _, ev := range p.ev.waitRequests(t, 40) {
		if ev.Status != 200 {
			t.Errorf("event %+v", ev)
		}
	}
}

// TestMultiOnlySessionGoneKeepsConn: a client connection whose only upstream is one session's
// process keeps going when that process goes: the next requests reach the other session and the
// app on the same connection (with one session, Steal and Local, the connection would end with
// its last upstream, as the app's would).
func TestMultiOnlySessionGoneKeepsConn(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "http1", true: "h2c"}[h2], func(t *testing.T) {
			checkLeaks(t)
			app := whoServer(t, "app", h2, nil)
			locals := map[string]*who{"alice": whoServer(t, "alice", h2, nil), "bob": whoServer(t, "bob", h2, nil)}
			ss := newSessions(t, locals, "alice", "bob")
			p := startProxy(t, proxyConfig{app: app.addr(), pick: ss.pick})
			var dials atomic.Int64
			c := h2Client(t, &dials)
			proto := "HTTP/2.0"
			if !h2 {
				tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
					dials.Add(1)
					var d net.Dialer
					return d.DialContext(ctx, network, addr)
				}}
				t.Cleanup(tr.CloseIdleConnections)
				c = &http.Client{Transport: tr}
				proto = "HTTP/1.1"
			}
			do := func(dev, path string) string {
				req, _ := http.NewRequest(http.MethodGet, "http://"+p.addr+path, nil)
				req.Header.Set("X-Dev", dev)
				resp, err := c.Do(req)
				if err != nil {
					return "error: " + err.Error()
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return string(b)
			}
			if got, w := do("alice", "/a"), "alice GET /a "+proto; got != w {
				t.Fatalf("got %q, want %q", got, w)
			}
			locals["alice"].Config.Shutdown(context.Background())
			locals["alice"].Close()
			// The client has no reason to think its connection is gone: it was never told.
			if got, w := do("bob", "/b"), "bob GET /b "+proto; got != w {
				t.Errorf("got %q, want %q", got, w)
			}
			if got, w := do("carol", "/c"), "app GET /c "+proto; got != w {
				t.Errorf("got %q, want %q", got, w)
			}
			if n := p.accepts.Load(); n != 1 {
				t.Errorf("proxy accepted %d connections, want the client's one connection kept", n)
			}
		})
	}
}

// TestMultiSessionCloseKeepsClient: a session's server that answers "Connection: close" closes its
// own upstream only; the client is not told to close, and its connection goes on to the app and
// the other session. The app's close still reaches the client, as it would without the proxy.
func TestMultiSessionCloseKeepsClient(t *testing.T) {
	checkLeaks(t)
	closing := func(mux *http.ServeMux) {
		mux.HandleFunc("/close", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Connection", "close")
			fmt.Fprint(w, "closing")
		})
	}
	app := whoServer(t, "app", false, closing)
	locals := map[string]*who{"alice": whoServer(t, "alice", false, closing), "bob": whoServer(t, "bob", false, nil)}
	ss := newSessions(t, locals, "alice", "bob")
	p := startProxy(t, proxyConfig{app: app.addr(), pick: ss.pick})
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	get := func(dev, path string) *http.Response {
		t.Helper()
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nX-Dev: %s\r\n\r\n", path, dev)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %s for %q: %v", path, dev, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	if resp := get("alice", "/close"); resp.Close {
		t.Error("alice's closing response reached the client as such")
	}
	for _, dev := range []string{"bob", "carol", "alice"} {
		if resp := get(dev, "/"); resp.Close {
			t.Errorf("%s's response closes the connection", dev)
		}
	}
	if resp := get("carol", "/close"); !resp.Close {
		t.Error("the app's closing response did not reach the client as such")
	}
	if n := p.accepts.Load(); n != 1 {
		t.Errorf("proxy accepted %d connections, want 1", n)
	}
	if n := locals["alice"].conns.Load(); n != 2 {
		t.Errorf("alice's server got %d connections, want 2 (the closed one and a new one)", n)
	}
}

// TestMultiWebSocket: an Upgrade request goes to the session whose filter it matches (or the app),
// and the upgraded connection is spliced to that side.
func TestMultiWebSocket(t *testing.T) {
	checkLeaks(t)
	app := whoServer(t, "app", false, routes("app"))
	locals := map[string]*who{"alice": whoServer(t, "alice", false, routes("alice")), "bob": whoServer(t, "bob", false, routes("bob"))}
	ss := newSessions(t, locals, "alice", "bob")
	p := startProxy(t, proxyConfig{app: app.addr(), pick: ss.pick})
	for _, dev := range []string{"bob", "carol", "alice"} {
		name := map[string]string{"alice": "alice", "bob": "bob", "carol": "app"}[dev]
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ws, _, err := websocket.Dial(ctx, "ws://"+p.addr+"/ws", &websocket.DialOptions{HTTPHeader: http.Header{"X-Dev": {dev}}})
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		if _, hello, err := ws.Read(ctx); err != nil || string(hello) != name {
			t.Errorf("X-Dev %s: first message %q, %v; want %q", dev, hello, err, name)
		}
		if err := ws.Write(ctx, websocket.MessageText, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, got, err := ws.Read(ctx); err != nil || string(got) != name+" echo: ping" {
			t.Errorf("X-Dev %s: echo %q, %v", dev, got, err)
		}
		_ = ws.Close(websocket.StatusNormalClosure, "")
		cancel()
	}
	for _, ev := range p.ev.waitRequests(t, 3) {
		if ev.Status != http.StatusSwitchingProtocols || ev.Stolen != (ss.name(ev.Target) != "app") {
			t.Errorf("event %+v (target %s)", ev, ss.name(ev.Target))
		}
	}
}
