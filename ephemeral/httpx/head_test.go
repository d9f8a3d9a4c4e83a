package httpx

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/probe"
)

func TestDetect(t *testing.T) {
	tests := []struct {
		in      string
		want    Proto
		decided bool
	}{
		{"", ProtoUnknown, false},
		{"G", ProtoUnknown, false},
		{"GE", ProtoUnknown, false},
		{"GET", ProtoUnknown, false},
		{"GET ", ProtoHTTP1, true},
		{"GET / HTTP/1.1\r\n", ProtoHTTP1, true},
		{"POST /x HTTP/1.0\r\n", ProtoHTTP1, true},
		{"PROPFIND / HTTP/1.1\r\n", ProtoHTTP1, true},
		{"PUT", ProtoUnknown, false},
		{"PUTX", ProtoUnknown, true},
		{"get / HTTP/1.1\r\n", ProtoUnknown, true}, // methods are case-sensitive
		{"GETS / HTTP/1.1", ProtoUnknown, true},
		{"P", ProtoUnknown, false},
		{"PR", ProtoUnknown, false},
		{"PRI", ProtoUnknown, false},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n", ProtoUnknown, false},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", ProtoH2C, true},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04", ProtoH2C, true},
		{"PRI * HTTP/2.0\r\n\r\nXX", ProtoUnknown, true},
		{"PRI / HTTP/1.1\r\n", ProtoUnknown, true},
		{"\x16\x03\x01\x02\x00", ProtoUnknown, true}, // TLS ClientHello
		{"EHLO example.com\r\n", ProtoUnknown, true},
		{"SSH-2.0-OpenSSH_9.6\r\n", ProtoUnknown, true},
		{"\r\nGET / HTTP/1.1\r\n", ProtoUnknown, true},
		{"*3\r\n$3\r\nSET\r\n", ProtoUnknown, true}, // Redis
	}
	for _, tt := range tests {
		got, decided := Detect([]byte(tt.in))
		if got != tt.want || decided != tt.decided {
			t.Errorf("Detect(%q) = %v, %v; want %v, %v", tt.in, got, decided, tt.want, tt.decided)
		}
	}
}

func TestParseRequestHead(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want RequestHead
		rest string // bytes after the head
	}{
		{
			name: "get",
			in:   "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/8\r\n\r\n",
			want: RequestHead{Method: "GET", Target: "/a?b=1", Proto: "HTTP/1.1",
				Header: []HeaderField{{"Host", "x"}, {"User-Agent", "curl/8"}}},
		},
		{
			name: "raw names and order kept, values trimmed",
			in:   "GET / HTTP/1.1\r\nx-B:  2 \r\nX-a:\t1\r\n\r\n",
			want: RequestHead{Method: "GET", Target: "/", Proto: "HTTP/1.1",
				Header: []HeaderField{{"x-B", "2"}, {"X-a", "1"}}},
		},
		{
			name: "content length and body after",
			in:   "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
			want: RequestHead{Method: "POST", Target: "/", Proto: "HTTP/1.1", ContentLength: 5,
				Header: []HeaderField{{"Content-Length", "5"}}},
			rest: "hello",
		},
		{
			name: "repeated equal lengths",
			in:   "POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
			want: RequestHead{Method: "POST", Target: "/", Proto: "HTTP/1.1", ContentLength: 5,
				Header: []HeaderField{{"Content-Length", "5"}, {"content-length", "5"}}},
		},
		{
			name: "chunked",
			in:   "POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n",
			want: RequestHead{Method: "POST", Target: "/", Proto: "HTTP/1.1", ContentLength: -1, Chunked: true,
				Header: []HeaderField{{"Transfer-Encoding", "Chunked"}}},
		},
		{
			name: "bare LF",
			in:   "GET / HTTP/1.1\nHost: x\n\n",
			want: RequestHead{Method: "GET", Target: "/", Proto: "HTTP/1.1", Header: []HeaderField{{"Host", "x"}}},
		},
		{
			name: "websocket upgrade",
			in:   "GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
			want: RequestHead{Method: "GET", Target: "/ws", Proto: "HTTP/1.1", Upgrade: "websocket",
				Header: []HeaderField{{"Connection", "keep-alive, Upgrade"}, {"Upgrade", "websocket"}}},
		},
		{
			name: "upgrade header without connection token is no upgrade",
			in:   "GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
			want: RequestHead{Method: "GET", Target: "/", Proto: "HTTP/1.1",
				Header: []HeaderField{{"Upgrade", "websocket"}}},
		},
		{
			name: "close and expect",
			in:   "PUT / HTTP/1.1\r\nConnection: close\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
			want: RequestHead{Method: "PUT", Target: "/", Proto: "HTTP/1.1", Close: true, Expect100: true, ContentLength: 1,
				Header: []HeaderField{{"Connection", "close"}, {"Expect", "100-Continue"}, {"Content-Length", "1"}}},
		},
		{
			name: "http/1.0 closes by default",
			in:   "GET / HTTP/1.0\r\n\r\n",
			want: RequestHead{Method: "GET", Target: "/", Proto: "HTTP/1.0", Close: true, Header: []HeaderField{}},
		},
		{
			name: "http/1.0 keep-alive",
			in:   "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
			want: RequestHead{Method: "GET", Target: "/", Proto: "HTTP/1.0",
				Header: []HeaderField{{"Connection", "Keep-Alive"}}},
		},
		{
			name: "absolute form and obs-text",
			in:   "GET http://h/p?q HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n",
			want: RequestHead{Method: "GET", Target: "http://h/p?q", Proto: "HTTP/1.1",
				Header: []HeaderField{{"X", "caf\xc3\xa9"}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRequestHead([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if rest := tt.in[len(got.Raw):]; rest != tt.rest {
				t.Errorf("rest after head = %q, want %q", rest, tt.rest)
			}
			got.Raw = nil
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func TestParseRequestHeadErrors(t *testing.T) {
	tests := []struct {
		in   string
		want error
	}{
		{"GET / HTTP/1.1\r\nHost: x\r\n", ErrIncomplete},
		{"GET / HTTP/1.1", ErrIncomplete},
		{"GET / HTTP/1.1\r\nX: " + string(make([]byte, MaxHeadSize)), ErrHeadTooLarge},
		{"\r\n", ErrMalformed},
		{"GET  / HTTP/1.1\r\n\r\n", ErrMalformed},
		{"GET / HTTP/1.1 \r\n\r\n", ErrMalformed},
		{"GET /\r\n\r\n", ErrMalformed},
		{"GET / HTTP/2.0\r\n\r\n", ErrMalformed},
		{"G(T / HTTP/1.1\r\n\r\n", ErrMalformed},
		{"GET /a\x00b HTTP/1.1\r\n\r\n", ErrMalformed},
		{"GET / HTTP/1.1\r\nX : y\r\n\r\n", ErrMalformed},
		{"GET / HTTP/1.1\r\nNoColon\r\n\r\n", ErrMalformed},
		{"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", ErrMalformed},
		{"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", ErrMalformed},
		{"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", ErrMalformed},
		{"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", ErrMalformed},
		{"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", ErrMalformed},
		{"POST / HTTP/1.1\r\nContent-Length: 1,1\r\n\r\n", ErrMalformed},
		{"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", ErrMalformed},
		{"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", ErrMalformed},
		{"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", ErrMalformed},
		{"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", ErrMalformed},
		{"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", ErrMalformed},
		{"POST / HTTP/1.1\r\nTransfer-Encoding: ,\r\n\r\n", ErrMalformed},
	}
	for _, tt := range tests {
		_, err := ParseRequestHead([]byte(tt.in))
		if !errors.Is(err, tt.want) {
			t.Errorf("ParseRequestHead(%q) error = %v, want %v", clip(tt.in), err, tt.want)
		}
	}
}

func TestParseResponseHead(t *testing.T) {
	tests := []struct {
		in   string
		want ResponseHead
	}{
		{"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
			ResponseHead{Proto: "HTTP/1.1", Status: 200, Reason: "OK", ContentLength: 3, Header: []HeaderField{{"Content-Length", "3"}}}},
		{"HTTP/1.1 204\r\n\r\n", ResponseHead{Proto: "HTTP/1.1", Status: 204, ContentLength: -1, Header: []HeaderField{}}},
		{"HTTP/1.1 200 \r\n\r\n", ResponseHead{Proto: "HTTP/1.1", Status: 200, ContentLength: -1, Header: []HeaderField{}}},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
			ResponseHead{Proto: "HTTP/1.1", Status: 200, Reason: "OK", Chunked: true, ContentLength: -1,
				Header: []HeaderField{{"Transfer-Encoding", "chunked"}, {"Content-Length", "3"}}}},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
			ResponseHead{Proto: "HTTP/1.1", Status: 200, Reason: "OK", Close: true, ContentLength: -1,
				Header: []HeaderField{{"Transfer-Encoding", "gzip"}}}},
		{"HTTP/1.0 200 OK\r\n\r\n", ResponseHead{Proto: "HTTP/1.0", Status: 200, Reason: "OK", Close: true, ContentLength: -1, Header: []HeaderField{}}},
		{"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
			ResponseHead{Proto: "HTTP/1.1", Status: 101, Reason: "Switching Protocols", ContentLength: -1,
				Header: []HeaderField{{"Upgrade", "websocket"}, {"Connection", "Upgrade"}}}},
		{"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
			ResponseHead{Proto: "HTTP/1.1", Status: 200, Reason: "OK", Close: true, ContentLength: -1, Header: []HeaderField{{"Connection", "close"}}}},
	}
	for _, tt := range tests {
		got, err := ParseResponseHead([]byte(tt.in))
		if err != nil {
			t.Errorf("ParseResponseHead(%q): %v", tt.in, err)
			continue
		}
		got.Raw = nil
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("ParseResponseHead(%q) (-want +got)\n%s", tt.in, diff)
		}
	}
	for _, in := range []string{
		"HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 2000 OK\r\n\r\n", "HTTP/1.1 099 x\r\n\r\n", "HTTP/2 200\r\n\r\n",
		"HTTP/1.1 abc\r\n\r\n", "HTTP/1.1\r\n\r\n", "HTTP/1.1 200 O\x00K\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
	} {
		if _, err := ParseResponseHead([]byte(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseResponseHead(%q) error = %v, want ErrMalformed", in, err)
		}
	}
}

func TestDeclineH2C(t *testing.T) {
	tests := []struct{ in, want, upgrade string }{
		{"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAM\r\n\r\n",
			"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ""},
		{"GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade, HTTP2-Settings\r\nUpgrade: h2c, websocket\r\nHTTP2-Settings: AAM\r\n\r\n",
			"GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n", "websocket"},
		{"GET / HTTP/1.1\r\nConnection: HTTP2-Settings\r\nupgrade: H2C\r\nHTTP2-Settings: AAM\r\n\r\n",
			"GET / HTTP/1.1\r\n\r\n", ""},
	}
	for _, tt := range tests {
		h, err := ParseRequestHead([]byte(tt.in))
		if err != nil {
			t.Fatal(err)
		}
		var c h1conn
		if !c.declineH2C(&h) || string(h.Raw) != tt.want || h.Upgrade != tt.upgrade {
			t.Errorf("declineH2C(%q) = %q, upgrade %q; want %q, %q", tt.in, h.Raw, h.Upgrade, tt.want, tt.upgrade)
		}
		again, err := ParseRequestHead(h.Raw)
		if err != nil || !equalHeads(&again, &h) {
			t.Errorf("rebuilt head parses as %+v, %v; kept %+v", again, err, h)
		}
	}
	h, _ := ParseRequestHead([]byte("GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"))
	var c h1conn
	if c.declineH2C(&h) {
		t.Error("a websocket upgrade was changed")
	}
}

func TestPathQueryAndProbe(t *testing.T) {
	for target, want := range map[string]string{
		"/a?b":             "/a?b",
		"*":                "*",
		"http://h":         "/",
		"http://h/x/y?z=1": "/x/y?z=1",
		"http://h?q":       "/?q",
		"h:443":            "h:443",
	} {
		h := RequestHead{Target: target}
		if got := h.PathQuery(); got != want {
			t.Errorf("PathQuery(%q) = %q, want %q", target, got, want)
		}
	}
	// ProbeRequest hands the probe rule what it reads, in the form the steal filters match.
	h := RequestHead{Target: "http://svc/healthz?x=1", Header: []HeaderField{{"Accept", "*/*"}, {"user-agent", "kube-probe/1.33"}}}
	src, dst := netip.MustParseAddrPort("10.0.0.9:41000"), netip.MustParseAddrPort("10.0.0.1:8080")
	want := probe.Request{Source: src, Port: 8080, Path: "/healthz?x=1", Header: []string{"Accept: */*", "user-agent: kube-probe/1.33"}}
	if d := cmp.Diff(want, h.ProbeRequest(src, dst), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); d != "" {
		t.Errorf("ProbeRequest (-want +got):\n%s", d)
	}
}

func TestCopyChunked(t *testing.T) {
	tests := []struct {
		in, relayed string
		err         error
	}{
		{"5\r\nhello\r\n0\r\n\r\nNEXT", "5\r\nhello\r\n0\r\n\r\n", nil},
		{"3;a=b\r\nabc\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n", "3;a=b\r\nabc\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n", nil},
		{"5\nhello\r\n0\r\n\r\n", "", ErrMalformed},           // bare LF after the size
		{"5\r\nhello\n0\r\n\r\n", "5\r\nhello", ErrMalformed}, // bare LF after the data
		{"5\r\nhelloX\r\n0\r\n\r\n", "5\r\nhello", ErrMalformed},
		{"0\r\nX-T: 1\n\r\n", "0\r\n", ErrMalformed}, // bare LF in the trailers
		{"0\r\n\n", "0\r\n", ErrMalformed},
		{"0\r\nX: a\x00b\r\n\r\n", "0\r\n", ErrMalformed},
		{"5\r\nhel", "5\r\nhel", io.ErrUnexpectedEOF},
		{"", "", io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		_, err := copyChunked(w, bufio.NewReader(strings.NewReader(tt.in)))
		_ = w.Flush()
		if !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) || out.String() != tt.relayed {
			t.Errorf("copyChunked(%q) relayed %q, %v; want %q, %v", tt.in, out.String(), err, tt.relayed, tt.err)
		}
	}
}

func TestChunkSize(t *testing.T) {
	for in, want := range map[string]int64{
		"0\r\n": 0, "1a\r\n": 26, "FF\r\n": 255, "FF\n": -1, "1;x\n": -1, "10;name=value\r\n": 16, "10 ;x\r\n": -1, "10 \t\r\n": 16, "0 0\r\n": -1, "7fffffffffffffff\r\n": -1,
		"\r\n": -1, "x\r\n": -1, "1x\r\n": -1, "1;\x00\r\n": -1,
	} {
		got, err := chunkSize([]byte(in))
		if want < 0 {
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("chunkSize(%q) = %d, %v; want ErrMalformed", in, got, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("chunkSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
}
