package httpx

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/trafficlab/kubectl-trafficlab/internal/loopbacktest"
)

// routes adds the endpoints the HTTP/1 tests use to a who server.
func routes(name string) func(mux *http.ServeMux) {
	return func(mux *http.ServeMux) {
		mux.HandleFunc("/sha", func(w http.ResponseWriter, r *http.Request) {
			h := sha256.New()
			n, err := io.Copy(h, r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			fmt.Fprintf(w, "%s %d %x trailer=%q", name, n, h.Sum(nil), r.Trailer.Get("X-Req-Trailer"))
		})
		mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
			n, _ := strconv.Atoi(r.URL.Query().Get("n"))
			w.Header().Set("Content-Length", strconv.Itoa(n))
			_, _ = w.Write(randomBytes(n))
		})
		mux.HandleFunc("/ua", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s ua=%q", name, r.Header["User-Agent"])
		})
		mux.HandleFunc("/204", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
		mux.HandleFunc("/304", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("ETag", `"x"`)
			w.WriteHeader(http.StatusNotModified)
		})
		mux.HandleFunc("/reject", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Connection", "close")
			http.Error(w, name+" says no", http.StatusUnauthorized)
		})
		mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
			c, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			defer c.CloseNow()
			ctx := r.Context()
			if err := c.Write(ctx, websocket.MessageText, []byte(name)); err != nil {
				return
			}
			for {
				typ, msg, err := c.Read(ctx)
				if err != nil {
					return
				}
				if err := c.Write(ctx, typ, append([]byte(name+" echo: "), msg...)); err != nil {
					return
				}
			}
		})
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{1})
	_, _ = r.Read(b)
	return b
}

// oneConnClient keeps every request on one client connection.
func oneConnClient(t *testing.T) *http.Client {
	tr := &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 15 * time.Second}
}

func get(t *testing.T, c *http.Client, url string, header ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func setup(t *testing.T, h2 bool) (app, local *who, p *proxy) {
	t.Helper()
	app = whoServer(t, "app", h2, routes("app"))
	local = whoServer(t, "local", h2, routes("local"))
	p = startProxy(t, proxyConfig{app: app.addr(), local: local.addr(), steal: stealHeader(t)})
	return app, local, p
}

func TestHTTP1KeepAliveMix(t *testing.T) {
	checkLeaks(t)
	app, local, p := setup(t, false)
	c := oneConnClient(t)
	var wantStolen []bool
	for i := range 12 {
		steal := i%3 != 0
		hdr := []string{"X-Steal", "no"}
		want := "app GET /x?i=" + strconv.Itoa(i) + " HTTP/1.1"
		if steal {
			hdr = []string{"X-Steal", "yes"}
			want = "local" + want[3:]
		}
		_, body := get(t, c, "http://"+p.addr+"/x?i="+strconv.Itoa(i), hdr...)
		if body != want {
			t.Fatalf("request %d: got %q, want %q", i, body, want)
		}
		wantStolen = append(wantStolen, steal)
	}
	if n := p.accepts.Load(); n != 1 {
		t.Errorf("proxy accepted %d client connections, want 1", n)
	}
	if a, l := app.conns.Load(), local.conns.Load(); a != 1 || l != 1 {
		t.Errorf("upstream connections: app %d, local %d; want one each, reused", a, l)
	}
	for i, ev := range p.ev.waitRequests(t, 12) {
		if ev.Stolen != wantStolen[i] || ev.Status != 200 || ev.Method != "GET" || ev.Path != "/x?i="+strconv.Itoa(i) ||
			ev.Proto != "HTTP/1.1" || ev.ReqBytes == 0 || ev.RespBytes == 0 {
			t.Errorf("event %d = %+v", i, ev)
		}
	}
}

func TestHTTP1Pipelined(t *testing.T) {
	checkLeaks(t)
	_, _, p := setup(t, false)
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Three requests in one write, plus the blank line some clients send after a body.
	_, err = io.WriteString(c, "GET /1 HTTP/1.1\r\nHost: x\r\nx-steal: yes\r\n\r\n"+
		"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody\r\n"+
		"GET /3 HTTP/1.1\r\nHost: x\r\nX-STEAL: YES\r\n\r\n")
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for _, want := range []string{"local GET /1 HTTP/1.1", "app POST /2 HTTP/1.1", "local GET /3 HTTP/1.1"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != want {
			t.Errorf("got %q, want %q", b, want)
		}
	}
}

func TestHTTP1Chunked(t *testing.T) {
	checkLeaks(t)
	gate := make(chan struct{})
	extra := func(name string) func(*http.ServeMux) {
		return func(mux *http.ServeMux) {
			routes(name)(mux)
			mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Trailer", "X-Resp-Trailer")
				fmt.Fprintf(w, "%s part1;", name)
				w.(http.Flusher).Flush()
				select {
				case <-gate: // the client has part1, so the proxy did not hold it back
				case <-time.After(5 * time.Second):
					return
				}
				fmt.Fprint(w, "part2")
				w.Header().Set("X-Resp-Trailer", name+"-done")
			})
		}
	}
	app := whoServer(t, "app", false, extra("app"))
	local := whoServer(t, "local", false, extra("local"))
	p := startProxy(t, proxyConfig{app: app.addr(), local: local.addr(), steal: stealHeader(t)})
	c := oneConnClient(t)

	for _, steal := range []string{"yes", "no"} {
		name := map[string]string{"yes": "local", "no": "app"}[steal]
		// Chunked request with a trailer: the body comes from a pipe, so its length is unknown.
		pr, pw := io.Pipe()
		go func() {
			for range 5 {
				_, _ = pw.Write([]byte("chunk-of-request-body "))
			}
			_ = pw.Close()
		}()
		req, _ := http.NewRequest(http.MethodPost, "http://"+p.addr+"/sha", pr)
		req.Header.Set("X-Steal", steal)
		req.Trailer = http.Header{"X-Req-Trailer": {"t-" + steal}}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		sum := sha256.Sum256([]byte(strings.Repeat("chunk-of-request-body ", 5)))
		if want := fmt.Sprintf("%s 110 %x trailer=%q", name, sum, "t-"+steal); string(b) != want {
			t.Errorf("chunked request: got %q, want %q", b, want)
		}

		// Chunked streaming response: part2 is only written after the client has read part1.
		req, _ = http.NewRequest(http.MethodGet, "http://"+p.addr+"/stream", nil)
		req.Header.Set("X-Steal", steal)
		resp, err = c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.TransferEncoding) == 0 || resp.TransferEncoding[0] != "chunked" {
			t.Errorf("response transfer encoding %v, want chunked", resp.TransferEncoding)
		}
		part1 := make([]byte, len(name+" part1;"))
		read := make(chan error, 1)
		go func() {
			_, err := io.ReadFull(resp.Body, part1)
			read <- err
		}()
		select {
		case err := <-read:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(3 * time.Second):
			resp.Body.Close()
			t.Fatal("part1 of the streamed response was held back by the proxy")
		}
		select {
		case gate <- struct{}{}:
		case <-time.After(3 * time.Second):
			resp.Body.Close()
			t.Fatal("the server gave up waiting: the proxy held back the response head or part1")
		}
		rest, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(part1)+string(rest) != name+" part1;part2" {
			t.Errorf("streamed body %q%q", part1, rest)
		}
		if got := resp.Trailer.Get("X-Resp-Trailer"); got != name+"-done" {
			t.Errorf("response trailer %q, want %q", got, name+"-done")
		}
	}
	if n := p.accepts.Load(); n != 1 {
		t.Errorf("proxy accepted %d client connections, want 1", n)
	}
}

func TestHTTP1LargeBodies(t *testing.T) {
	checkLeaks(t)
	_, _, p := setup(t, false)
	c := oneConnClient(t)
	const size = 10 << 20
	data := randomBytes(size)
	sum := sha256.Sum256(data)
	for _, steal := range []string{"yes", "no"} {
		name := map[string]string{"yes": "local", "no": "app"}[steal]
		req, _ := http.NewRequest(http.MethodPost, "http://"+p.addr+"/sha", bytes.NewReader(data))
		req.Header.Set("X-Steal", steal)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("%s %d %x trailer=%q", name, size, sum, ""); string(b) != want {
			t.Errorf("upload: got %q, want %q", b, want)
		}
		_, body := get(t, c, "http://"+p.addr+"/big?n="+strconv.Itoa(size), "X-Steal", steal)
		if got := sha256.Sum256([]byte(body)); got != sum {
			t.Errorf("download of %d bytes (%s): sha256 differs, got %d bytes", size, name, len(body))
		}
	}
	for _, ev := range p.ev.waitRequests(t, 4) {
		if ev.ReqBytes < size && ev.RespBytes < size {
			t.Errorf("event does not count the body: %+v", ev)
		}
	}
}

func TestHTTP1BodilessResponses(t *testing.T) {
	checkLeaks(t)
	_, _, p := setup(t, false)
	c := oneConnClient(t)
	for _, steal := range []string{"yes", "no"} {
		name := map[string]string{"yes": "local", "no": "app"}[steal]
		req, _ := http.NewRequest(http.MethodHead, "http://"+p.addr+"/big?n=1000", nil)
		req.Header.Set("X-Steal", steal)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.ContentLength != 1000 {
			t.Errorf("HEAD content length %d", resp.ContentLength)
		}
		for _, path := range []string{"/204", "/304", "/"} {
			resp, body := get(t, c, "http://"+p.addr+path, "X-Steal", steal)
			want := map[string]int{"/204": 204, "/304": 304, "/": 200}[path]
			if resp.StatusCode != want {
				t.Errorf("%s: status %d, want %d", path, resp.StatusCode, want)
			}
			if path == "/" && body != name+" GET / HTTP/1.1" {
				t.Errorf("after HEAD/204/304 the connection is out of step: %q", body)
			}
		}
	}
	if n := p.accepts.Load(); n != 1 {
		t.Errorf("proxy accepted %d client connections, want 1", n)
	}
}

func TestHTTP1ExpectContinue(t *testing.T) {
	checkLeaks(t)
	_, _, p := setup(t, false)
	// The client would wait for "100 Continue" far longer than the test, so the body only goes when
	// the proxy relays the interim response while the body is still to come.
	tr := &http.Transport{ExpectContinueTimeout: time.Hour}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr, Timeout: time.Minute}
	do := func(path, steal string, body *readCounter) (*http.Response, bool) {
		t.Helper()
		var got100 atomic.Bool
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{Got100Continue: func() { got100.Store(true) }})
		req, _ := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+p.addr+path, body)
		req.ContentLength = int64(body.r.Len())
		req.Header.Set("Expect", "100-continue")
		req.Header.Set("X-Steal", steal)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp, got100.Load()
	}
	for _, steal := range []string{"yes", "no"} {
		name := map[string]string{"yes": "local", "no": "app"}[steal]
		body := &readCounter{r: strings.NewReader("after continue")}
		resp, got100 := do("/sha", steal, body)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		sum := sha256.Sum256([]byte("after continue"))
		if want := fmt.Sprintf("%s 14 %x trailer=%q", name, sum, ""); string(b) != want {
			t.Errorf("got %q, want %q", b, want)
		}
		if !got100 {
			t.Errorf("%s: the client got no 100 Continue", name)
		}

		// A final status instead of 100: the client must get it without sending its body.
		body = &readCounter{r: strings.NewReader("never read")}
		resp, got100 = do("/reject", steal, body)
		b, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(string(b), name+" says no") {
			t.Errorf("rejected expect: %d %q", resp.StatusCode, b)
		}
		if got100 || body.reads.Load() != 0 {
			t.Errorf("%s: rejected request got 100 Continue %v, its body read %d times; want neither", name, got100, body.reads.Load())
		}
	}
}

// readCounter counts the reads of a request body.
type readCounter struct {
	r     *strings.Reader
	reads atomic.Int32
}

func (b *readCounter) Read(p []byte) (int, error) {
	b.reads.Add(1)
	return b.r.Read(p)
}

func TestHTTP1LocalDown(t *testing.T) {
	checkLeaks(t)
	app := whoServer(t, "app", false, nil)
	p := startProxy(t, proxyConfig{app: app.addr(), steal: stealHeader(t)})
	c := oneConnClient(t)
	for range 2 {
		if _, body := get(t, c, "http://"+p.addr+"/a", "X-Steal", "yes"); body != "app GET /a HTTP/1.1" {
			t.Errorf("got %q", body)
		}
	}
	w := p.ev.warnings()
	if len(w) != 2 || !strings.Contains(w[0], "local process unreachable") || !strings.Contains(w[0], "refused") ||
		!strings.Contains(w[0], "sent to the app") {
		t.Errorf("warnings %q", w)
	}
	for _, ev := range p.ev.waitRequests(t, 2) {
		if ev.Stolen || ev.Status != 200 {
			t.Errorf("event %+v, want not stolen, 200", ev)
		}
	}
}

func TestHTTP1LocalClosesAtOnce(t *testing.T) {
	checkLeaks(t)
	app := whoServer(t, "app", false, nil)
	// A tunnel that opens but whose far end closes at once: the dial succeeds, the request fails.
	local := loopbacktest.Serve(t, func(net.Conn) {}) // Serve closes the connection once the handler returns
	p := startProxy(t, proxyConfig{app: app.addr(), local: local.String(), steal: stealHeader(t)})
	c := oneConnClient(t)
	// The local process took the request and may have acted on it: the app must not get it too.
	resp, body := get(t, c, "http://"+p.addr+"/a", "X-Steal", "yes")
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "the local process failed") {
		t.Errorf("got %d %q, want 502 saying the local process failed", resp.StatusCode, body)
	}
	if n := app.conns.Load(); n != 0 {
		t.Errorf("the app got %d connections, want 0", n)
	}
	if w := p.ev.warnings(); len(w) != 1 || !strings.Contains(w[0], "not sent to the app") {
		t.Errorf("warnings %q", w)
	}
}

func TestHTTP1AppDown(t *testing.T) {
	checkLeaks(t)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	p := startProxy(t, proxyConfig{app: addr, steal: stealHeader(t)})
	resp, body := get(t, http.DefaultClient, "http://"+p.addr+"/a")
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "dial app") {
		t.Errorf("got %d %q", resp.StatusCode, body)
	}
	if evs := p.ev.waitRequests(t, 1); evs[0].Status != http.StatusBadGateway {
		t.Errorf("event %+v", evs[0])
	}
}

// An idle client connection ends when the app closes its side of it (its idle timeout), as it would
// without the agent in between, and when only the local process held it, when that one closes; the
// agent has no idle timer of its own (review M4).
func TestHTTP1IdleClosedWithUpstream(t *testing.T) {
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
			app := whoServer(t, "app", false, nil, idle(appIdle))
			local := whoServer(t, "local", false, nil, idle(localIdle))
			p := startProxy(t, proxyConfig{app: app.addr(), local: local.addr(), steal: stealHeader(t)})
			c, err := net.Dial("tcp", p.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			br := bufio.NewReader(c)
			for _, steal := range tc.steal {
				fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\nX-Steal: %s\r\n\r\n", map[bool]string{true: "yes", false: "no"}[steal])
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			// The bound only keeps a broken proxy from hanging the test; the outcome is what counts.
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := br.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
				t.Errorf("idle client connection: read %d bytes, %v; want it closed (EOF)", n, err)
			}
		})
	}
}

func TestHTTP1ConnectionClose(t *testing.T) {
	checkLeaks(t)
	_, _, p := setup(t, false)
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-steal: yes\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	all, err := io.ReadAll(c) // ends only if the proxy closes the connection
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(all), "local GET /a HTTP/1.1") {
		t.Errorf("got %q", all)
	}
}

func TestHTTP1ResponseUntilClose(t *testing.T) {
	checkLeaks(t)
	// An HTTP/1.0 app without Content-Length: its body ends when it closes the connection, so the
	// proxy must close the client's connection too (the client has no other end-of-body signal).
	app := loopbacktest.Serve(t, func(c net.Conn) {
		// Serve's close once this returns is the end of the body.
		if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
			_, _ = io.WriteString(c, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbody until close")
		}
	})
	p := startProxy(t, proxyConfig{app: app.String(), steal: stealHeader(t)})
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	all, err := io.ReadAll(c)
	if err != nil || !strings.HasSuffix(string(all), "\r\n\r\nbody until close") {
		t.Errorf("got %q, %v", all, err)
	}
}

func TestHTTP1MalformedLaterRequest(t *testing.T) {
	checkLeaks(t)
	_, _, p := setup(t, false)
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	for _, want := range []int{200, 400} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Errorf("status %d, want %d", resp.StatusCode, want)
		}
	}
}

func TestHTTP1Probe(t *testing.T) {
	checkLeaks(t)
	_, _, p := setup(t, false)
	c := oneConnClient(t)
	if _, body := get(t, c, "http://"+p.addr+"/healthz", "X-Steal", "yes", "User-Agent", "kube-probe/1.33"); body != "app GET /healthz HTTP/1.1" {
		t.Errorf("probe went to %q", body)
	}
	if _, body := get(t, c, "http://"+p.addr+"/healthz", "X-Steal", "yes", "User-Agent", "curl/8"); body != "local GET /healthz HTTP/1.1" {
		t.Errorf("non-probe went to %q", body)
	}
}

// rawServer answers one line of its own protocol: a server-first banner, then an echo of what the
// client sent up to the first empty line.
func rawServer(t *testing.T, banner string) string {
	return loopbacktest.Serve(t, func(c net.Conn) {
		_, _ = io.WriteString(c, banner)
		var got []byte
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			got = append(got, line...)
			if err != nil || line == "\r\n" || line == "QUIT\r\n" {
				break
			}
		}
		_, _ = io.WriteString(c, "raw:"+string(got))
	}).String()
}

func TestNotHTTPAfterAllGoesRawToApp(t *testing.T) {
	checkLeaks(t)
	p := startProxy(t, proxyConfig{app: rawServer(t, ""), steal: stealHeader(t)})
	// Starts like HTTP ("GET "), but it is HTTP/0.9-style: the app must get it untouched.
	for _, in := range []string{"GET /\r\n\r\n", "GET / HTTP/1.1\r\nBad Header\r\n\r\n"} {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(c, in)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(c)
		c.Close()
		if string(got) != "raw:"+in {
			t.Errorf("app answered %q, want %q", got, "raw:"+in)
		}
	}
	if w := p.ev.warnings(); len(w) != 2 || !strings.Contains(w[0], "relayed raw to the app") {
		t.Errorf("warnings %q", w)
	}
}

func TestServerFirstProtocol(t *testing.T) {
	checkLeaks(t)
	p := startProxy(t, proxyConfig{app: rawServer(t, "220 smtp ready\r\n"), steal: stealHeader(t)})
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	// The client waits for the banner: the proxy must give up peeking and connect the app.
	line, err := br.ReadString('\n')
	if err != nil || line != "220 smtp ready\r\n" {
		t.Fatalf("banner %q, %v", line, err)
	}
	_, _ = io.WriteString(c, "QUIT\r\n")
	rest, _ := io.ReadAll(br)
	if string(rest) != "raw:QUIT\r\n" {
		t.Errorf("got %q", rest)
	}
}

func TestWebSocket(t *testing.T) {
	checkLeaks(t)
	_, _, p := setup(t, false)
	for _, steal := range []string{"yes", "no"} {
		name := map[string]string{"yes": "local", "no": "app"}[steal]
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ws, resp, err := websocket.Dial(ctx, "ws://"+p.addr+"/ws", &websocket.DialOptions{
			HTTPHeader: http.Header{"X-Steal": {steal}},
		})
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Errorf("status %d", resp.StatusCode)
		}
		_, hello, err := ws.Read(ctx)
		if err != nil || string(hello) != name {
			t.Errorf("first message %q, %v; want %q", hello, err, name)
		}
		for i := range 3 {
			msg := fmt.Sprintf("ping %d", i)
			if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			_, got, err := ws.Read(ctx)
			if err != nil || string(got) != name+" echo: "+msg {
				t.Errorf("echo %q, %v", got, err)
			}
		}
		_ = ws.Close(websocket.StatusNormalClosure, "")
		cancel()
	}
	evs := p.ev.waitRequests(t, 2)
	if evs[0].Status != 101 || !evs[0].Stolen || evs[1].Status != 101 || evs[1].Stolen {
		t.Errorf("events %+v", evs)
	}
}

func TestH2CUpgradeDeclinedWithCurl(t *testing.T) {
	checkLeaks(t)
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("no curl")
	}
	app, local, p := h2cUpgradeServers(t)
	for _, steal := range []string{"yes", "no"} {
		name := map[string]string{"yes": "local", "no": "app"}[steal]
		// Without the proxy curl would switch to HTTP/2 here (the servers accept h2c upgrades).
		out, err := exec.Command(curl, "-sS", "--http2", "-H", "x-steal: "+steal,
			"-w", " http_version=%{http_version}", "http://"+p.addr+"/who").CombinedOutput()
		if err != nil {
			t.Fatalf("curl: %v\n%s", err, out)
		}
		if want := name + " HTTP/1.1 upgrade=\"\" settings=\"\" http_version=1.1"; string(out) != want {
			t.Errorf("curl got %q, want %q", out, want)
		}
		direct, err := exec.Command(curl, "-sS", "--http2", "-w", " http_version=%{http_version}",
			map[string]string{"yes": local, "no": app}[steal]+"/who").CombinedOutput()
		if err != nil || !strings.HasSuffix(string(direct), "http_version=2") {
			t.Errorf("the server does not take h2c upgrades, so the test proves nothing: %q, %v", direct, err)
		}
	}
}

func TestH2CUpgradeDeclinedKeepsPerRequestDecisions(t *testing.T) {
	checkLeaks(t)
	_, _, p := h2cUpgradeServers(t)
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "GET /who HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"+
		"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nx-steal: yes\r\n\r\n"+
		"GET /who HTTP/1.1\r\nHost: x\r\n\r\n"+
		// No "upgrade" token in Connection: still an offer the h2c server would take.
		"GET /who HTTP/1.1\r\nHost: x\r\nConnection: HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
	br := bufio.NewReader(c)
	for _, want := range []string{`local HTTP/1.1 upgrade="" settings=""`, `app HTTP/1.1 upgrade="" settings=""`, `app HTTP/1.1 upgrade="" settings=""`} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != want {
			t.Errorf("got %d %q, want %q", resp.StatusCode, b, want)
		}
	}
}

// h2cUpgradeServers are app and local processes that accept HTTP/1.1 upgrades to h2c.
func h2cUpgradeServers(t *testing.T) (app, local string, p *proxy) {
	t.Helper()
	mk := func(name string) string {
		mux := http.NewServeMux()
		mux.HandleFunc("/who", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s %s upgrade=%q settings=%q", name, r.Proto, r.Header.Get("Upgrade"), r.Header.Get("HTTP2-Settings"))
		})
		return whoServerHandler(t, h2cHandler(mux))
	}
	app, local = mk("app"), mk("local")
	p = startProxy(t, proxyConfig{app: strings.TrimPrefix(app, "http://"), local: strings.TrimPrefix(local, "http://"), steal: stealHeader(t)})
	return app, local, p
}

// A first request whose head is larger than the proxy parses goes to the app raw, every byte of it:
// the fragment that crossed 64 KiB used to be dropped (review L1).
func TestHTTP1LargeFirstHeadRelayedIntact(t *testing.T) {
	checkLeaks(t)
	// The app sums every X-Big-* header, in name order, and says how many bytes it got.
	app := whoServer(t, "app", false, func(mux *http.ServeMux) {
		mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
			names := make([]string, 0, len(r.Header))
			for k := range r.Header {
				if strings.HasPrefix(k, "X-Big-") {
					names = append(names, k)
				}
			}
			slices.Sort(names)
			h, n := sha256.New(), 0
			for _, k := range names {
				v := r.Header.Get(k)
				h.Write([]byte(v))
				n += len(v)
			}
			fmt.Fprintf(w, "app %d %x", n, h.Sum(nil))
		})
	})
	p := startProxy(t, proxyConfig{app: app.addr(), steal: stealHeader(t)})
	req, err := http.NewRequest(http.MethodGet, "http://"+p.addr+"/headers", nil)
	if err != nil {
		t.Fatal(err)
	}
	want, n := sha256.New(), 0
	raw := randomBytes(6000)
	for i := range 16 { // 16 x 12,000 bytes of values: about 190 KiB of head
		v := fmt.Sprintf("%02d-%x", i, raw)
		req.Header.Set(fmt.Sprintf("X-Big-%02d", i), v)
		want.Write([]byte(v))
		n += len(v)
	}
	c := oneConnClient(t)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if w := fmt.Sprintf("app %d %x", n, want.Sum(nil)); resp.StatusCode != http.StatusOK || string(b) != w {
		t.Errorf("got %d %q, want 200 %q", resp.StatusCode, b, w)
	}
	if w := p.ev.warnings(); len(w) != 1 || !strings.Contains(w[0], "relayed raw to the app") {
		t.Errorf("warnings %q", w)
	}
}

// A request head that does not arrive in time is cut: 408 and the connection closed, for the first
// request and for a later one on a kept connection alike (review M4: only the first bytes had a
// deadline). The app never hears of it.
func TestHTTP1SlowHeadCut(t *testing.T) {
	for _, later := range []bool{false, true} {
		t.Run(map[bool]string{false: "first request", true: "later request"}[later], func(t *testing.T) {
			checkLeaks(t)
			var appGot atomic.Int64
			app := whoServer(t, "app", false, nil, counting(&appGot))
			p := startProxy(t, proxyConfig{app: app.addr(), steal: stealHeader(t), headTimeout: 100 * time.Millisecond})
			c, err := net.Dial("tcp", p.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			br := bufio.NewReader(c)
			want := int64(0)
			if later {
				fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				want = 1
			}
			// A head that starts and never ends.
			fmt.Fprint(c, "GET /slow HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n")
			// The bound only keeps a broken proxy from hanging the test; the outcome is what counts.
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer to the slow head: %v", err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestTimeout {
				t.Errorf("got %d, want 408", resp.StatusCode)
			}
			if n, err := br.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
				t.Errorf("after the 408: read %d bytes, %v; want the connection closed", n, err)
			}
			if n := appGot.Load(); n != want {
				t.Errorf("the app got %d requests, want %d", n, want)
			}
		})
	}
}
