package capture

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
)

// relayed is what one side of a relayed connection sent at once; data nil is its FIN.
type relayed struct {
	fromClient bool
	data       []byte
	at         time.Time
}

// relayConn is one connection through the recording relay.
type relayConn struct {
	client, server netip.AddrPort
	opened         time.Time
	mu             sync.Mutex
	chunks         []relayed
}

func (c *relayConn) record(fromClient bool, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.chunks = append(c.chunks, relayed{fromClient: fromClient, data: data, at: time.Now()})
}

// recordingRelay forwards TCP connections to target and records both directions with
// their times, as a capture next to the server would see them.
type recordingRelay struct {
	l     net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []*relayConn
}

func startRelay(t *testing.T, target string) *recordingRelay {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recordingRelay{l: l}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				t.Errorf("relay dial: %v", err)
				c.Close()
				continue
			}
			rc := &relayConn{
				client: c.RemoteAddr().(*net.TCPAddr).AddrPort(),
				server: c.LocalAddr().(*net.TCPAddr).AddrPort(),
				opened: time.Now(),
			}
			r.mu.Lock()
			r.conns = append(r.conns, rc)
			r.mu.Unlock()
			r.wg.Add(2)
			go r.pipe(rc, true, c.(*net.TCPConn), s.(*net.TCPConn))
			go r.pipe(rc, false, s.(*net.TCPConn), c.(*net.TCPConn))
		}
	}()
	t.Cleanup(func() {
		l.Close()
		r.wg.Wait()
	})
	return r
}

// pipe copies one direction, recording each read before writing it on, so that the
// recorded order is causal: the peer only sees what was recorded.
func (r *recordingRelay) pipe(rc *relayConn, fromClient bool, src, dst *net.TCPConn) {
	defer r.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			rc.record(fromClient, bytes.Clone(buf[:n]))
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	rc.record(fromClient, nil)
	dst.CloseWrite()
	src.CloseRead()
}

// waitClosed waits until every relayed connection ended in both directions.
func (r *recordingRelay) waitClosed(t *testing.T) []*relayConn {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		conns := slices.Clone(r.conns)
		r.mu.Unlock()
		done := true
		for _, c := range conns {
			c.mu.Lock()
			fins := 0
			for _, ch := range c.chunks {
				if ch.data == nil {
					fins++
				}
			}
			c.mu.Unlock()
			done = done && fins == 2
		}
		if done {
			return conns
		}
		if time.Now().After(deadline) {
			t.Fatal("relayed connections did not close")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// realServer answers the requests the clients below make.
func realServer(t *testing.T) string {
	t.Helper()
	var pairMu sync.Mutex
	pairWait := map[string]chan struct{}{}
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.URL.Query().Get("name"))
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		// Read all first: an HTTP/1 handler cannot read the body once it writes.
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("echo: %v", err)
		}
		w.Write(b)
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, _ *http.Request) {
		for i := range 3 {
			fmt.Fprintf(w, "part %d\n", i)
			w.(http.Flusher).Flush()
		}
	})
	mux.HandleFunc("/empty", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	// Both /pair requests are answered only once both arrived: they are concurrent streams.
	mux.HandleFunc("/pair", func(w http.ResponseWriter, r *http.Request) {
		pairMu.Lock()
		ch, ok := pairWait["x"]
		if !ok {
			ch = make(chan struct{})
			pairWait["x"] = ch
		} else {
			close(ch)
			delete(pairWait, "x")
		}
		pairMu.Unlock()
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
		}
		fmt.Fprintf(w, "pair %s", r.URL.Query().Get("i"))
	})
	// A gRPC-shaped call: the status comes in a trailer.
	mux.HandleFunc("/pkg.Greeter/SayHello", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status")
		w.Write([]byte{0, 0, 0, 0, 3, 'h', 'e', 'y'})
		w.Header().Set("Grpc-Status", "0")
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// clientLog keeps the exchanges as the clients saw them, in exchangeKey's form.
type clientLog struct {
	mu   sync.Mutex
	keys []string
}

func (l *clientLog) do(t *testing.T, c *http.Client, proto, method, url string, body io.Reader, bodyLen int64, header http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	l.doReq(t, c, proto, req, bodyLen)
}

func (l *clientLog) doReq(t *testing.T, c *http.Client, proto string, req *http.Request, bodyLen int64) {
	t.Helper()
	method, url := req.Method, req.URL
	resp, err := c.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", method, url, err)
		return
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Errorf("%s %s body: %v", method, url, err)
	}
	e := Exchange{
		Proto: proto, Method: method, Host: req.URL.Host, Path: req.URL.RequestURI(),
		Status: resp.StatusCode, ReqBytes: bodyLen, RespBytes: n, GRPCStatus: resp.Trailer.Get("Grpc-Status"),
	}
	l.mu.Lock()
	l.keys = append(l.keys, exchangeKey(e))
	l.mu.Unlock()
}

// unsized hides a reader's length, so that the client sends the body chunked.
type unsized struct{ io.Reader }

// withTrailer is a request whose body ends with a trailer field X-Sum.
func withTrailer(t *testing.T, url string, body []byte) *http.Request {
	t.Helper()
	req, err := http.NewRequest("POST", url, unsized{bytes.NewReader(body)})
	if err != nil {
		t.Fatal(err)
	}
	req.Trailer = http.Header{"X-Sum": {fmt.Sprint(len(body))}}
	return req
}

// flowRecorders keep what decoders with every option on report, per connection.
type flowRecorders map[netip.AddrPort]*fullRecorder

func (m flowRecorders) get(client netip.AddrPort) *fullRecorder {
	if m[client] == nil {
		m[client] = &fullRecorder{}
	}
	return m[client]
}

func (m flowRecorders) options() HTTPOptions {
	return HTTPOptions{
		OnExchange: func(e Exchange) {
			r := m.get(e.Client)
			r.exchanges = append(r.exchanges, e)
			r.events = append(r.events, fmt.Sprintf("ex %d", e.Seq))
		},
		OnConnection: func(c Connection) { m.get(c.Client).connections = append(m.get(c.Client).connections, c) },
		OnRequest: func(q *Request) {
			r := m.get(q.Flow.Client)
			r.requests = append(r.requests, q)
			r.events = append(r.events, fmt.Sprintf("req %d", q.Seq))
		},
		OnProtocol: func(f Flow, proto string) {
			r := m.get(f.Client)
			r.protos = append(r.protos, proto)
			r.events = append(r.events, "proto "+proto)
		},
		KeepResponses: true,
	}
}

// checkRealRequests checks the requests and responses kept of the real traffic: HTTP/1
// requests are the client's bytes exactly, bodies are what was sent and echoed.
// echoed is the number of /echo calls on each connection.
func checkRealRequests(t *testing.T, conns []*relayConn, recs flowRecorders, echoed [2]int) {
	t.Helper()
	for i, rc := range conns {
		r := recs[rc.client]
		if r == nil {
			t.Fatalf("nothing reported for %v", rc.client)
		}
		checkPairing(t, r)
		wantProto := []string{ProtoHTTP1, ProtoH2C}[i]
		if !slices.Equal(r.protos, []string{wantProto}) {
			t.Errorf("%v: protocol %q, want %s", rc.client, r.protos, wantProto)
		}
		var sent, answered, raw []byte
		for _, ch := range rc.chunks {
			if ch.fromClient {
				sent = append(sent, ch.data...)
			} else {
				answered = append(answered, ch.data...)
			}
		}
		if i == 0 && !bytes.Contains(answered, []byte("HTTP/1.1 100 Continue\r\n")) {
			t.Error("the server did not send 100 Continue: the test does not cover it")
		}
		requests := map[uint64]*Request{}
		for _, q := range r.requests {
			requests[q.Seq] = q
			raw = append(raw, q.Raw...)
			if q.Partial || q.Truncated || (q.Raw == nil) != (i == 1) || q.End.Before(q.Start) {
				t.Errorf("request %s", requestKey(q))
			}
			if q.Trailer != nil && !slices.Equal(q.Trailer, []string{"X-Sum: " + fmt.Sprint(len(q.Body))}) &&
				!slices.Equal(q.Trailer, []string{"x-sum: " + fmt.Sprint(len(q.Body))}) {
				t.Errorf("request trailer %q with a body of %d", q.Trailer, len(q.Body))
			}
		}
		if i == 0 && !bytes.Equal(raw, sent) {
			t.Errorf("the HTTP/1 requests' Raw (%d bytes) differ from what the client sent (%d bytes)", len(raw), len(sent))
		}
		echoes, trailers := 0, 0
		for _, e := range r.exchanges {
			q := requests[e.Seq]
			if q == nil || e.Response == nil || q.Method != e.Method || q.Host != e.Host || int64(len(q.Body)) != e.ReqBytes ||
				int64(len(e.Response.Body)) != e.RespBytes {
				t.Errorf("exchange %v does not match its request %+v", e, q)
				continue
			}
			if e.Path == "/echo" {
				echoes++
				if !bytes.Equal(q.Body, e.Response.Body) {
					t.Errorf("echo of %d bytes came back as %d different bytes", len(q.Body), len(e.Response.Body))
				}
			}
			if q.Trailer != nil {
				trailers++
			}
			if e.Proto == "grpc" && (!q.GRPC || !slices.Contains(e.Response.Trailer, "grpc-status: 0")) {
				t.Errorf("grpc call %+v, response trailer %q", q, e.Response.Trailer)
			}
		}
		if echoes != echoed[i] || trailers != 1 {
			t.Errorf("%v: %d echoes with their requests, %d request trailers", rc.client, echoes, trailers)
		}
	}
}

func TestHTTPFlowRealTraffic(t *testing.T) {
	relay := startRelay(t, realServer(t))
	base := "http://" + relay.l.Addr().String()
	var log clientLog

	h1 := &http.Transport{Protocols: new(http.Protocols), MaxConnsPerHost: 1, ExpectContinueTimeout: 5 * time.Second}
	h1.Protocols.SetHTTP1(true)
	c1 := &http.Client{Transport: h1, Timeout: 10 * time.Second}
	big := bytes.Repeat([]byte("0123456789"), 1000)
	log.do(t, c1, "HTTP/1.1", "GET", base+"/hello?name=x", nil, 0, nil)
	log.do(t, c1, "HTTP/1.1", "POST", base+"/echo", bytes.NewReader(big), int64(len(big)), nil)
	log.do(t, c1, "HTTP/1.1", "POST", base+"/echo", unsized{bytes.NewReader(big[:5000])}, 5000, nil)
	log.do(t, c1, "HTTP/1.1", "PUT", base+"/echo", bytes.NewReader(big[:3000]), 3000, http.Header{"Expect": {"100-continue"}})
	log.doReq(t, c1, "HTTP/1.1", withTrailer(t, base+"/echo", big[:700]), 700)
	log.do(t, c1, "HTTP/1.1", "GET", base+"/stream", nil, 0, nil)
	log.do(t, c1, "HTTP/1.1", "HEAD", base+"/hello", nil, 0, nil)
	log.do(t, c1, "HTTP/1.1", "GET", base+"/missing", nil, 0, nil)
	log.do(t, c1, "HTTP/1.1", "GET", base+"/empty", nil, 0, nil)
	h1.CloseIdleConnections()

	h2 := &http.Transport{Protocols: new(http.Protocols)}
	h2.Protocols.SetUnencryptedHTTP2(true)
	c2 := &http.Client{Transport: h2, Timeout: 10 * time.Second}
	log.do(t, c2, "h2c", "GET", base+"/hello?name=y", nil, 0, nil)
	huge := bytes.Repeat(big, 5)
	log.do(t, c2, "h2c", "POST", base+"/echo", bytes.NewReader(huge), int64(len(huge)), nil)
	log.doReq(t, c2, "h2c", withTrailer(t, base+"/echo", big[:900]), 900)
	var wg sync.WaitGroup
	for _, i := range []string{"1", "2"} {
		wg.Go(func() { log.do(t, c2, "h2c", "GET", base+"/pair?i="+i, nil, 0, nil) })
	}
	wg.Wait()
	msg := []byte{0, 0, 0, 0, 5, 'w', 'o', 'r', 'l', 'd'}
	log.do(t, c2, "grpc", "POST", base+"/pkg.Greeter/SayHello", bytes.NewReader(msg), int64(len(msg)),
		http.Header{"Content-Type": {"application/grpc"}, "Te": {"trailers"}})
	log.do(t, c2, "h2c", "HEAD", base+"/hello", nil, 0, nil)
	h2.CloseIdleConnections()
	if t.Failed() {
		t.FailNow()
	}

	conns := relay.waitClosed(t)
	if len(conns) != 2 {
		t.Fatalf("%d connections relayed, want one per client", len(conns))
	}
	first, last := conns[0].opened, time.Now()
	for seed := range uint64(5) {
		rng := rand.New(rand.NewPCG(seed, 42))
		var r httpRecorder
		a := NewAssembler(HTTPStreams(r.options()), AssemblerOptions{})
		// The same traffic again with requests and responses kept: the exchanges must not change.
		recs := flowRecorders{}
		full := NewAssembler(HTTPStreams(recs.options()), AssemblerOptions{})
		for _, fr := range replayFrames(t, conns, rng, seed%2 == 1) {
			ci := gopacket.CaptureInfo{Timestamp: fr.at, CaptureLength: len(fr.data), Length: len(fr.data)}
			a.Feed(fr.data, ci)
			full.Feed(fr.data, ci)
		}
		a.Close()
		full.Close()
		checkRealRequests(t, conns, recs, [2]int{4, 2})
		var fullKeys []string
		for _, rc := range conns {
			fullKeys = append(fullKeys, recs[rc.client].keys()...)
		}
		got := r.keys()
		if !slices.Equal(fullKeys, got) {
			t.Errorf("seed %d: keeping requests changed the exchanges:\n    %s\nwithout:\n    %s", seed,
				strings.Join(fullKeys, "\n    "), strings.Join(got, "\n    "))
		}
		want := slices.Clone(log.keys)
		sort.Strings(got)
		sort.Strings(want)
		if !slices.Equal(got, want) {
			t.Fatalf("seed %d: decoded\n    %s\nclient did\n    %s", seed, strings.Join(got, "\n    "), strings.Join(want, "\n    "))
		}
		if len(r.connections) != 0 {
			t.Errorf("connection summaries for HTTP connections: %+v", r.connections)
		}
		for _, e := range r.exchanges {
			if e.Start.Before(first) || e.Latency <= 0 || e.Start.Add(e.Latency).After(last) {
				t.Errorf("times of %v: not within the test's run", e)
			}
			if e.Server != conns[0].server || (e.Client != conns[0].client && e.Client != conns[1].client) {
				t.Errorf("addresses of %v", e)
			}
		}
	}
}

type timedFrame struct {
	data       []byte
	at         time.Time
	fromClient bool
}

// replayFrames turns the relayed connections into TCP frames with random segment sizes,
// in the order of their capture times; reorder swaps some neighbouring segments of one
// direction (across directions it would break causality, which no capture shows).
func replayFrames(t *testing.T, conns []*relayConn, rng *rand.Rand, reorder bool) []timedFrame {
	var out []timedFrame
	for _, rc := range conns {
		c := &tcpScript{client: rc.client, server: rc.server, cseq: rng.Uint32(), sseq: rng.Uint32()}
		at := rc.opened
		for _, s := range c.handshake() {
			out = append(out, timedFrame{data: segFrame(t, s), at: at})
		}
		var segs []timedFrame
		for _, ch := range rc.chunks {
			if ch.data == nil {
				segs = append(segs, timedFrame{segFrame(t, c.fin(ch.fromClient)), ch.at, ch.fromClient})
				continue
			}
			for _, s := range c.send(ch.fromClient, string(ch.data), 1+rng.IntN(3000)) {
				segs = append(segs, timedFrame{segFrame(t, s), ch.at, ch.fromClient})
			}
		}
		if reorder {
			for i := 0; i+1 < len(segs); i++ {
				if rng.IntN(8) == 0 && segs[i].fromClient == segs[i+1].fromClient {
					segs[i], segs[i+1] = segs[i+1], segs[i]
					segs[i].at, segs[i+1].at = segs[i+1].at, segs[i].at // captured in this order
					i++
				}
			}
		}
		out = append(out, segs...)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].at.Before(out[j].at) })
	return out
}
