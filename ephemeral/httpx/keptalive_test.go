package httpx

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"testing"
)

// A request on a kept-alive connection through a filter that passes it to the app starts no
// goroutine in the proxy: the wait for the next request registers on the drain (no goroutine until
// it fires) and watches the upstream connections only once the client has been idle a while. Each
// goroutine is a hand-off the agent pays for with wake-ups on every request (issue 20).
func TestHTTP1KeptAliveRequestsStartNoGoroutine(t *testing.T) {
	checkLeaks(t)
	app := whoServer(t, "app", false, nil)
	p := startProxy(t, proxyConfig{app: app.addr(), steal: stealHeader(t), drain: make(chan struct{})})
	const n = 200
	// created is how many goroutines the process started while n requests went over one kept-alive
	// connection to addr, one after the other (the app's net/http server starts one per request).
	created := func(addr string) uint64 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		get := func() {
			if _, err := io.WriteString(c, "GET /x HTTP/1.1\r\nHost: app\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if got := resp.Header.Get("X-Served-By"); got != "app" {
				t.Fatalf("served by %q, want app", got)
			}
		}
		get() // the connections are set up
		before := goroutinesCreated()
		for range n {
			get()
		}
		return goroutinesCreated() - before
	}
	direct := created(app.addr())
	proxied := created(p.addr)
	if proxied > direct+n/10 {
		t.Errorf("%d kept-alive requests started %d goroutines through the proxy, %d directly; want no more than one per ten requests above direct", n, proxied, direct)
	}
}

// A kept-alive connection waiting for its next request holds only its client reader's buffer: its
// writer's and its app connection's reader and writer go back to their pools until the next request
// (h1conn.park), so the agent's memory per idle connection is one buffer, not four (issue 20). The
// heap is measured after two collections (the pools' victim cache), per connection, through the
// proxy against directly to the app.
func TestHTTP1IdleConnectionHoldsOneBuffer(t *testing.T) {
	checkLeaks(t)
	app := whoServer(t, "app", false, nil)
	p := startProxy(t, proxyConfig{app: app.addr(), steal: stealHeader(t), drain: make(chan struct{})})
	const n = 200
	heap := func() int64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapAlloc)
	}
	// perConn is the heap each of n idle kept-alive connections to addr holds, each after one request.
	perConn := func(addr string) int64 {
		before := heap()
		closeAll := keptAliveConns(t, addr, n)
		defer closeAll()
		return (heap() - before) / n
	}
	direct := perConn(app.addr())
	proxied := perConn(p.addr)
	// The client's bufio.Readers above (4 KiB each) count in both; the proxy's one buffer is 8 KiB.
	if extra := proxied - direct; extra > 2*bufioSize {
		t.Errorf("an idle connection through the proxy holds %d bytes of heap more than directly (%d vs %d); want at most %d (its client reader and small change)", extra, proxied, direct, 2*bufioSize)
	}
}

// A small request body that comes with its head (a POST of a few bytes, in one segment) is sent with
// the head on the connection's own goroutine: no goroutine is started to copy it while the response
// is read, and the app still gets the body whole, request after request on one kept-alive connection
// (issue 20: each hand-off between goroutines costs the agent wake-ups).
func TestHTTP1KeptAliveSmallBodyStartsNoGoroutine(t *testing.T) {
	checkLeaks(t)
	app := whoServer(t, "app", false, func(mux *http.ServeMux) {
		mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			w.Header().Set("X-Served-By", "app")
			_, _ = w.Write(b)
		})
	})
	p := startProxy(t, proxyConfig{app: app.addr(), steal: stealHeader(t), drain: make(chan struct{})})
	const n = 200
	created := func(addr string) uint64 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		post := func(i int) {
			body := fmt.Sprintf("body %d", i)
			if _, err := fmt.Fprintf(c, "POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n%s", len(body), body); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(got) != body || resp.Header.Get("X-Served-By") != "app" {
				t.Fatalf("response %q from %q, want %q from app", got, resp.Header.Get("X-Served-By"), body)
			}
		}
		post(-1) // the connections are set up
		before := goroutinesCreated()
		for i := range n {
			post(i)
		}
		return goroutinesCreated() - before
	}
	direct := created(app.addr())
	proxied := created(p.addr)
	if proxied > direct+n/10 {
		t.Errorf("%d kept-alive small POSTs started %d goroutines through the proxy, %d directly; want no more than one per ten requests above direct", n, proxied, direct)
	}
}

// keptAliveConns opens n connections to addr that each passed one GET and stay open, kept alive;
// closeAll closes them.
func keptAliveConns(tb testing.TB, addr string, n int) (closeAll func()) {
	var conns []net.Conn
	closeAll = func() {
		for _, c := range conns {
			c.Close()
		}
	}
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			closeAll()
			tb.Fatal(err)
		}
		conns = append(conns, c)
		if _, err := io.WriteString(c, "GET /x HTTP/1.1\r\nHost: app\r\n\r\n"); err != nil {
			closeAll()
			tb.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			closeAll()
			tb.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return closeAll
}
