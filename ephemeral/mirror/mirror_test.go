package mirror

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/budget"
	"github.com/trafficlab/kubectl-trafficlab/internal/loopbacktest"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// localServer is the developer's process: it records what it is sent and answers like the app,
// except where told to differ.
type localServer struct {
	mu   sync.Mutex
	seen []string
	srv  *httptest.Server
}

func newLocalServer(t *testing.T, differ string) *localServer {
	t.Helper()
	l := &localServer{}
	l.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		l.mu.Lock()
		l.seen = append(l.seen, r.Method+" "+r.URL.RequestURI()+" "+string(b))
		l.mu.Unlock()
		w.Header().Set("Content-Type", "text/plain")
		if r.URL.Path == differ {
			w.WriteHeader(http.StatusTeapot)
			fmt.Fprintf(w, "local %s\n", r.URL.Path)
			return
		}
		fmt.Fprintf(w, "app %s\n", r.URL.Path)
	}))
	l.srv.EnableHTTP2 = true
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	l.srv.Config.Protocols = &p
	l.srv.Start()
	t.Cleanup(l.srv.Close)
	return l
}

func (l *localServer) requests() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.seen...)
}

// dialer is the plugin's side: each mirrored connection is joined to the local server.
type dialer struct {
	addr  string
	mu    sync.Mutex
	opens []wire.OpenRequest
}

func (d *dialer) OpenIncoming(ctx context.Context, req wire.OpenRequest) (net.Conn, error) {
	d.mu.Lock()
	d.opens = append(d.opens, req)
	d.mu.Unlock()
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d.addr)
}

func (d *dialer) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var nd net.Dialer
	return nd.DialContext(ctx, network, address)
}

type events struct {
	mu  sync.Mutex
	all []wire.MirrorEvent
}

func (e *events) add(ev wire.MirrorEvent) {
	e.mu.Lock()
	e.all = append(e.all, ev)
	e.mu.Unlock()
}

func (e *events) list() []wire.MirrorEvent {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]wire.MirrorEvent(nil), e.all...)
}

var testFlow = capture.Flow{
	Client: netip.MustParseAddrPort("10.0.0.2:40000"),
	Server: netip.MustParseAddrPort("10.0.0.1:8080"),
}

func request(method, path, body string) string {
	return fmt.Sprintf("%s %s HTTP/1.1\r\nHost: app\r\nUser-Agent: test\r\nContent-Length: %d\r\n\r\n%s", method, path, len(body), body)
}

func response(body string) string {
	return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// feed plays one keep-alive connection through the mirror: each request, then the app's answer.
func feed(h capture.StreamHandler, midStream bool, exchanges [][2]string) {
	now := time.Now()
	if midStream {
		h.Gap(capture.ClientToServer, 100, now)
		h.Gap(capture.ServerToClient, 100, now)
	}
	for _, ex := range exchanges {
		h.Data(capture.ClientToServer, []byte(ex[0]), now)
		h.Data(capture.ServerToClient, []byte(ex[1]), now)
	}
	h.End(capture.ClientToServer, capture.EndFIN, now)
	h.End(capture.ServerToClient, capture.EndFIN, now)
}

func TestMirrorHTTP1(t *testing.T) {
	type result struct {
		Local []string
		Diffs []string
		Stats wire.MirrorStats
	}
	three := [][2]string{
		{request("GET", "/a", ""), response("app /a\n")},
		{request("POST", "/b", "hello"), response("app /b\n")},
		{request("GET", "/c?x=1", ""), response("app /c\n")},
	}
	tests := []struct {
		name      string
		spec      wire.MirrorSpec
		midStream bool
		differ    string
		want      result
	}{{
		name: "every request, in order",
		spec: wire.MirrorSpec{Ports: []int{8080}},
		want: result{
			Local: []string{"GET /a ", "POST /b hello", "GET /c?x=1 "},
			Stats: wire.MirrorStats{Connections: 1, Requests: 3, Mirrored: 3, Answered: 3},
		},
	}, {
		name: "filter per request on a keep-alive connection",
		spec: wire.MirrorSpec{Ports: []int{8080}, Filter: &wire.HTTPFilter{Paths: []string{"^/(a|c)"}}},
		want: result{
			Local: []string{"GET /a ", "GET /c?x=1 "},
			Stats: wire.MirrorStats{Connections: 1, Requests: 3, Unselected: 1, Mirrored: 2, Answered: 2},
		},
	}, {
		name:      "a connection open before the mirror is copied from its next request",
		spec:      wire.MirrorSpec{Ports: []int{8080}},
		midStream: true,
		want: result{
			Local: []string{"GET /a ", "POST /b hello", "GET /c?x=1 "},
			Stats: wire.MirrorStats{Connections: 1, Requests: 3, Mirrored: 3, Answered: 3},
		},
	}, {
		name:   "diff reports the planted difference and nothing else",
		spec:   wire.MirrorSpec{Ports: []int{8080}, Diff: true, DiffHeaders: []string{"Content-Type"}},
		differ: "/b",
		want: result{
			Local: []string{"GET /a ", "POST /b hello", "GET /c?x=1 "},
			Diffs: []string{`/b: status 418, pod 200; body differs from byte 0 (9 B, pod 7 B): "local /b\n", pod "app /b\n"`},
			Stats: wire.MirrorStats{Connections: 1, Requests: 3, Mirrored: 3, Answered: 3, Differ: 1},
		},
	}, {
		name: "methods filter with percent",
		spec: wire.MirrorSpec{Ports: []int{8080}, Filter: &wire.HTTPFilter{Methods: []string{"GET"}}, Percent: 50},
		want: result{
			Local: []string{"GET /c?x=1 "},
			Stats: wire.MirrorStats{Connections: 1, Requests: 3, Unselected: 1, SampledOut: 1, Mirrored: 1, Answered: 1},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			local := newLocalServer(t, tt.differ)
			var ev events
			m, err := New(context.Background(), Config{Spec: tt.spec, Open: &dialer{addr: local.srv.Listener.Addr().String()}, Events: ev.add})
			if err != nil {
				t.Fatal(err)
			}
			feed(m.Handler(testFlow), tt.midStream, three)
			m.Drain(10 * time.Second)
			got := result{Local: local.requests(), Stats: m.Stats()}
			got.Stats.AgentMaxRSS = 0
			for _, e := range ev.list() {
				if len(e.Differences) > 0 {
					got.Diffs = append(got.Diffs, e.Path+": "+strings.Join(e.Differences, "; "))
				}
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("mirror (-want +got):\n%s", d)
			}
		})
	}
}

// TestMirrorPercent: 50 percent of 100 selected requests is 50 copies, every time.
func TestMirrorPercent(t *testing.T) {
	local := newLocalServer(t, "")
	m, err := New(context.Background(), Config{Spec: wire.MirrorSpec{Ports: []int{8080}, Percent: 50}, Open: &dialer{addr: local.srv.Listener.Addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	var exs [][2]string
	for i := range 100 {
		exs = append(exs, [2]string{request("GET", fmt.Sprintf("/%d", i), ""), response("x")})
	}
	feed(m.Handler(testFlow), false, exs)
	m.Drain(10 * time.Second)
	if n := len(local.requests()); n != 50 {
		t.Errorf("local server got %d requests, want 50", n)
	}
	if s := m.Stats(); s.Mirrored != 50 || s.SampledOut != 50 {
		t.Errorf("stats %+v, want 50 mirrored and 50 sampled out", s)
	}
}

// TestMirrorConnectionWithoutClientBytes: a connection over which the client sent nothing (a
// kubelet tcpSocket probe, or one the capture ends before its first request arrives) has
// nothing to copy. It is neither a request nor a sampling turn, so --percent still spreads
// over the real requests, and no copy is dialed for it.
func TestMirrorConnectionWithoutClientBytes(t *testing.T) {
	for _, tt := range []struct {
		name   string
		server string // what the server said, if anything
		why    capture.EndReason
	}{
		{"closed", "", capture.EndFIN},
		{"reset", "", capture.EndRST},
		{"flushed at the capture's end", "", capture.EndFlush},
		{"server greeting only", "220 smtp ready\r\n", capture.EndFIN},
	} {
		t.Run(tt.name, func(t *testing.T) {
			local := newLocalServer(t, "")
			d := &dialer{addr: local.srv.Listener.Addr().String()}
			m, err := New(context.Background(), Config{Spec: wire.MirrorSpec{Ports: []int{8080}, Percent: 50}, Open: d})
			if err != nil {
				t.Fatal(err)
			}
			empty := testFlow
			empty.Client = netip.MustParseAddrPort("10.0.0.3:40001")
			h := m.Handler(empty)
			now := time.Now()
			if tt.server != "" {
				h.Data(capture.ServerToClient, []byte(tt.server), now)
			}
			h.End(capture.ClientToServer, tt.why, now)
			h.End(capture.ServerToClient, tt.why, now)
			feed(m.Handler(testFlow), false, [][2]string{
				{request("GET", "/0", ""), response("x")},
				{request("GET", "/1", ""), response("x")},
			})
			m.Drain(10 * time.Second)
			// Sampling spreads 50% as every second request, starting with the second.
			if got := local.requests(); !cmp.Equal(got, []string{"GET /1 "}) {
				t.Errorf("local server got %q, want only the second request", got)
			}
			s := m.Stats()
			if s.Connections != 2 || s.Requests != 2 || s.Mirrored != 1 || s.SampledOut != 1 {
				t.Errorf("stats %+v, want 2 connections, 2 requests, 1 mirrored and 1 sampled out", s)
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			if len(d.opens) != 1 {
				t.Errorf("%d copies dialed, want 1", len(d.opens))
			}
		})
	}
}

// TestMirrorOpaque: a protocol that is not HTTP is copied byte for byte from its first byte, and
// not at all when the connection was open before the mirror.
func TestMirrorOpaque(t *testing.T) {
	got := make(chan string, 2)
	dest := loopbacktest.Serve(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		_, _ = c.Write([]byte("+OK\r\n"))
		c.Close() // before the test hears of it, not after, as Serve would
		got <- string(b)
	})
	for _, midStream := range []bool{false, true} {
		var ev events
		m, err := New(context.Background(), Config{Spec: wire.MirrorSpec{Ports: []int{8080}}, Open: &dialer{addr: dest.String()}, Events: ev.add})
		if err != nil {
			t.Fatal(err)
		}
		h := m.Handler(testFlow)
		now := time.Now()
		if midStream {
			h.Gap(capture.ClientToServer, 10, now)
		}
		h.Data(capture.ClientToServer, []byte("*1\r\n$4\r\nPING\r\n"), now)
		h.Data(capture.ServerToClient, []byte("+PONG\r\n"), now)
		h.Data(capture.ClientToServer, []byte("*1\r\n$4\r\nQUIT\r\n"), now)
		h.End(capture.ClientToServer, capture.EndFIN, now)
		h.End(capture.ServerToClient, capture.EndFIN, now)
		m.Drain(10 * time.Second)
		s := m.Stats()
		if midStream {
			if s.DroppedMidStream != 1 || s.Mirrored != 0 {
				t.Errorf("mid-stream stats %+v, want one dropped as open before the mirror", s)
			}
			continue
		}
		if b := <-got; b != "*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nQUIT\r\n" {
			t.Errorf("copy got %q", b)
		}
		if s.Mirrored != 1 || s.Answered != 1 {
			t.Errorf("stats %+v, want one connection copied", s)
		}
		if evs := ev.list(); len(evs) != 1 || evs[0].Kind != wire.EventCopied || evs[0].BytesOut != 5 {
			t.Errorf("events %+v, want one copied connection with a 5-byte answer", evs)
		}
	}
}

// TestMirrorRefused: a destination that refuses is counted, and the rest of the connection is not
// dialed again.
func TestMirrorRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	d := &dialer{addr: addr}
	m, err := New(context.Background(), Config{Spec: wire.MirrorSpec{Ports: []int{8080}}, Open: d})
	if err != nil {
		t.Fatal(err)
	}
	feed(m.Handler(testFlow), false, [][2]string{{request("GET", "/a", ""), response("x")}, {request("GET", "/b", ""), response("y")}})
	m.Drain(10 * time.Second)
	if s := m.Stats(); s.DroppedRefused != 2 || s.Mirrored != 0 {
		t.Errorf("stats %+v, want two refused", s)
	}
	if len(d.opens) != 1 {
		t.Errorf("%d dials, want one", len(d.opens))
	}
}

// gatedDialer holds every copy's connection until the gate opens, as a destination slow to accept.
type gatedDialer struct {
	dialer
	gate chan struct{}
}

func (d *gatedDialer) OpenIncoming(ctx context.Context, req wire.OpenRequest) (net.Conn, error) {
	select {
	case <-d.gate:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return d.dialer.OpenIncoming(ctx, req)
}

// TestMirrorBurstWaitsForASlowCopy: a keep-alive connection's burst (200 requests, as one client of
// a 5,000 requests/s load sends in a stall) waits in its queue while the copy's destination is slow,
// and every request is still copied, in order.
func TestMirrorBurstWaitsForASlowCopy(t *testing.T) {
	local := newLocalServer(t, "")
	d := &gatedDialer{dialer: dialer{addr: local.srv.Listener.Addr().String()}, gate: make(chan struct{})}
	m, err := New(context.Background(), Config{Spec: wire.MirrorSpec{Ports: []int{8080}}, Open: d})
	if err != nil {
		t.Fatal(err)
	}
	h := m.Handler(testFlow)
	now := time.Now()
	var want []string
	for i := range 200 {
		path := fmt.Sprintf("/%d", i)
		want = append(want, "GET "+path+" ")
		h.Data(capture.ClientToServer, []byte(request("GET", path, "")), now)
		h.Data(capture.ServerToClient, []byte(response("x")), now)
	}
	close(d.gate)
	h.End(capture.ClientToServer, capture.EndFIN, now)
	h.End(capture.ServerToClient, capture.EndFIN, now)
	m.Drain(20 * time.Second)
	if s := m.Stats(); s.Mirrored != 200 || s.DroppedSlow != 0 {
		t.Errorf("stats %+v, want 200 mirrored and none too slow", s)
	}
	if diff := cmp.Diff(want, local.requests()); diff != "" {
		t.Errorf("local server (-want +got):\n%s", diff)
	}
}

// TestMirrorCloseWithAConnectionThatNeverEnds: the capture can stop before a connection's end is
// seen; closing the mirror must not wait for that end.
func TestMirrorCloseWithAConnectionThatNeverEnds(t *testing.T) {
	local := newLocalServer(t, "")
	m, err := New(context.Background(), Config{Spec: wire.MirrorSpec{Ports: []int{8080}}, Open: &dialer{addr: local.srv.Listener.Addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	h := m.Handler(testFlow)
	now := time.Now()
	h.Data(capture.ClientToServer, []byte(request("GET", "/open", "")), now)
	h.Data(capture.ServerToClient, []byte(response("x")), now)
	closed := make(chan struct{})
	go func() {
		m.Drain(100 * time.Millisecond)
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Drain did not return within 10s of a 100ms drain")
	}
	if s := m.Stats(); s.Mirrored != 1 {
		t.Errorf("stats %+v, want the one request mirrored", s)
	}
}

// batchServer answers nothing on a connection until it has read `batch` requests on it, then
// answers them all: a destination whose answers take a long round trip, as the port-forward chain
// makes them. It records how many connections it got and what it answered.
type batchServer struct {
	ln    net.Listener
	batch int

	mu       sync.Mutex
	conns    int
	answered []string
}

func newBatchServer(t *testing.T, batch int, closeAfter string) *batchServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &batchServer{ln: ln, batch: batch}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns++
			s.mu.Unlock()
			go s.serve(c, closeAfter)
		}
	}()
	return s
}

func (s *batchServer) serve(c net.Conn, closeAfter string) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		var paths []string
		for len(paths) < s.batch {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			paths = append(paths, req.URL.Path)
		}
		for _, p := range paths {
			s.mu.Lock()
			s.answered = append(s.answered, p)
			s.mu.Unlock()
			if p == closeAfter {
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(p), p)
				return // the requests written after it on this connection are never answered
			}
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(p), p)
		}
	}
}

func (s *batchServer) result() (int, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns, append([]string(nil), s.answered...)
}

// TestMirrorPipelinesHTTP1Copies: a connection's copies do not wait for each other's answers. The
// destination answers only once it holds eight requests, which a copy that waits for each answer
// before sending the next never gives it; the answers come back in order, each with its own status.
func TestMirrorPipelinesHTTP1Copies(t *testing.T) {
	dest := newBatchServer(t, 8, "")
	var ev events
	m, err := New(context.Background(), Config{
		Spec: wire.MirrorSpec{Ports: []int{8080}}, Open: &dialer{addr: dest.ln.Addr().String()}, Events: ev.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	var exchanges [][2]string
	var want []string
	for i := range 16 {
		path := fmt.Sprintf("/%d", i)
		want = append(want, path)
		exchanges = append(exchanges, [2]string{request("GET", path, ""), response("x")})
	}
	feed(m.Handler(testFlow), false, exchanges)
	m.Drain(20 * time.Second)
	if s := m.Stats(); s.Mirrored != 16 || s.Answered != 16 || s.Failed != 0 {
		t.Errorf("stats %+v, want 16 mirrored and answered", s)
	}
	conns, answered := dest.result()
	if diff := cmp.Diff(want, answered); diff != "" {
		t.Errorf("destination answered (-want +got):\n%s", diff)
	}
	if conns != 1 {
		t.Errorf("destination got %d connections, want 1", conns)
	}
	var got []string
	for _, e := range ev.list() {
		if e.Kind == wire.EventMirrored && e.Status == http.StatusOK {
			got = append(got, e.Path)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mirrored events with status 200 (-want +got):\n%s", diff)
	}
}

// TestMirrorPipelineAfterConnectionClose: when the destination closes after an answer, the requests
// already written behind it on that connection are counted as failed, not lost silently, and the
// next ones go on a new connection; a request that itself asks to close is the last on its connection.
func TestMirrorPipelineAfterConnectionClose(t *testing.T) {
	dest := newBatchServer(t, 1, "/1")
	m, err := New(context.Background(), Config{Spec: wire.MirrorSpec{Ports: []int{8080}}, Open: &dialer{addr: dest.ln.Addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	closing := strings.Replace(request("GET", "/3", ""), "Host: app\r\n", "Host: app\r\nConnection: close\r\n", 1)
	feed(m.Handler(testFlow), false, [][2]string{
		{request("GET", "/0", ""), response("x")},
		{request("GET", "/1", ""), response("x")},
		{request("GET", "/2", ""), response("x")},
		{closing, response("x")},
		{request("GET", "/4", ""), response("x")},
	})
	m.Drain(20 * time.Second)
	s := m.Stats()
	if s.Mirrored+s.DroppedRefused != 5 || s.Answered+s.Failed != s.Mirrored {
		t.Errorf("stats %+v: every request must be mirrored or refused, and every mirrored one answered or failed", s)
	}
	_, answered := dest.result()
	if len(answered) == 0 || answered[len(answered)-1] != "/4" {
		t.Errorf("destination answered %q, want /4 last (on a new connection)", answered)
	}
}

// h2cRequests is a client's side of one h2c connection: the preface, its SETTINGS and one HEADERS
// frame (ending the stream) per path.
func h2cRequests(t *testing.T, paths []string) []byte {
	t.Helper()
	var out, hb bytes.Buffer
	out.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&out, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	enc := hpack.NewEncoder(&hb)
	for i, p := range paths {
		hb.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "app"}, {":path", p}} {
			if err := enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
				t.Fatal(err)
			}
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{
			StreamID: uint32(2*i + 1), BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true,
		}); err != nil {
			t.Fatal(err)
		}
	}
	return out.Bytes()
}

// TestMirrorCopiesH2CConcurrently: an h2c connection's copies are multiplexed on the copy's
// connection, not sent one after another's answer. The destination answers only once eight requests
// are open at the same time.
func TestMirrorCopiesH2CConcurrently(t *testing.T) {
	const n = 8
	var mu sync.Mutex
	open := 0
	all := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		open++
		if open == n {
			close(all)
		}
		mu.Unlock()
		select {
		case <-all:
			fmt.Fprintf(w, "%s\n", r.URL.Path)
		case <-time.After(10 * time.Second):
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &p
	srv.Start()
	t.Cleanup(srv.Close)
	var ev events
	m, err := New(context.Background(), Config{
		Spec: wire.MirrorSpec{Ports: []int{8080}}, Open: &dialer{addr: srv.Listener.Addr().String()}, Events: ev.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for i := range n {
		paths = append(paths, fmt.Sprintf("/%d", i))
	}
	h := m.Handler(testFlow)
	now := time.Now()
	h.Data(capture.ClientToServer, h2cRequests(t, paths), now)
	h.End(capture.ClientToServer, capture.EndFIN, now)
	h.End(capture.ServerToClient, capture.EndFIN, now)
	m.Drain(30 * time.Second)
	if s := m.Stats(); s.Mirrored != n || s.Answered != n {
		t.Errorf("stats %+v, want %d mirrored and answered", s, n)
	}
	var got []string
	for _, e := range ev.list() {
		if e.Kind == wire.EventMirrored && e.Status == http.StatusOK {
			got = append(got, e.Path)
		}
	}
	sort.Strings(got)
	sort.Strings(paths)
	if diff := cmp.Diff(paths, got); diff != "" {
		t.Errorf("copies answered 200 (-want +got):\n%s", diff)
	}
}

// sinkOpener is a destination that reads every copy and never answers, so each copy stays in
// flight, and costs little itself: what a test measures is the mirror's side.
type sinkOpener struct{}

func (sinkOpener) OpenIncoming(context.Context, wire.OpenRequest) (net.Conn, error) {
	mine, theirs := net.Pipe()
	go func() {
		// A small buffer of its own: io.Discard's pooled 8 KiB ones would be most of what is measured.
		b := make([]byte, 512)
		for {
			if _, err := theirs.Read(b); err != nil {
				return
			}
		}
	}()
	return mine, nil
}

// TestMirrorConnectionMemory: an overloaded pod's clients open thousands of connections, and each
// one the mirror copies holds its queue and its pipeline of requests in flight. Channels of
// structs allocate every slot up front (the two took ~29 KiB per connection, busy or idle, which
// thousands of connections add up); of pointers, 2.5 KiB. MEMPROF=FILE writes the heap profile at
// the peak.
func TestMirrorConnectionMemory(t *testing.T) {
	m, err := New(context.Background(), Config{Spec: wire.MirrorSpec{Ports: []int{8080}}, Open: sinkOpener{}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	const n = 1000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	hs := make([]capture.StreamHandler, 0, n)
	for i := range n {
		f := testFlow
		f.Client = netip.AddrPortFrom(f.Client.Addr(), uint16(10000+i))
		h := m.Handler(f)
		h.Data(capture.ClientToServer, []byte(request("GET", fmt.Sprintf("/%d", i), "")), time.Now())
		hs = append(hs, h)
	}
	deadline := time.Now().Add(10 * time.Second)
	for m.Stats().Mirrored < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d copies sent after 10s", m.Stats().Mirrored, n)
		}
		time.Sleep(time.Millisecond)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if p := os.Getenv("MEMPROF"); p != "" {
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.WriteHeapProfile(f); err != nil {
			t.Error(err)
		}
		f.Close()
	}
	perConn := (int64(after.HeapInuse) - int64(before.HeapInuse)) / n
	t.Logf("heap per copied connection with one request in flight: %d B", perConn)
	// 16 KiB here (the copy's 4 KiB response reader, the decoder, the test's pipe); 40 KiB with the
	// channels of structs.
	if perConn > 24<<10 {
		t.Errorf("each copied connection holds %d B of heap, want at most 24 KiB", perConn)
	}
	runtime.KeepAlive(hs)
}

// TestMirrorCopiesStopAtTheMemoryBudget: with a destination that does not take its copies yet, the
// copies waiting for it, and the request still being read, hold no more than the agent's memory
// budget leaves; the rest are dropped and counted as the budget's, and every byte comes back.
func TestMirrorCopiesStopAtTheMemoryBudget(t *testing.T) {
	const room = 48 << 10
	b, err := budget.New(budget.MinLimit, budget.Options{Usage: func() (int64, error) { return budget.MinLimit - room, nil }})
	if err != nil {
		t.Fatal(err)
	}
	local := newLocalServer(t, "")
	d := &gatedDialer{dialer: dialer{addr: local.srv.Listener.Addr().String()}, gate: make(chan struct{})}
	m, err := New(context.Background(), Config{Spec: wire.MirrorSpec{Ports: []int{8080}}, Open: d, Budget: b})
	if err != nil {
		t.Fatal(err)
	}
	h := m.Handler(testFlow)
	now := time.Now()
	body := strings.Repeat("b", 4<<10)
	// A request larger than the budget leaves is charged while it is read, and given up then, not
	// once it is whole.
	large := request("POST", "/large", strings.Repeat("l", 256<<10))
	h.Data(capture.ClientToServer, []byte(large[:16<<10]), now)
	if r := b.Reserved(); r < 15<<10 {
		t.Fatalf("16 KiB of a request in progress, %d bytes reserved, want them counted", r)
	}
	for p := 16 << 10; p < len(large); p += 16 << 10 {
		h.Data(capture.ClientToServer, []byte(large[p:min(p+16<<10, len(large))]), now)
		if r := b.Reserved(); r > room {
			t.Fatalf("the mirror holds %d bytes reading a large request, over the %d the budget leaves", r, room)
		}
	}
	h.Data(capture.ServerToClient, []byte(response("x")), now)
	const small = 30
	for i := range small {
		h.Data(capture.ClientToServer, []byte(request("POST", fmt.Sprintf("/%d", i), body)), now)
		h.Data(capture.ServerToClient, []byte(response("x")), now)
		if r := b.Reserved(); r > room {
			t.Fatalf("the mirror holds %d bytes, over the %d the budget leaves", r, room)
		}
	}
	close(d.gate)
	h.End(capture.ClientToServer, capture.EndFIN, now)
	h.End(capture.ServerToClient, capture.EndFIN, now)
	m.Drain(20 * time.Second)
	s := m.Stats()
	if s.Mirrored == 0 || s.DroppedOverBudget < 2 || s.Mirrored+s.DroppedOverBudget != small+1 || s.DroppedSlow != 0 {
		t.Errorf("stats %+v, want %d requests mirrored or dropped over budget, some of each, the large one among the dropped", s, small+1)
	}
	if got := local.requests(); len(got) != int(s.Mirrored) || slices.ContainsFunc(got, func(r string) bool { return strings.HasPrefix(r, "POST /large") }) {
		t.Errorf("the local server got %d requests (large among them: %v), want the %d mirrored, not the large one", len(got),
			slices.ContainsFunc(got, func(r string) bool { return strings.HasPrefix(r, "POST /large") }), s.Mirrored)
	}
	if !strings.Contains(s.Summary(), "agent over its memory budget") {
		t.Errorf("summary %q does not say copies were dropped for the memory budget", s.Summary())
	}
	if r := b.Reserved(); r != 0 {
		t.Errorf("%d bytes still reserved once the mirror drained", r)
	}
}

// TestMirrorGivesItsBudgetBackAtClose: the agent's budget outlives a mirror, so what a connection the
// capture never saw end still holds (a request half read) is given back when the mirror closes.
func TestMirrorGivesItsBudgetBackAtClose(t *testing.T) {
	b, err := budget.New(budget.MinLimit, budget.Options{Usage: func() (int64, error) { return 0, nil }})
	if err != nil {
		t.Fatal(err)
	}
	local := newLocalServer(t, "")
	m, err := New(context.Background(), Config{Spec: wire.MirrorSpec{Ports: []int{8080}}, Open: &dialer{addr: local.srv.Listener.Addr().String()}, Budget: b})
	if err != nil {
		t.Fatal(err)
	}
	h := m.Handler(testFlow)
	full := request("POST", "/half", strings.Repeat("h", 64<<10))
	h.Data(capture.ClientToServer, []byte(full[:len(full)/2]), time.Now())
	if b.Reserved() == 0 {
		t.Fatal("the request in progress reserved nothing")
	}
	m.Close()
	if r := b.Reserved(); r != 0 {
		t.Errorf("%d bytes still reserved once the mirror closed", r)
	}
}

// TestMirrorCountsTheTeesBudgetGapsAsTheBudgets: bytes the redirect's tee did not copy because the
// agent was over its memory budget break the copy of the request they were part of; that copy is
// counted as the budget's drop, not as bytes lost.
func TestMirrorCountsTheTeesBudgetGapsAsTheBudgets(t *testing.T) {
	local := newLocalServer(t, "")
	m, err := New(context.Background(), Config{Spec: wire.MirrorSpec{Ports: []int{8080}}, Open: &dialer{addr: local.srv.Listener.Addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	h := m.Handler(testFlow)
	bg, ok := h.(interface {
		GapOverBudget(capture.Direction, int, time.Time)
	})
	if !ok {
		t.Fatalf("the mirror's handler %T cannot be told of the budget's gaps", h)
	}
	now := time.Now()
	h.Data(capture.ClientToServer, []byte(request("GET", "/before", "")), now)
	h.Data(capture.ServerToClient, []byte(response("x")), now)
	big := request("POST", "/cut", strings.Repeat("c", 1000))
	h.Data(capture.ClientToServer, []byte(big[:100]), now)
	bg.GapOverBudget(capture.ClientToServer, len(big)-100, now)
	h.Data(capture.ServerToClient, []byte(response("y")), now)
	h.End(capture.ClientToServer, capture.EndFIN, now)
	h.End(capture.ServerToClient, capture.EndFIN, now)
	// A connection the tee copied nothing of: its copy is the budget's drop, once, not a connection
	// copied from its middle.
	f := testFlow
	f.Client = netip.AddrPortFrom(f.Client.Addr(), f.Client.Port()+1)
	none := m.Handler(f).(interface {
		capture.StreamHandler
		GapOverBudget(capture.Direction, int, time.Time)
	})
	none.GapOverBudget(capture.ClientToServer, 500, now)
	none.Data(capture.ServerToClient, []byte(response("z")), now)
	none.GapOverBudget(capture.ClientToServer, 500, now)
	none.End(capture.ClientToServer, capture.EndFIN, now)
	none.End(capture.ServerToClient, capture.EndFIN, now)
	m.Drain(10 * time.Second)
	if s := m.Stats(); s.Mirrored != 1 || s.DroppedOverBudget != 2 || s.DroppedGap != 0 || s.DroppedMidStream != 0 {
		t.Errorf("stats %+v, want one mirrored and two dropped over budget (the cut request, the connection not copied at all), none as lost bytes or mid-stream", s)
	}
}
