package capture

import (
	"bytes"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// fullRecorder collects what decoders report with every option on.
type fullRecorder struct {
	httpRecorder
	requests []*Request
	protos   []string
	events   []string // "proto P", "req SEQ", "ex SEQ" in the order they came
}

func (r *fullRecorder) options() HTTPOptions {
	o := r.httpRecorder.options()
	o.OnExchange = func(e Exchange) {
		r.exchanges = append(r.exchanges, e)
		r.events = append(r.events, fmt.Sprintf("ex %d", e.Seq))
	}
	o.OnRequest = func(q *Request) {
		r.requests = append(r.requests, q)
		r.events = append(r.events, fmt.Sprintf("req %d", q.Seq))
	}
	o.OnProtocol = func(_ Flow, proto string) {
		r.protos = append(r.protos, proto)
		r.events = append(r.events, "proto "+proto)
	}
	o.KeepResponses = true
	return o
}

func newFullDriver(opts HTTPOptions) *driver {
	var r httpRecorder
	d := newDriver(&r)
	d.f = NewHTTPFlow(d.f.flow, opts)
	return d
}

// requestKey is what tests compare of a Request: all but the times and Raw, which only
// counts as present or not.
func requestKey(q *Request) string {
	s := fmt.Sprintf("%d/%d %s %s %s host=%s", q.Seq, q.StreamID, q.Proto, q.Method, q.Target, q.Host)
	if q.GRPC {
		s += " grpc"
	}
	if q.Pseudo != nil {
		s += fmt.Sprintf(" pseudo=%q", q.Pseudo)
	}
	s += fmt.Sprintf(" hdr=%q body=%q", q.Header, q.Body)
	if q.Trailer != nil {
		s += fmt.Sprintf(" trailer=%q", q.Trailer)
	}
	if q.Partial {
		s += " partial"
	}
	if q.Truncated {
		s += " truncated"
	}
	if q.Raw != nil {
		s += " raw"
	}
	return s
}

// responseKey is what tests compare of an exchange's kept response.
func responseKey(e Exchange) string {
	s := fmt.Sprintf("%d/%d %d", e.Seq, e.StreamID, e.Status)
	if p := e.Response; p != nil {
		s += fmt.Sprintf(" hdr=%q body=%q", p.Header, p.Body)
		if p.Trailer != nil {
			s += fmt.Sprintf(" trailer=%q", p.Trailer)
		}
		if p.Truncated {
			s += " truncated"
		}
	}
	if e.Partial {
		s += " partial"
	}
	return s
}

func (r *fullRecorder) requestKeys() []string {
	var out []string
	for _, q := range r.requests {
		out = append(out, requestKey(q))
	}
	return out
}

func (r *fullRecorder) responseKeys() []string {
	var out []string
	for _, e := range r.exchanges {
		out = append(out, responseKey(e))
	}
	return out
}

func wantKeys(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n got %s\nwant %s", what, strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
}

// checkPairing checks what every consumer relies on: the protocol comes first and once,
// each request once, before the exchange with its Seq.
func checkPairing(t *testing.T, r *fullRecorder) {
	t.Helper()
	if len(r.protos) != 1 || !strings.HasPrefix(r.events[0], "proto ") {
		t.Errorf("protocol reports %q in %q", r.protos, r.events)
	}
	told := map[uint64]bool{}
	for _, ev := range r.events {
		var seq uint64
		if _, err := fmt.Sscanf(ev, "req %d", &seq); err == nil {
			if told[seq] || seq == 0 {
				t.Errorf("request %d reported twice or without a Seq: %q", seq, r.events)
			}
			told[seq] = true
		} else if _, err := fmt.Sscanf(ev, "ex %d", &seq); err == nil && seq != 0 && !told[seq] {
			t.Errorf("exchange %d before its request: %q", seq, r.events)
		}
	}
}

func TestHTTPRequestsHTTP1(t *testing.T) {
	for _, tc := range []struct {
		name      string
		run       func(d *driver, r *fullRecorder)
		requests  []string
		responses []string
		raws      []string // the Raw of each request that has one, in order
		maxBody   int
	}{{
		name: "content-length body",
		run: func(d *driver, _ *fullRecorder) {
			d.c("POST /up?x=1 HTTP/1.1\r\nHost: svc\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello").c(" world")
			d.s("HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A:  b \r\n\r\nok").end(EndFIN)
		},
		requests:  []string{`1/0 HTTP/1.1 POST /up?x=1 host=svc hdr=["Host: svc" "Content-Type: text/plain" "Content-Length: 11"] body="hello world" raw`},
		responses: []string{`1/0 201 hdr=["Content-Length: 2" "X-A: b"] body="ok"`},
		raws:      []string{"POST /up?x=1 HTTP/1.1\r\nHost: svc\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world"},
	}, {
		name: "chunked with trailers, folded field",
		run: func(d *driver, _ *fullRecorder) {
			d.c("POST /c HTTP/1.1\r\nHost: h\r\nX-Fold: a\r\n  b\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n")
			d.c("A\r\n0123456789\r\n0\r\nX-Sum: 13\r\n\r\n")
			d.s("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Grpc-Status\r\n\r\n2\r\nok\r\n0\r\nGrpc-Status: 0\r\n\r\n").end(EndFIN)
		},
		requests:  []string{`1/0 HTTP/1.1 POST /c host=h hdr=["Host: h" "X-Fold: a b" "Transfer-Encoding: chunked"] body="abc0123456789" trailer=["X-Sum: 13"] raw`},
		responses: []string{`1/0 200 hdr=["Transfer-Encoding: chunked" "Trailer: Grpc-Status"] body="ok" trailer=["Grpc-Status: 0"]`},
		raws:      []string{"POST /c HTTP/1.1\r\nHost: h\r\nX-Fold: a\r\n  b\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-Sum: 13\r\n\r\n"},
	}, {
		name: "pipelined",
		run: func(d *driver, r *fullRecorder) {
			d.c("GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nxyGET /3 HTTP/1.0\r\n\r\n")
			if len(r.requests) != 3 || len(r.exchanges) != 0 {
				panic("requests are not reported before their responses")
			}
			d.s("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2HTTP/1.0 200 OK\r\n\r\n3").end(EndFIN)
		},
		requests: []string{
			`1/0 HTTP/1.1 GET /1 host=h hdr=["Host: h"] body="" raw`,
			`2/0 HTTP/1.1 POST /2 host=h hdr=["Host: h" "Content-Length: 2"] body="xy" raw`,
			`3/0 HTTP/1.0 GET /3 host= hdr=[] body="" raw`,
		},
		responses: []string{`1/0 200 hdr=["Content-Length: 1"] body="1"`, `2/0 200 hdr=["Content-Length: 1"] body="2"`, `3/0 200 hdr=[] body="3"`},
		raws: []string{
			"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n", "POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nxy", "GET /3 HTTP/1.0\r\n\r\n",
		},
	}, {
		name: "head",
		run: func(d *driver, _ *fullRecorder) {
			d.c("HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n").s("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
			d.c("GET /a HTTP/1.1\r\nHost: h\r\n\r\n").s("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").end(EndFIN)
		},
		requests:  []string{`1/0 HTTP/1.1 HEAD /a host=h hdr=["Host: h"] body="" raw`, `2/0 HTTP/1.1 GET /a host=h hdr=["Host: h"] body="" raw`},
		responses: []string{`1/0 200 hdr=["Content-Length: 5"] body=""`, `2/0 200 hdr=["Content-Length: 5"] body="hello"`},
		raws:      []string{"HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n", "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"},
	}, {
		name: "100-continue",
		run: func(d *driver, r *fullRecorder) {
			d.c("PUT /f HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n").s("HTTP/1.1 100 Continue\r\n\r\n")
			if len(r.requests) != 0 {
				panic("request reported before its body")
			}
			d.c("abc").s("HTTP/1.1 204 No Content\r\n\r\n").end(EndFIN)
		},
		requests: []string{`1/0 HTTP/1.1 PUT /f host=h hdr=["Host: h" "Expect: 100-continue" "Content-Length: 3"] body="abc" raw`},
		// The interim response is not the response.
		responses: []string{`1/0 204 hdr=[] body=""`},
		raws:      []string{"PUT /f HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"},
	}, {
		name: "100-continue refused",
		run: func(d *driver, _ *fullRecorder) {
			d.c("PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
			d.s("HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").end(EndFIN)
		},
		// The client never sent the body: the request is unfinished.
		requests:  []string{`1/0 HTTP/1.1 PUT /f host= hdr=["Expect: 100-continue" "Content-Length: 3"] body="" partial`},
		responses: []string{`1/0 417 hdr=["Content-Length: 0" "Connection: close"] body="" partial`},
	}, {
		name: "websocket",
		run: func(d *driver, _ *fullRecorder) {
			d.c("GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
			d.s("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x02hi")
			d.c("GET / HTTP/1.1\r\n\r\n").end(EndFIN) // frame payload, not a request
		},
		requests:  []string{`1/0 HTTP/1.1 GET /ws host= hdr=["Connection: Upgrade" "Upgrade: websocket"] body="" raw`},
		responses: []string{`1/0 101 hdr=["Connection: Upgrade" "Upgrade: websocket"] body=""`},
		raws:      []string{"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"},
	}, {
		name: "h2c upgrade",
		run: func(d *driver, _ *fullRecorder) {
			d.c("GET /up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
			d.s("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
			cl, sv := newH2Side(true), newH2Side(false)
			cl.headers(3, false, ":method", "POST", ":scheme", "http", ":authority", "h", ":path", "/next")
			cl.data(3, true, 4, 0)
			sv.settings()
			sv.headers(1, false, ":status", "200")
			sv.data(1, true, 7, 0)
			sv.headers(3, true, ":status", "204", "x-b", "2")
			d.c(cl.take()).s(sv.take()).end(EndFIN)
		},
		requests: []string{
			`1/0 HTTP/1.1 GET /up host=h hdr=["Host: h" "Connection: Upgrade, HTTP2-Settings" "Upgrade: h2c" "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"] body="" raw`,
			`2/3 h2c POST /next host=h pseudo=[":method: POST" ":scheme: http" ":authority: h" ":path: /next"] hdr=[] body="dddd"`,
		},
		responses: []string{`1/1 200 hdr=[] body="ddddddd"`, `2/3 204 hdr=["x-b: 2"] body=""`},
		raws:      []string{"GET /up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"},
	}, {
		name: "gap inside a request body",
		run: func(d *driver, _ *fullRecorder) {
			d.c("POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\n012").gap(ClientToServer, 4).c("789")
			d.c("GET /b HTTP/1.1\r\n\r\n")
			d.s("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").end(EndFIN)
		},
		requests:  []string{`1/0 HTTP/1.1 POST /a host= hdr=["Content-Length: 10"] body="012789" partial`, `2/0 HTTP/1.1 GET /b host= hdr=[] body="" raw`},
		responses: []string{`1/0 200 hdr=["Content-Length: 0"] body="" partial`, `2/0 200 hdr=["Content-Length: 0"] body=""`},
		raws:      []string{"GET /b HTTP/1.1\r\n\r\n"},
	}, {
		name: "gap in a request head, then resync",
		run: func(d *driver, _ *fullRecorder) {
			d.c("POST /2 HTTP/1.1\r\nHost: h\r\nX-Long: aaa").gap(ClientToServer, 100).c("aaa\r\nContent-Length: 3\r\n\r\nabc")
			d.s("HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n22")
			d.c("GET /3 HTTP/1.1\r\n\r\n").s("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3").end(EndFIN)
		},
		requests:  []string{`1/0 HTTP/1.1 POST /2 host=h hdr=["Host: h"] body="" partial`, `2/0 HTTP/1.1 GET /3 host= hdr=[] body="" raw`},
		responses: []string{`1/0 201 hdr=["Content-Length: 2"] body="22" partial`, `2/0 200 hdr=["Content-Length: 1"] body="3"`},
		raws:      []string{"GET /3 HTTP/1.1\r\n\r\n"},
	}, {
		name: "capture starts mid-request",
		run: func(d *driver, _ *fullRecorder) {
			d.gap(ClientToServer, GapUnknown).gap(ServerToClient, GapUnknown)
			d.c("tail of a body\r\n").s("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
			d.c("POST /next HTTP/1.1\r\nContent-Length: 1\r\n\r\nz").s("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").end(EndFIN)
		},
		requests:  []string{`1/0 HTTP/1.1 POST /next host= hdr=["Content-Length: 1"] body="z" raw`},
		responses: []string{`0/0 200 hdr=["Content-Length: 0"] body="" partial`, `1/0 200 hdr=["Content-Length: 0"] body=""`},
		raws:      []string{"POST /next HTTP/1.1\r\nContent-Length: 1\r\n\r\nz"},
	}, {
		name: "cut by the end of the connection",
		run: func(d *driver, _ *fullRecorder) {
			d.c("POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab").end(EndRST)
		},
		requests:  []string{`1/0 HTTP/1.1 POST /a host= hdr=["Transfer-Encoding: chunked"] body="ab" partial`},
		responses: []string{`1/0 0 partial`},
	}, {
		name:    "max body",
		maxBody: 4,
		run: func(d *driver, _ *fullRecorder) {
			d.c("POST /a HTTP/1.1\r\nContent-Length: 6\r\n\r\n012345")
			d.c("POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")
			d.c("POST /c HTTP/1.1\r\nContent-Length: 4\r\n\r\nwxyz")
			d.s("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfour")
			d.end(EndFIN)
		},
		requests: []string{
			`1/0 HTTP/1.1 POST /a host= hdr=["Content-Length: 6"] body="0123" truncated`,
			`2/0 HTTP/1.1 POST /b host= hdr=["Transfer-Encoding: chunked"] body="abcd" truncated`,
			`3/0 HTTP/1.1 POST /c host= hdr=["Content-Length: 4"] body="wxyz" raw`,
		},
		responses: []string{
			`1/0 200 hdr=["Content-Length: 5"] body="hell" truncated`,
			`2/0 200 hdr=["Content-Length: 0"] body=""`,
			`3/0 200 hdr=["Content-Length: 4"] body="four"`,
		},
		raws: []string{"POST /c HTTP/1.1\r\nContent-Length: 4\r\n\r\nwxyz"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var r fullRecorder
			opts := r.options()
			opts.MaxBody = tc.maxBody
			d := newFullDriver(opts)
			tc.run(d, &r)
			wantKeys(t, "requests", r.requestKeys(), tc.requests)
			wantKeys(t, "responses", r.responseKeys(), tc.responses)
			var raws []string
			for _, q := range r.requests {
				if q.Raw != nil {
					raws = append(raws, string(q.Raw))
				}
				if q.Flow != d.f.flow || q.Start.Before(streamT0) || q.End.Before(q.Start) {
					t.Errorf("flow or times of %s: %v %v..%v", requestKey(q), q.Flow, q.Start, q.End)
				}
			}
			wantKeys(t, "raw", raws, tc.raws)
			checkPairing(t, &r)
			if r.protos[0] != ProtoHTTP1 {
				t.Errorf("protocol %q", r.protos)
			}
			if d.f.held != 0 {
				t.Errorf("%d bytes still held", d.f.held)
			}
		})
	}
}

// TestHTTPRequestsMissingSegment loses a segment in the middle of the second of three
// requests on a keep-alive connection: the second is partial, the third whole again.
func TestHTTPRequestsMissingSegment(t *testing.T) {
	reqs := []string{
		"GET /1 HTTP/1.1\r\nHost: svc\r\n\r\n",
		"POST /2 HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n14\r\n01234567890123456789\r\n0\r\n\r\n",
		"PUT /3 HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabc",
	}
	recs := flowRecorders{}
	f := newSegFeeder(t, HTTPStreams(recs.options()), AssemblerOptions{})
	c := newTCPScript("10.0.0.2:40000", "10.0.0.1:80", 1, 1)
	f.feed(c.handshake()...)
	f.feed(c.send(true, reqs[0], 0)...)
	f.feed(c.send(false, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1", 0)...)
	second := c.send(true, reqs[1][:70], 0)
	second = append(second, c.send(true, reqs[1][70:80], 0)...)
	second = append(second, c.send(true, reqs[1][80:], 0)...)
	f.feed(second[0], second[2]) // the middle one is lost
	f.feed(c.send(false, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n22", 0)...)
	f.feed(c.send(true, reqs[2], 0)...)
	f.feed(c.send(false, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n333", 0)...)
	f.a.Flush(f.now.Add(2 * time.Second))
	f.feed(c.fin(true), c.fin(false))
	r := recs[netipMust("10.0.0.2:40000")]
	wantKeys(t, "requests", r.requestKeys(), []string{
		`1/0 HTTP/1.1 GET /1 host=svc hdr=["Host: svc"] body="" raw`,
		`2/0 HTTP/1.1 POST /2 host=svc hdr=["Host: svc" "Transfer-Encoding: chunked"] body="0123456789" partial`,
		`3/0 HTTP/1.1 PUT /3 host=svc hdr=["Host: svc" "Content-Length: 3"] body="abc" raw`,
	})
	if string(r.requests[0].Raw) != reqs[0] || string(r.requests[2].Raw) != reqs[2] {
		t.Errorf("raw %q and %q", r.requests[0].Raw, r.requests[2].Raw)
	}
	wantKeys(t, "responses", r.responseKeys(), []string{
		`1/0 200 hdr=["Content-Length: 1"] body="1"`,
		`2/0 200 hdr=["Content-Length: 2"] body="22" partial`,
		`3/0 200 hdr=["Content-Length: 3"] body="333"`,
	})
	checkPairing(t, r)
}

func TestHTTPRequestsTimes(t *testing.T) {
	var r fullRecorder
	d := newFullDriver(r.options())
	d.c("POST /a HTTP/1.1\r\nContent-Length: 4\r\n\r\nab") // 1ms
	d.c("cd")                                              // 2ms
	d.s("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").end(EndFIN)
	q := r.requests[0]
	if !q.Start.Equal(streamT0.Add(time.Millisecond)) || !q.End.Equal(streamT0.Add(2*time.Millisecond)) {
		t.Errorf("request from %v to %v", q.Start.Sub(streamT0), q.End.Sub(streamT0))
	}
}

func TestHTTPRequestsH2C(t *testing.T) {
	cl, sv := newH2Side(true), newH2Side(false)
	var r fullRecorder
	d := newFullDriver(r.options())
	cl.headers(1, true, ":method", "GET", ":scheme", "http", ":authority", "svc", ":path", "/one", "user-agent", "t")
	cl.headers(3, false, ":method", "POST", ":scheme", "http", ":authority", "svc", ":path", "/two", "content-type", "text/plain")
	cl.data(3, false, 3, 5)
	d.c(cl.take())
	if got := r.requestKeys(); len(got) != 1 {
		t.Fatalf("after the first frames: %q", got)
	}
	cl.data(3, false, 2, 0)
	cl.headers(3, true, "x-checksum", "5")
	cl.headersSplit(5, false, ":method", "POST", ":scheme", "http", ":path", "/pkg.Greeter/SayHello",
		"content-type", "application/grpc", "te", "trailers", "host", "svc:80")
	cl.data(5, true, 6, 0)
	d.c(cl.take())
	sv.settings()
	sv.headers(3, false, ":status", "100")
	sv.headers(3, false, ":status", "201", "content-type", "text/plain")
	sv.data(3, true, 4, 2)
	sv.headers(1, true, ":status", "204")
	sv.headers(5, false, ":status", "200", "content-type", "application/grpc")
	sv.data(5, false, 9, 0)
	sv.headers(5, true, "grpc-status", "0", "grpc-message", "ok")
	d.s(sv.take()).end(EndFIN)

	wantKeys(t, "requests", r.requestKeys(), []string{
		`1/1 h2c GET /one host=svc pseudo=[":method: GET" ":scheme: http" ":authority: svc" ":path: /one"] hdr=["user-agent: t"] body=""`,
		`2/3 h2c POST /two host=svc pseudo=[":method: POST" ":scheme: http" ":authority: svc" ":path: /two"] hdr=["content-type: text/plain"] body="ddddd" trailer=["x-checksum: 5"]`,
		`3/5 h2c POST /pkg.Greeter/SayHello host=svc:80 grpc pseudo=[":method: POST" ":scheme: http" ":path: /pkg.Greeter/SayHello"] hdr=["content-type: application/grpc" "te: trailers" "host: svc:80"] body="dddddd"`,
	})
	wantKeys(t, "responses", r.responseKeys(), []string{
		`2/3 201 hdr=["content-type: text/plain"] body="dddd"`,
		`1/1 204 hdr=[] body=""`,
		`3/5 200 hdr=["content-type: application/grpc"] body="ddddddddd" trailer=["grpc-status: 0" "grpc-message: ok"]`,
	})
	checkPairing(t, &r)
	if r.protos[0] != ProtoH2C || d.f.held != 0 {
		t.Errorf("protocol %q, %d bytes held", r.protos, d.f.held)
	}
}

func TestHTTPRequestsH2CMalformedMethod(t *testing.T) {
	cl := newH2Side(true)
	var r fullRecorder
	d := newFullDriver(r.options())
	cl.headers(1, true, ":method", "G T", ":path", "/")
	d.c(cl.take()).end(EndFIN)
	// Not a request line's method: left out, so that no consumer writes it into one.
	wantKeys(t, "requests", r.requestKeys(), []string{`1/1 h2c  / host= pseudo=[":method: G T" ":path: /"] hdr=[] body=""`})
}

func TestHTTPRequestsH2CPartial(t *testing.T) {
	t.Run("gap in request DATA", func(t *testing.T) {
		cl, sv := newH2Side(true), newH2Side(false)
		var r fullRecorder
		d := newFullDriver(r.options())
		cl.headers(1, false, ":method", "PUT", ":path", "/a")
		d.c(cl.take())
		cl.data(1, true, 100, 0)
		frame := cl.take()
		d.c(frame[:30]).gap(ClientToServer, 50).c(frame[80:])
		cl.headers(3, true, ":method", "GET", ":path", "/b")
		d.c(cl.take())
		sv.settings()
		sv.headers(1, true, ":status", "200")
		sv.headers(3, true, ":status", "200")
		d.s(sv.take()).end(EndFIN)
		wantKeys(t, "requests", r.requestKeys(), []string{
			fmt.Sprintf(`1/1 h2c PUT /a host= pseudo=[":method: PUT" ":path: /a"] hdr=[] body=%q partial`, strings.Repeat("d", 50)),
			`2/3 h2c GET /b host= pseudo=[":method: GET" ":path: /b"] hdr=[] body=""`,
		})
		checkPairing(t, &r)
	})
	t.Run("reset mid-request", func(t *testing.T) {
		cl, sv := newH2Side(true), newH2Side(false)
		var r fullRecorder
		d := newFullDriver(r.options())
		cl.headers(1, false, ":method", "PUT", ":path", "/a")
		cl.data(1, false, 3, 0)
		if err := cl.fr.WriteRSTStream(1, http2.ErrCodeCancel); err != nil {
			t.Fatal(err)
		}
		d.c(cl.take()).end(EndFIN)
		wantKeys(t, "requests", r.requestKeys(), []string{`1/1 h2c PUT /a host= pseudo=[":method: PUT" ":path: /a"] hdr=[] body="ddd" partial`})
		wantKeys(t, "responses", r.responseKeys(), []string{`1/1 0`})
		checkPairing(t, &r)
		_ = sv
	})
	t.Run("lost header block", func(t *testing.T) {
		cl := newH2Side(true)
		var r fullRecorder
		d := newFullDriver(r.options())
		cl.headers(1, false, ":method", "PUT", ":path", "/a")
		cl.data(1, false, 3, 0)
		d.c(cl.take())
		cl.headers(1, true, "x-trailer", strings.Repeat("t", 40))
		frames := cl.take()
		d.c(frames[:10]).gap(ClientToServer, 10).c(frames[20:]).end(EndFIN)
		wantKeys(t, "requests", r.requestKeys(), []string{`1/1 h2c PUT /a host= pseudo=[":method: PUT" ":path: /a"] hdr=[] body="ddd" partial`})
		checkPairing(t, &r)
	})
	t.Run("budget", func(t *testing.T) {
		// Four concurrent uploads of 100 bytes with MaxBody 100 and MaxHeaderBytes 16: the
		// connection keeps 4×116 bytes, which the fields (26 bytes a stream) and the first 90
		// bytes of each body fill. The first upload to end is cut short; its end makes room.
		cl := newH2Side(true)
		var r fullRecorder
		opts := r.options()
		opts.MaxBody, opts.MaxHeaderBytes = 100, 16
		d := newFullDriver(opts)
		for id := uint32(1); id <= 7; id += 2 {
			cl.headers(id, false, ":method", "PUT")
		}
		for id := uint32(1); id <= 7; id += 2 {
			cl.data(id, false, 90, 0)
		}
		d.c(cl.take())
		if d.f.held > d.f.maxHeld() {
			t.Errorf("%d bytes held, the budget is %d", d.f.held, d.f.maxHeld())
		}
		for id := uint32(1); id <= 7; id += 2 {
			cl.data(id, true, 10, 0)
		}
		d.c(cl.take()).end(EndFIN)
		var sizes []string
		for _, q := range r.requests {
			s := fmt.Sprint(len(q.Body))
			if q.Truncated {
				s += " truncated"
			}
			sizes = append(sizes, s)
		}
		wantKeys(t, "body sizes", sizes, []string{"90 truncated", "100", "100", "100"})
		if d.f.held != 0 {
			t.Errorf("%d bytes still held", d.f.held)
		}
	})
}

func TestHTTPRequestsOnProtocol(t *testing.T) {
	h2 := newH2Side(true)
	h2.headers(1, true, ":method", "GET", ":path", "/")
	preface := h2.take()
	for _, tc := range []struct {
		name string
		run  func(d *driver)
		want string
	}{
		{"http/1", func(d *driver) { d.c("GET / HTTP/1.0\r\n\r\n").end(EndFIN) }, ProtoHTTP1},
		{"http/1 in pieces", func(d *driver) { d.c("GE").c("T / HTTP/1.1\r\nHost: x\r").c("\n\r\n").end(EndFIN) }, ProtoHTTP1},
		{"h2c", func(d *driver) { d.c(preface[:10]).c(preface[10:]).end(EndFIN) }, ProtoH2C},
		{"tls", func(d *driver) { d.c("\x16\x03\x01\x00\xa5\x01\x00").end(EndFIN) }, ProtoOpaque},
		{"server first", func(d *driver) { d.s("220 mail ESMTP\r\n").c("EHLO me\r\n").end(EndFIN) }, ProtoOpaque},
		{"not an http head", func(d *driver) { d.c("HELLO there\r\nfriend\r\n\r\n").end(EndFIN) }, ProtoOpaque},
		{"nothing sent", func(d *driver) { d.end(EndFIN) }, ProtoOpaque},
		{"mid-stream http/1", func(d *driver) {
			d.gap(ClientToServer, GapUnknown).c("ody\r\nGET / HTTP/1.1\r\n\r\n").end(EndFIN)
		}, ProtoHTTP1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r fullRecorder
			d := newFullDriver(r.options())
			tc.run(d)
			if !slices.Equal(r.protos, []string{tc.want}) {
				t.Errorf("protocols %q, want %q", r.protos, tc.want)
			}
			checkPairing(t, &r)
		})
	}
	t.Run("settles early", func(t *testing.T) {
		var r fullRecorder
		d := newFullDriver(r.options())
		d.c("POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n")
		if !slices.Equal(r.protos, []string{ProtoHTTP1}) {
			t.Errorf("after the first head: %q", r.protos)
		}
	})
}

// TestHTTPRequestsOff checks that without the new options the decoder reports what it
// did before and keeps no bodies.
func TestHTTPRequestsOff(t *testing.T) {
	var r httpRecorder
	d := newDriver(&r)
	d.c("POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").s("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").end(EndFIN)
	if len(r.exchanges) != 1 || r.exchanges[0].Response != nil || r.exchanges[0].Seq != 1 {
		t.Errorf("exchanges %+v", r.exchanges)
	}

	body := bytes.Repeat([]byte("x"), 64<<10)
	const head = "POST /big HTTP/1.1\r\nContent-Length: 4194304\r\n\r\n"
	allocated := func(opts HTTPOptions) uint64 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		d := newFullDriver(opts)
		d.c(head)
		d.s("HTTP/1.1 200 OK\r\nContent-Length: 4194304\r\n\r\n")
		for range 64 {
			d.f.Data(ClientToServer, body, d.tick())
			d.f.Data(ServerToClient, body, d.tick())
		}
		d.end(EndFIN)
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	if n := allocated(HTTPOptions{OnExchange: func(Exchange) {}}); n > 1<<20 {
		t.Errorf("allocated %d bytes for 8 MiB of bodies without keeping them", n)
	}
	var full fullRecorder
	if n := allocated(full.options()); n < 8<<20 {
		t.Errorf("allocated only %d bytes keeping 8 MiB of bodies", n)
	}
	if len(full.requests) != 1 || len(full.requests[0].Raw) != len(head)+4<<20 || full.exchanges[0].Response == nil {
		t.Errorf("kept request %d bytes of raw", len(full.requests[0].Raw))
	}
}

// limitBudget is a Budget of limit bytes that remembers its peak.
type limitBudget struct{ limit, reserved, peak, refused int }

func (b *limitBudget) Reserve(n int) bool {
	if b.reserved+n > b.limit {
		b.refused++
		return false
	}
	b.reserved += n
	b.peak = max(b.peak, b.reserved)
	return true
}

func (b *limitBudget) Release(n int) { b.reserved -= n }

// TestRequestsStopAtTheSharedBudget: what connections keep of requests in progress is charged to one
// budget; past it a request is kept no further (Truncated, OverBudget, no Raw), and every byte comes
// back once requests are handed over or their connections end.
func TestRequestsStopAtTheSharedBudget(t *testing.T) {
	b := &limitBudget{limit: 48 << 10}
	var got []*Request
	opts := HTTPOptions{Budget: b, MaxBody: 1 << 20, OnRequest: func(q *Request) { got = append(got, q) }}
	big := newFullDriver(opts)
	small := newFullDriver(opts)
	big.c("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 102400\r\n\r\n")
	chunk := strings.Repeat("x", 10<<10)
	for range 10 {
		big.c(chunk)
		if b.reserved > b.limit {
			t.Fatalf("reserved %d of a %d budget", b.reserved, b.limit)
		}
	}
	// An abandoned request on another connection: its bytes come back when the connection ends.
	small.c("POST /half HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
	big.c("GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
	big.end(EndFIN)
	small.end(EndFIN)
	if len(got) != 3 {
		t.Fatalf("got %d requests, want 3", len(got))
	}
	if q := got[0]; !q.OverBudget || !q.Truncated || q.Raw != nil || len(q.Body) >= 102400 {
		t.Errorf("the upload past the budget: OverBudget=%v Truncated=%v Raw=%v body %d bytes; want it over budget, truncated, without Raw", q.OverBudget, q.Truncated, q.Raw != nil, len(q.Body))
	}
	if q := got[1]; q.Target != "/next" || q.OverBudget || q.Raw == nil {
		t.Errorf("the request after the upload was handed over: %s OverBudget=%v Raw=%v; want it whole", q.Target, q.OverBudget, q.Raw != nil)
	}
	if b.refused == 0 || b.peak > b.limit {
		t.Errorf("budget refused %d times, peak %d of %d", b.refused, b.peak, b.limit)
	}
	if b.reserved != 0 {
		t.Fatalf("%d bytes still reserved after every connection ended", b.reserved)
	}
}
