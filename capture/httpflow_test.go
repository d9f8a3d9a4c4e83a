package capture

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// httpRecorder collects what HTTP decoders report.
type httpRecorder struct {
	exchanges   []Exchange
	connections []Connection
}

func (r *httpRecorder) options() HTTPOptions {
	return HTTPOptions{
		OnExchange:   func(e Exchange) { r.exchanges = append(r.exchanges, e) },
		OnConnection: func(c Connection) { r.connections = append(r.connections, c) },
	}
}

// exchangeKey is what tests compare of an Exchange: all but the addresses and times.
func exchangeKey(e Exchange) string {
	s := fmt.Sprintf("%s %s %s%s %d req=%d resp=%d", e.Proto, e.Method, e.Host, e.Path, e.Status, e.ReqBytes, e.RespBytes)
	if e.GRPCStatus != "" {
		s += " grpc-status=" + e.GRPCStatus
	}
	if e.Partial {
		s += " partial"
	}
	return s
}

func (r *httpRecorder) keys() []string {
	var out []string
	for _, e := range r.exchanges {
		out = append(out, exchangeKey(e))
	}
	return out
}

func wantExchanges(t *testing.T, r *httpRecorder, want ...string) {
	t.Helper()
	if got := r.keys(); !slices.Equal(got, want) {
		t.Errorf("exchanges:\n got %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
}

// driver feeds an HTTPFlow by hand, one millisecond per call.
type driver struct {
	f   *HTTPFlow
	now time.Time
}

func newDriver(r *httpRecorder) *driver {
	flow := Flow{
		Client: netip.MustParseAddrPort("10.0.0.2:40000"), Server: netip.MustParseAddrPort("10.0.0.1:80"),
		Start: streamT0, Handshake: true,
	}
	return &driver{f: NewHTTPFlow(flow, r.options()), now: streamT0}
}

func (d *driver) tick() time.Time {
	d.now = d.now.Add(time.Millisecond)
	return d.now
}

func (d *driver) c(s string) *driver { d.f.Data(ClientToServer, []byte(s), d.tick()); return d }
func (d *driver) s(s string) *driver { d.f.Data(ServerToClient, []byte(s), d.tick()); return d }

func (d *driver) gap(dir Direction, n int) *driver { d.f.Gap(dir, n, d.tick()); return d }

func (d *driver) end(why EndReason) *driver {
	d.f.End(ClientToServer, why, d.tick())
	d.f.End(ServerToClient, why, d.tick())
	return d
}

func TestHTTPFlowMessages(t *testing.T) {
	for _, tc := range []struct {
		name        string
		run         func(d *driver)
		want        []string
		connections int
	}{{
		name: "interim responses",
		run: func(d *driver) {
			d.c("POST /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
			d.s("HTTP/1.1 100 Continue\r\n\r\n").c("abc")
			d.s("HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
			d.end(EndFIN)
		},
		want: []string{"HTTP/1.1 POST h/up 201 req=3 resp=0"},
	}, {
		name: "no-body statuses",
		run: func(d *driver) {
			d.c("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n")
			d.s("HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n")
			d.s("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n")
			d.s("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			d.end(EndFIN)
		},
		// The client sent all three before any answer: pipelined.
		want: []string{"HTTP/1.1 GET /a 204 req=0 resp=0", "HTTP/1.1 GET /b 304 req=0 resp=0", "HTTP/1.1 GET /c 200 req=0 resp=2"},
	}, {
		name: "close-delimited",
		run: func(d *driver) {
			d.c("GET /old HTTP/1.0\r\n\r\n").s("HTTP/1.0 200 OK\r\n\r\nsome").s(" body").end(EndFIN)
		},
		want: []string{"HTTP/1.0 GET /old 200 req=0 resp=9"},
	}, {
		name: "close-delimited, capture stopped",
		run: func(d *driver) {
			d.c("GET /old HTTP/1.0\r\n\r\n").s("HTTP/1.0 200 OK\r\n\r\nsome").end(EndFlush)
		},
		want: []string{"HTTP/1.0 GET /old 200 req=0 resp=4 partial"},
	}, {
		name: "chunked request with trailer",
		run: func(d *driver) {
			d.c("POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n")
			d.c("A\r\n0123456789\r\n0\r\nX-Sum: 1\r\n\r\n")
			d.s("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n").end(EndFIN)
		},
		want: []string{"HTTP/1.1 POST /c 200 req=13 resp=2"},
	}, {
		name: "absolute form",
		run: func(d *driver) {
			d.c("GET http://example.com:8080?q=1 HTTP/1.1\r\n\r\n").s("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").end(EndFIN)
		},
		want: []string{"HTTP/1.1 GET example.com:8080/?q=1 200 req=0 resp=0"},
	}, {
		name: "no response",
		run: func(d *driver) {
			d.c("GET /x HTTP/1.1\r\n\r\n").end(EndFIN)
		},
		want: []string{"HTTP/1.1 GET /x 0 req=0 resp=0"},
	}, {
		name: "no response yet when the capture stops",
		run: func(d *driver) {
			d.c("GET /x HTTP/1.1\r\n\r\n").end(EndFlush)
		},
		want: []string{"HTTP/1.1 GET /x 0 req=0 resp=0 partial"},
	}, {
		name: "cut in the body",
		run: func(d *driver) {
			d.c("GET /x HTTP/1.1\r\n\r\n").s("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").end(EndRST)
		},
		want: []string{"HTTP/1.1 GET /x 200 req=0 resp=3 partial"},
	}, {
		name: "response delivered before its request",
		run: func(d *driver) {
			// The request waited in reassembly for a reordered segment.
			d.f.Data(ServerToClient, []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), streamT0.Add(5*time.Millisecond))
			d.f.Data(ClientToServer, []byte("GET /late HTTP/1.1\r\n\r\n"), streamT0.Add(3*time.Millisecond))
			d.now = streamT0.Add(5 * time.Millisecond)
			d.end(EndFIN)
		},
		want: []string{"HTTP/1.1 GET /late 200 req=0 resp=2"},
	}, {
		name: "websocket",
		run: func(d *driver) {
			d.c("GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello")
			d.s("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x02hi")
			d.c("GET / HTTP/1.1\r\n\r\n") // frame payload, not a request
			d.end(EndFIN)
		},
		want:        []string{"HTTP/1.1 GET /ws 101 req=0 resp=0"},
		connections: 1,
	}, {
		name: "upgrade declined",
		run: func(d *driver) {
			d.c("GET /a HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
			d.s("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
			d.end(EndFIN)
		},
		want: []string{"HTTP/1.1 GET /a 200 req=0 resp=0", "HTTP/1.1 GET /b 200 req=0 resp=1"},
	}, {
		name: "connect",
		run: func(d *driver) {
			d.c("CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n").s("HTTP/1.1 200 OK\r\n\r\n")
			d.c("\x00\x00\x00\x08\x04\xd2\x16\x2f").end(EndFIN)
		},
		want:        []string{"HTTP/1.1 CONNECT db:5432db:5432 200 req=0 resp=0"},
		connections: 1,
	}, {
		name: "not http",
		run: func(d *driver) {
			d.c("\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03").s("\x16\x03\x03").end(EndFIN)
		},
		connections: 1,
	}, {
		name: "server speaks first",
		run: func(d *driver) {
			d.s("220 mail ESMTP\r\n").c("EHLO me\r\n").end(EndFIN)
		},
		connections: 1,
	}, {
		name: "h2c upgrade",
		run: func(d *driver) {
			d.c("GET /up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
			d.s("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
			cl, sv := newH2Side(true), newH2Side(false)
			sv.settings()
			sv.headers(1, false, ":status", "200")
			sv.data(1, true, 7, 0)
			d.c(cl.take()).s(sv.take())
			d.end(EndFIN)
		},
		want: []string{"h2c GET h/up 200 req=0 resp=7"},
	}, {
		name: "mid-stream start",
		run: func(d *driver) {
			d.gap(ClientToServer, GapUnknown).gap(ServerToClient, GapUnknown)
			d.c("of a body\r\nmore body\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n")
			d.s("rest of a response body\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			d.end(EndFIN)
		},
		want: []string{"HTTP/1.1 GET h/next 200 req=0 resp=2"},
	}, {
		name: "mid-stream start at a response",
		run: func(d *driver) {
			d.gap(ServerToClient, GapUnknown).gap(ClientToServer, GapUnknown)
			d.s("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			d.c("GET /next HTTP/1.1\r\n\r\n").s("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
			d.end(EndFIN)
		},
		// The first response answers a request from before the capture.
		want: []string{"HTTP/1.1   200 req=0 resp=2 partial", "HTTP/1.1 GET /next 404 req=0 resp=0"},
	}, {
		name: "gap inside a request body",
		run: func(d *driver) {
			d.c("POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\n012").gap(ClientToServer, 4).c("789")
			d.c("GET /b HTTP/1.1\r\n\r\n")
			d.s("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").end(EndFIN)
		},
		want: []string{"HTTP/1.1 POST /a 200 req=10 resp=0 partial", "HTTP/1.1 GET /b 200 req=0 resp=0"},
	}, {
		name: "gap inside a response body",
		run: func(d *driver) {
			d.c("GET /a HTTP/1.1\r\n\r\n").s("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01").gap(ServerToClient, 8)
			d.c("GET /b HTTP/1.1\r\n\r\n").s("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb").end(EndFIN)
		},
		want: []string{"HTTP/1.1 GET /a 200 req=0 resp=10 partial", "HTTP/1.1 GET /b 200 req=0 resp=1"},
	}, {
		name: "gap in a request head",
		run: func(d *driver) {
			d.c("GET /1 HTTP/1.1\r\n\r\n").s("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
			d.c("POST /2 HTTP/1.1\r\nHost: h\r\nX-Long: aaa").gap(ClientToServer, 100).c("aaa\r\nContent-Length: 3\r\n\r\nabc")
			d.s("HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n22")
			d.c("GET /3 HTTP/1.1\r\n\r\n").s("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3").end(EndFIN)
		},
		want: []string{
			"HTTP/1.1 GET /1 200 req=0 resp=1",
			"HTTP/1.1 POST h/2 201 req=0 resp=2 partial",
			"HTTP/1.1 GET /3 200 req=0 resp=1",
		},
	}, {
		name: "request lost whole",
		run: func(d *driver) {
			d.c("GET /1 HTTP/1.1\r\n\r\n").s("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
			d.gap(ClientToServer, 18).s("HTTP/1.1 500 Oops\r\nContent-Length: 1\r\n\r\n2")
			d.c("GET /3 HTTP/1.1\r\n\r\n").s("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3").end(EndFIN)
		},
		want: []string{"HTTP/1.1 GET /1 200 req=0 resp=1", "HTTP/1.1   500 req=0 resp=1 partial", "HTTP/1.1 GET /3 200 req=0 resp=1"},
	}, {
		name: "response lost whole",
		run: func(d *driver) {
			d.c("GET /1 HTTP/1.1\r\n\r\n").gap(ServerToClient, 40)
			d.c("GET /2 HTTP/1.1\r\n\r\n").s("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2").end(EndFIN)
		},
		want: []string{"HTTP/1.1 GET /1 0 req=0 resp=0 partial", "HTTP/1.1 GET /2 200 req=0 resp=1"},
	}, {
		name: "garbage between requests",
		run: func(d *driver) {
			d.c("GET /1 HTTP/1.1\r\n\r\n").s("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
			d.c("\x00\x01garbage\r\n\r\n").c("GET /2 HTTP/1.1\r\n\r\n").s("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
			d.end(EndFIN)
		},
		want: []string{"HTTP/1.1 GET /1 200 req=0 resp=0", "HTTP/1.1 GET /2 200 req=0 resp=0"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var r httpRecorder
			tc.run(newDriver(&r))
			wantExchanges(t, &r, tc.want...)
			if len(r.connections) != tc.connections {
				t.Errorf("%d connection summaries, want %d: %+v", len(r.connections), tc.connections, r.connections)
			}
		})
	}
}

func TestHTTPFlowConnectionSummary(t *testing.T) {
	var r httpRecorder
	d := newDriver(&r)
	d.c("\x16\x03\x01hello").gap(ClientToServer, 10).s("world!").end(EndRST)
	if len(r.connections) != 1 {
		t.Fatalf("connections %+v", r.connections)
	}
	c := r.connections[0]
	want := Connection{
		Client: d.f.flow.Client, Server: d.f.flow.Server, Start: streamT0, Duration: 5 * time.Millisecond,
		BytesIn: 8, BytesOut: 6, Gaps: 1,
	}
	if c != want {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
}

func TestHTTPFlowLatency(t *testing.T) {
	var r httpRecorder
	d := newDriver(&r)
	d.c("GET /a HTTP/1.1\r\n")                            // at 1ms
	d.c("\r\n")                                           // 2ms
	d.s("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab") // 3ms
	d.s("cd")                                             // 4ms: the response's last byte
	d.end(EndFIN)
	if len(r.exchanges) != 1 {
		t.Fatal(r.keys())
	}
	e := r.exchanges[0]
	if !e.Start.Equal(streamT0.Add(time.Millisecond)) || e.Latency != 3*time.Millisecond {
		t.Errorf("start %v latency %v", e.Start.Sub(streamT0), e.Latency)
	}
	if e.Client != d.f.flow.Client || e.Server != d.f.flow.Server {
		t.Errorf("addresses %v %v", e.Client, e.Server)
	}
}

// play sends chunks through an Assembler as TCP segments of random sizes, between a
// handshake and the FINs.
func play(t *testing.T, f *segFeeder, c *tcpScript, rng *rand.Rand, chunks []chunk) {
	t.Helper()
	f.feed(c.handshake()...)
	for _, ch := range chunks {
		f.feed(c.send(ch.fromClient, ch.data, 1+rng.IntN(1400))...)
	}
	f.feed(c.fin(true), c.fin(false), c.ack(true))
}

// keepAlive is an HTTP/1.1 keep-alive conversation: a GET, a POST answered chunked, a HEAD.
func keepAlive() ([]chunk, []string) {
	return []chunk{
			{true, "GET /a?x=1 HTTP/1.1\r\nHost: svc\r\nUser-Agent: t\r\n\r\n"},
			{false, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"},
			{true, "POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 11\r\n\r\nhello world"},
			{false, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nchunked\r\n5;x=y\r\n-body\r\n0\r\nX-T: 1\r\n\r\n"},
			{true, "HEAD /a HTTP/1.1\r\nHost: svc\r\n\r\n"},
			{false, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"},
		}, []string{
			"HTTP/1.1 GET svc/a?x=1 200 req=0 resp=5",
			"HTTP/1.1 POST svc/upload 200 req=11 resp=12",
			"HTTP/1.1 HEAD svc/a 200 req=0 resp=0",
		}
}

func TestHTTPFlowKeepAlive(t *testing.T) {
	chunks, want := keepAlive()
	for _, addrs := range [][2]string{{"10.0.0.2:40000", "10.0.0.1:80"}, {"[fd00::2]:40000", "[fd00::1]:80"}} {
		for seed := range uint64(20) {
			var r httpRecorder
			f := newSegFeeder(t, HTTPStreams(r.options()), AssemblerOptions{})
			play(t, f, newTCPScript(addrs[0], addrs[1], 100, 200), rand.New(rand.NewPCG(seed, 1)), chunks)
			wantExchanges(t, &r, want...)
			for i := 1; i < len(r.exchanges); i++ {
				if !r.exchanges[i-1].Start.Before(r.exchanges[i].Start) || r.exchanges[i].Latency <= 0 {
					t.Errorf("times: %v then %v", r.exchanges[i-1], r.exchanges[i])
				}
			}
			if t.Failed() {
				t.Fatalf("%s, seed %d", addrs[0], seed)
			}
		}
	}
}

func TestHTTPFlowPipelined(t *testing.T) {
	var r httpRecorder
	f := newSegFeeder(t, HTTPStreams(r.options()), AssemblerOptions{})
	play(t, f, newTCPScript("10.0.0.2:40000", "10.0.0.1:80", 1, 1), rand.New(rand.NewPCG(5, 6)), []chunk{
		{true, "GET /first HTTP/1.1\r\nHost: h\r\n\r\nGET /second HTTP/1.1\r\nHost: h\r\n\r\n"},
		{false, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n22"},
	})
	wantExchanges(t, &r, "HTTP/1.1 GET h/first 200 req=0 resp=1", "HTTP/1.1 GET h/second 404 req=0 resp=2")
}

// TestHTTPFlowMissingSegment loses a segment in the middle of the second of three
// requests on a keep-alive connection: the second is partial, the third decodes.
func TestHTTPFlowMissingSegment(t *testing.T) {
	for _, tc := range []struct {
		name, second string
		lost         [2]int // the bytes of the second request that are lost
		want         string
	}{
		{"in the body", "POST /2 HTTP/1.1\r\nHost: svc\r\nContent-Length: 20\r\n\r\n01234567890123456789", [2]int{60, 70},
			"HTTP/1.1 POST svc/2 200 req=20 resp=2 partial"},
		{"in the head", "POST /2 HTTP/1.1\r\nHost: svc\r\nX-Pad: 0123456789\r\nContent-Length: 20\r\n\r\n01234567890123456789", [2]int{35, 45},
			"HTTP/1.1 POST svc/2 200 req=0 resp=2 partial"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r httpRecorder
			f := newSegFeeder(t, HTTPStreams(r.options()), AssemblerOptions{})
			c := newTCPScript("10.0.0.2:40000", "10.0.0.1:80", 1, 1)
			f.feed(c.handshake()...)
			f.feed(c.send(true, "GET /1 HTTP/1.1\r\nHost: svc\r\n\r\n", 0)...)
			f.feed(c.send(false, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1", 0)...)
			second := c.send(true, tc.second[:tc.lost[0]], 0)
			second = append(second, c.send(true, tc.second[tc.lost[0]:tc.lost[1]], 0)...)
			second = append(second, c.send(true, tc.second[tc.lost[1]:], 0)...)
			f.feed(second[0], second[2]) // the middle one is lost
			f.feed(c.send(false, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n22", 0)...)
			f.feed(c.send(true, "GET /3 HTTP/1.1\r\nHost: svc\r\n\r\n", 0)...)
			f.feed(c.send(false, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n333", 0)...)
			if len(r.exchanges) != 1 {
				t.Fatalf("before the hole is given up: %v", r.keys())
			}
			f.a.Flush(f.now.Add(2 * time.Second))
			f.feed(c.fin(true), c.fin(false))
			wantExchanges(t, &r, "HTTP/1.1 GET svc/1 200 req=0 resp=1", tc.want, "HTTP/1.1 GET svc/3 200 req=0 resp=3")
		})
	}
}
