package capture

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/internal/httpsyntax"
)

type h1state uint8

const (
	h1Head       h1state = iota
	h1Body               // left bytes of a Content-Length body
	h1ChunkSize          // a chunk-size line
	h1ChunkData          // left bytes of a chunk
	h1ChunkEnd           // the CRLF after a chunk
	h1Trailer            // trailer lines after the last chunk
	h1UntilClose         // a response body that ends with the connection
	h1Hunt               // after a loss of sync: looking for a request or status line
	h1Paused             // after a request that may switch protocols, until its response
	h1Tunnel             // after a protocol switch: only counted
)

// h1half is one direction of an HTTP/1 connection.
type h1half struct {
	st   h1state
	left int64
	ex   *h1exchange // the message in progress (for a response, the exchange it belongs to)
	// lineStart says that the pending bytes start at a line boundary (right after a gap),
	// where hunting may find a message.
	lineStart bool
}

type h1exchange struct {
	Exchange
	// barrier stands for requests lost in a gap, none or many. low and high bound their
	// capture times: the last byte before the gap and the first after it.
	barrier   bool
	low, high time.Time
	head      bool   // a HEAD request: the response has no body
	connect   bool   // a CONNECT request: a 2xx response starts a tunnel
	upgrade   string // the Upgrade header of a request asking for one
	reqDone   bool
	respDone  bool
	respEnd   time.Time
	responded bool // a response was paired with it
	emitted   bool
	rq        *reqState // the request being kept for OnRequest, until it is reported
	rs        *kept     // the response being kept for KeepResponses
}

type h1conn struct {
	f     *HTTPFlow
	half  [2]h1half
	queue []*h1exchange // requests waiting for their response, in order, and barriers
	// timed is set after a loss of sync: responses pair by capture time, not by order.
	timed     bool
	pipelined bool // the client sent a request before the previous one was answered
	decoded   bool // a message parsed: the connection is HTTP
	// paused is the request the client side waits on (h1Paused): an upgrade or CONNECT.
	paused *h1exchange
}

func (c *h1conn) step(d Direction) bool {
	h := &c.half[d]
	b := &c.f.buf[d]
	p := b.bytes()
	switch h.st {
	case h1Hunt:
		return c.hunt(d, p)
	case h1Head:
		if len(p) == 0 {
			return false
		}
		if d == ClientToServer {
			return c.request(p)
		}
		return c.response(p)
	case h1Body, h1ChunkData:
		if len(p) == 0 {
			return false
		}
		n := int(min(int64(len(p)), h.left))
		c.body(d, int64(n), p[:n])
		h.left -= int64(n)
		c.take(d, n)
		if h.left == 0 {
			if h.st == h1Body {
				c.done(d, b.timeAt(-1))
			} else {
				h.st = h1ChunkEnd
			}
		}
		return true
	case h1ChunkSize:
		line, n, ok := c.line(d, p, 4096)
		if !ok {
			return n < 0
		}
		size, valid := httpsyntax.ParseChunkSize(line)
		if !valid {
			c.lose(d, b.timeAt(0))
			return true
		}
		c.take(d, n)
		if size == 0 {
			h.st = h1Trailer
		} else {
			h.st, h.left = h1ChunkData, size
		}
		return true
	case h1ChunkEnd:
		switch {
		case len(p) == 0, len(p) == 1 && p[0] == '\r':
			return false
		case p[0] == '\n':
			c.take(d, 1)
		case p[0] == '\r' && p[1] == '\n':
			c.take(d, 2)
		default:
			c.lose(d, b.timeAt(0))
			return true
		}
		h.st = h1ChunkSize
		return true
	case h1Trailer:
		line, n, ok := c.line(d, p, c.f.opts.MaxHeaderBytes)
		if !ok {
			return n < 0
		}
		t := b.timeAt(n - 1)
		c.trailer(d, line)
		c.take(d, n)
		if len(line) == 0 {
			c.done(d, t)
		}
		return true
	case h1UntilClose, h1Tunnel:
		if len(p) == 0 {
			return false
		}
		if h.st == h1UntilClose {
			c.body(d, int64(len(p)), p)
		}
		b.consume(len(p))
		return true
	case h1Paused:
		if b.len() > c.f.opts.MaxBuffer || c.f.ended[ServerToClient] {
			// No response decided the switch: read on as HTTP/1.
			h.st, c.paused = h1Head, nil
			return true
		}
		return false
	}
	return false
}

// line returns the line at the start of p without its line ending, and the bytes it takes.
// Without a whole line it returns ok false, and n -1 when the line is too long (the direction
// then lost sync).
func (c *h1conn) line(d Direction, p []byte, limit int) (line []byte, n int, ok bool) {
	i := bytes.IndexByte(p[:min(len(p), limit)], '\n')
	if i < 0 {
		if len(p) >= limit {
			c.lose(d, c.f.buf[d].timeAt(0))
			return nil, -1, false
		}
		return nil, 0, false
	}
	return bytes.TrimSuffix(p[:i], []byte("\r")), i + 1, true
}

// body counts n bytes of the body in progress in d; data holds them, nil when they were
// lost in a gap.
func (c *h1conn) body(d Direction, n int64, data []byte) {
	ex := c.half[d].ex
	if ex == nil {
		return
	}
	if d == ClientToServer {
		ex.ReqBytes += n
		if ex.rq != nil {
			c.f.addBody(&ex.rq.kept, data)
		}
	} else {
		ex.RespBytes += n
		if ex.rs != nil {
			c.f.addBody(ex.rs, data)
		}
	}
}

// trailer keeps a trailer line of the message in progress in d.
func (c *h1conn) trailer(d Direction, line []byte) {
	ex := c.half[d].ex
	switch {
	case ex == nil || len(line) == 0:
	case d == ClientToServer && ex.rq != nil:
		c.f.addLine(&ex.rq.kept, &ex.rq.trailer, line)
	case d == ServerToClient && ex.rs != nil:
		c.f.addLine(ex.rs, &ex.rs.trailer, line)
	}
}

// take consumes n bytes of the message in progress in d, which a kept request's Raw holds.
func (c *h1conn) take(d Direction, n int) {
	b := &c.f.buf[d]
	if ex := c.half[d].ex; d == ClientToServer && ex != nil && ex.rq != nil {
		c.f.addRaw(ex.rq, b.bytes()[:n])
	}
	b.consume(n)
}

// tellRequest reports the request of ex, which ended at end, once.
func (c *h1conn) tellRequest(ex *h1exchange, end time.Time, partial bool) {
	if ex.rq != nil {
		rq := ex.rq
		ex.rq = nil
		c.f.tellRequest(rq, end, partial)
	}
}

// decodedHTTP notes that a message parsed: the connection is HTTP.
func (c *h1conn) decodedHTTP() {
	c.decoded = true
	c.f.settle(ProtoHTTP1)
}

// request parses a request head at the start of p.
func (c *h1conn) request(p []byte) bool {
	f := c.f
	b := &f.buf[ClientToServer]
	n, err := httpsyntax.HeadLen(p, f.opts.MaxHeaderBytes)
	if errors.Is(err, httpsyntax.ErrIncomplete) {
		return false
	}
	var req h1head
	if err == nil {
		req, err = parseH1Head(p[:n], true)
	}
	if err != nil {
		if !c.decoded && !f.lost[ClientToServer] {
			f.opaque() // the first bytes are not HTTP after all
			return false
		}
		c.malformed(ClientToServer)
		return true
	}
	c.decodedHTTP()
	ex := c.newRequest(&req, b.timeAt(0), p[:n])
	h := &c.half[ClientToServer]
	h.ex = ex
	h.lineStart = false
	c.take(ClientToServer, n)
	switch {
	case req.chunked:
		h.st = h1ChunkSize
	case req.te != "":
		// A coding the server cannot frame: it answers 400 and closes.
		c.lose(ClientToServer, b.timeAt(0))
	case req.length > 0:
		h.st, h.left = h1Body, req.length
	default:
		c.done(ClientToServer, b.timeAt(-1))
	}
	return true
}

// newRequest queues the exchange of a request that started at ts; head holds its fields.
func (c *h1conn) newRequest(req *h1head, ts time.Time, head []byte) *h1exchange {
	c.f.seq++
	ex := &h1exchange{Exchange: Exchange{Start: ts, Proto: req.proto, Method: req.method, Seq: c.f.seq}}
	ex.Path, ex.Host = h1PathAndHost(req.target, req.host)
	ex.rq = c.f.newReq(Request{
		Seq: ex.Seq, Start: ts, Proto: req.proto, Method: req.method, Target: req.target, Host: ex.Host,
	})
	if ex.rq != nil {
		c.f.h1Fields(&ex.rq.kept, head)
		if req.length > 0 {
			// Room for the whole body at once, as far as it is kept.
			size := int(min(req.length, int64(c.f.opts.MaxBody), 64<<10))
			ex.rq.body = make([]byte, 0, size)
			ex.rq.raw = make([]byte, 0, len(head)+size)
		}
	}
	ex.head = req.method == "HEAD"
	ex.connect = req.method == "CONNECT"
	if req.connUpgrade {
		ex.upgrade = req.upgrade
	}
	ex.low, ex.high = ts, ts
	for _, q := range c.queue {
		// Out of step, a request still in the queue may have had its response lost.
		if !q.barrier && !c.timed {
			c.pipelined = true
		}
	}
	c.queue = append(c.queue, ex)
	return ex
}

// response parses a response head at the start of p and pairs it with its request.
func (c *h1conn) response(p []byte) bool {
	f := c.f
	b := &f.buf[ServerToClient]
	n, err := httpsyntax.HeadLen(p, f.opts.MaxHeaderBytes)
	if errors.Is(err, httpsyntax.ErrIncomplete) {
		return false
	}
	var resp h1head
	if err == nil {
		resp, err = parseH1Head(p[:n], false)
	}
	if err != nil {
		c.malformed(ServerToClient)
		return true
	}
	c.decodedHTTP()
	ts := b.timeAt(0)
	h := &c.half[ServerToClient]
	if resp.status < 200 && resp.status != 101 {
		// 100 Continue, 103 Early Hints: interim, the final response follows.
		b.consume(n)
		h.lineStart = false
		return true
	}
	ex, ok := c.pair(ts)
	if !ok {
		if b.len() <= f.opts.MaxBuffer {
			return false // wait for the request
		}
		ex = c.orphan(ts, resp.proto)
	}
	h.lineStart = false
	h.ex = ex
	ex.Status = resp.status
	ex.responded = true
	if ex.rs = f.newResp(); ex.rs != nil {
		f.h1Fields(ex.rs, p[:n])
	}
	b.consume(n)
	if ex.Proto == "" {
		ex.Proto = resp.proto // a response to a request not captured
	}
	if c.paused == ex {
		// The response decides what the client sends next: HTTP/1 unless it switches.
		c.paused = nil
		if req := &c.half[ClientToServer]; req.st == h1Paused {
			req.st = h1Head
		}
	}
	switch {
	case resp.status == 101 && httpsyntax.HasElement(resp.upgrade, "h2c") && httpsyntax.HasElement(ex.upgrade, "h2c"):
		h.ex = nil
		if ex.rs != nil {
			f.release(ex.rs) // the response comes on stream 1
			ex.rs = nil
		}
		c.switchH2(ex)
		return true
	case resp.status == 101:
		c.done(ServerToClient, b.timeAt(-1))
		c.tunnel()
	case ex.connect && resp.status < 300:
		c.done(ServerToClient, b.timeAt(-1))
		c.tunnel()
	case ex.head || resp.status == 204 || resp.status == 304:
		c.done(ServerToClient, b.timeAt(-1))
	case resp.chunked:
		h.st = h1ChunkSize
	case resp.te != "" || resp.length < 0:
		h.st = h1UntilClose
	case resp.length > 0:
		h.st, h.left = h1Body, resp.length
	default:
		c.done(ServerToClient, b.timeAt(-1))
	}
	return true
}

// malformed gives up a head that does not parse. Its first line is skipped, so that
// hunting does not find the same head again.
func (c *h1conn) malformed(d Direction) {
	b := &c.f.buf[d]
	t := b.timeAt(0)
	p := b.bytes()
	i := bytes.IndexByte(p, '\n')
	if i < 0 {
		i = len(p) - 1
	}
	b.consume(i + 1)
	c.lose(d, t)
	c.half[d].lineStart = true
}

// pair finds the request a response that started at ts answers; ok false means wait for
// more client bytes.
func (c *h1conn) pair(ts time.Time) (*h1exchange, bool) {
	clientLive := !c.f.ended[ClientToServer] && c.half[ClientToServer].st != h1Tunnel
	if !c.timed {
		if len(c.queue) == 0 {
			if clientLive {
				return nil, false
			}
			return c.orphan(ts, ""), true
		}
		ex := c.queue[0]
		if !ts.Before(ex.Start) {
			c.queue = c.queue[1:]
			return ex, true
		}
		// A response before its request: the two directions do not line up after all.
		c.timed = true
	}
	// The latest request that started before the response is the one it answers when the
	// client does not pipeline: such a client sends nothing before the answer comes.
	idx := -1
	for i, q := range c.queue {
		if !q.high.After(ts) {
			idx = i
		}
	}
	if idx < 0 {
		if len(c.queue) == 0 && clientLive {
			return nil, false
		}
		return c.orphan(ts, ""), true
	}
	k := idx
	for k >= 0 && c.queue[k].barrier {
		k--
	}
	if k < 0 {
		// It answers a request lost in a gap, unless a request from before it is still
		// to come: the client side may lag behind, held back in reassembly.
		if clientLive && c.f.seen[ClientToServer].Before(ts) {
			return nil, false
		}
		// The barrier stays for the responses to the other lost requests.
		c.queue = c.queue[idx:]
		return c.orphan(ts, ""), true
	}
	for _, q := range c.queue[:k] {
		c.unanswered(q)
	}
	ex := c.queue[k]
	c.queue = c.queue[k+1:]
	// When requests lost in a gap may have started between this one and the response,
	// or the client pipelines, the pairing is a guess.
	for _, q := range c.queue {
		if q.barrier && !q.low.After(ts) {
			ex.Partial = true
		}
	}
	if c.pipelined {
		ex.Partial = true
	}
	c.resynced()
	return ex, true
}

// resynced returns to pairing by order once nothing is left over from a loss of sync.
func (c *h1conn) resynced() {
	if len(c.queue) == 0 && c.half[ClientToServer].st != h1Hunt && c.half[ServerToClient].st != h1Hunt {
		c.timed = false
	}
}

// orphan is the exchange of a response whose request was not captured.
func (c *h1conn) orphan(ts time.Time, proto string) *h1exchange {
	return &h1exchange{Exchange: Exchange{Start: ts, Proto: proto, Partial: true}, reqDone: true}
}

// unanswered finishes a request that gets no response.
func (c *h1conn) unanswered(q *h1exchange) {
	if q.barrier {
		return
	}
	q.Partial = true
	q.respDone = true
	c.emit(q)
}

// done finishes the message in progress in direction d, whose last byte came at t.
func (c *h1conn) done(d Direction, t time.Time) {
	h := &c.half[d]
	ex := h.ex
	h.ex = nil
	h.st = h1Head
	if ex == nil {
		return
	}
	if d == ClientToServer {
		ex.reqDone = true
		c.tellRequest(ex, t, false)
		if (ex.upgrade != "" || ex.connect) && !ex.responded {
			h.st, c.paused = h1Paused, ex // what follows depends on the response
		}
	} else {
		ex.respDone = true
		ex.respEnd = t
	}
	c.emit(ex)
}

// emit reports an exchange once both its messages are over.
func (c *h1conn) emit(ex *h1exchange) {
	if !ex.reqDone || !ex.respDone || ex.barrier || ex.emitted {
		return
	}
	ex.emitted = true
	if ex.responded && !ex.respEnd.IsZero() {
		ex.Latency = max(0, ex.respEnd.Sub(ex.Start))
	}
	if ex.Proto == "" {
		ex.Proto = "HTTP/1.1"
	}
	rs := ex.rs
	ex.rs = nil
	c.f.emit(&ex.Exchange, rs)
}

// lose gives up the message in progress in d after a gap or garbage, and hunts for the
// next one. last is the capture time of the last byte before the loss.
func (c *h1conn) lose(d Direction, last time.Time) {
	h := &c.half[d]
	if ex := h.ex; ex != nil {
		ex.Partial = true
		h.ex = nil
		if d == ClientToServer {
			ex.reqDone = true
			c.tellRequest(ex, last, true)
		} else {
			ex.respDone = true
			ex.respEnd = last
		}
		c.emit(ex)
	}
	h.st = h1Hunt
	h.lineStart = false
	c.timed = true
	if c.paused != nil {
		c.paused = nil
		c.half[ClientToServer].st = h1Hunt
	}
	if d == ClientToServer {
		// Any number of requests may have been lost, in the bytes from last on; a gap
		// moves high to when bytes come again.
		c.queue = append(c.queue, &h1exchange{barrier: true, low: last, high: last})
	}
}

// gap handles a gap of n bytes (GapUnknown: of unknown size) in d at t.
func (c *h1conn) gap(d Direction, n int64, t time.Time) {
	h := &c.half[d]
	b := &c.f.buf[d]
	switch {
	case h.st == h1Tunnel:
		return
	case n >= 0 && b.len() == 0 && (h.st == h1Body || h.st == h1ChunkData) && n <= h.left:
		// Inside a body of known length: skip the hole and stay in step.
		c.body(d, n, nil)
		h.ex.Partial = true
		if rq := h.ex.rq; rq != nil {
			rq.req.Partial = true
			c.f.dropRaw(rq)
		}
		h.left -= n
		if h.left == 0 {
			if h.st == h1Body {
				c.done(d, t)
			} else {
				h.st = h1ChunkEnd
			}
		}
		return
	case n >= 0 && b.len() == 0 && h.st == h1UntilClose:
		c.body(d, n, nil)
		h.ex.Partial = true
		return
	}
	last := b.last
	if h.st == h1Head {
		c.salvage(d, b.bytes(), last)
	}
	b.reset()
	if h.st != h1Hunt || d == ClientToServer {
		c.lose(d, last)
	}
	// Whatever comes next starts right after the hole: it may be a message.
	h.lineStart = true
	if d == ClientToServer {
		c.queue[len(c.queue)-1].high = t
	}
}

// salvage reports what the complete lines of a head cut by a gap tell: the request or the
// status, as a partial exchange.
func (c *h1conn) salvage(d Direction, p []byte, last time.Time) {
	i := bytes.LastIndexByte(p, '\n')
	if i < 0 {
		return
	}
	h, err := parseH1Head(p[:i+1], d == ClientToServer)
	if err != nil {
		return
	}
	ts := c.f.buf[d].timeAt(0)
	c.decodedHTTP()
	if d == ClientToServer {
		ex := c.newRequest(&h, ts, p[:i+1])
		ex.Partial, ex.reqDone = true, true
		c.tellRequest(ex, last, true)
		return
	}
	if h.status < 200 && h.status != 101 {
		return
	}
	ex, ok := c.pair(ts)
	if !ok {
		ex = c.orphan(ts, h.proto)
	}
	ex.Status, ex.responded, ex.Partial = h.status, true, true
	ex.respDone, ex.respEnd = true, last
	if ex.rs = c.f.newResp(); ex.rs != nil {
		c.f.h1Fields(ex.rs, p[:i+1])
	}
	c.emit(ex)
}

// hunt looks for the start of a message after a loss of sync: a request line from the
// client, a status line from the server. A message may follow a body without a line break
// (when the framing was lost, the body's end is not known), so it is looked for anywhere.
func (c *h1conn) hunt(d Direction, p []byte) bool {
	h := &c.half[d]
	b := &c.f.buf[d]
	var start int
	if d == ClientToServer {
		start = findH1Request(p, h.lineStart)
	} else {
		start = findH1Status(p)
	}
	if start >= 0 {
		b.consume(start)
		h.st, h.lineStart = h1Head, false
		c.resynced()
		return true
	}
	// Every line before the last line break was searched; keep the unfinished one, unless
	// it is longer than any request or status line worth waiting for.
	keep := len(p)
	if i := bytes.LastIndexByte(p, '\n'); i >= 0 {
		keep = len(p) - i - 1
		h.lineStart = true
	}
	if keep > maxH1Line {
		keep, h.lineStart = maxH1Line, false
	}
	b.consume(len(p) - keep)
	return false
}

// maxH1Line bounds the request or status line hunting waits for.
const maxH1Line = 8 << 10

// findH1Request returns where the first whole request line in p starts, or -1. A line
// start (lineStart: p starts at one) may begin with any method; elsewhere only a known
// method counts, so that the end of a body glued to the next request is told apart.
func findH1Request(p []byte, lineStart bool) int {
	for off := 0; ; {
		i := bytes.Index(p[off:], []byte(" HTTP/1."))
		if i < 0 {
			return -1
		}
		i += off
		off = i + 1
		v := i + len(" HTTP/1.")
		switch {
		case v+1 >= len(p):
			return -1 // the line is not complete yet
		case !httpsyntax.IsVersion(string(p[i+1 : v+1])):
			continue
		case p[v+1] != '\n' && (p[v+1] != '\r' || v+2 >= len(p) || p[v+2] != '\n'):
			if p[v+1] == '\r' && v+2 >= len(p) {
				return -1
			}
			continue
		}
		sp := bytes.LastIndexByte(p[:i], ' ')
		if sp < 0 || sp == i-1 || bytes.ContainsFunc(p[sp+1:i], func(r rune) bool { return r < '!' || r == 0x7f }) {
			continue
		}
		run := sp
		for run > 0 && (p[run-1] >= 'A' && p[run-1] <= 'Z' || p[run-1] == '-' || p[run-1] == '_') {
			run--
		}
		if run < sp && ((run == 0 && lineStart) || (run > 0 && p[run-1] == '\n')) {
			return run
		}
		if m := httpsyntax.MethodSuffixLen(p[run:sp]); m > 0 {
			return sp - m
		}
	}
}

// findH1Status returns where the first whole status line in p starts, or -1.
func findH1Status(p []byte) int {
	for off := 0; ; {
		i := bytes.Index(p[off:], []byte("HTTP/1."))
		if i < 0 {
			return -1
		}
		i += off
		off = i + 1
		n := bytes.IndexByte(p[i:], '\n')
		if n < 0 {
			return -1
		}
		if _, _, _, ok := httpsyntax.ParseStatusLine(string(bytes.TrimSuffix(p[i:i+n], []byte("\r")))); ok {
			return i
		}
	}
}

// end handles the end of direction d at t.
func (c *h1conn) end(d Direction, t time.Time) {
	h := &c.half[d]
	switch {
	case h.st == h1UntilClose && !c.f.cut:
		c.done(d, t)
	case h.ex != nil:
		// Cut short in the middle of a message.
		c.lose(d, t)
	}
}

// finish emits every exchange still open when the connection is over.
func (c *h1conn) finish() {
	for _, d := range []Direction{ClientToServer, ServerToClient} {
		if c.half[d].ex != nil {
			c.lose(d, c.f.last)
		}
	}
	for _, q := range c.queue {
		if q.barrier {
			continue
		}
		// A request nobody answered: the capture may have stopped before the answer came.
		q.Partial = q.Partial || c.f.cut
		q.respDone = true
		c.emit(q)
	}
	c.queue = nil
}

// tunnel stops decoding after a protocol switch; the rest of the connection is counted.
func (c *h1conn) tunnel() {
	c.half[ClientToServer].st = h1Tunnel
	c.half[ServerToClient].st = h1Tunnel
	c.f.summarize = true
}

// switchH2 continues after "101 Switching Protocols" to h2c: the request becomes stream 1.
func (c *h1conn) switchH2(ex *h1exchange) {
	f := c.f
	for _, q := range c.queue {
		c.unanswered(q)
	}
	if req := c.half[ClientToServer].ex; req != nil {
		// The client switches mid-request: its body is now read as HTTP/2.
		c.tellRequest(req, f.buf[ClientToServer].timeAt(-1), true)
	}
	f.mode = modeH2
	f.h2 = newH2conn(f)
	s := &h2stream{Exchange: ex.Exchange, reqDone: true}
	s.Proto, s.Status, s.StreamID = "h2c", 0, 1
	f.h2.streams[1] = s
	f.h2.maxStream = 1
	f.h1 = nil
}

// h1head is a parsed HTTP/1 head.
type h1head struct {
	method, target, proto string
	status                int
	host                  string
	length                int64 // -1 when not given
	te                    string
	chunked               bool
	connUpgrade           bool
	upgrade               string
}

// parseH1Head parses a request or response head. Its lines are read as the agent's proxy
// reads them (httpsyntax); it is lenient only where the message is still clear (folded lines,
// Content-Length with Transfer-Encoding, where the latter wins), since it watches traffic
// rather than relaying it.
func parseH1Head(b []byte, request bool) (h1head, error) {
	s := string(b)
	line, rest := httpsyntax.CutLine(s)
	h := h1head{length: -1}
	var ok bool
	if request {
		if h.method, h.target, h.proto, ok = httpsyntax.ParseRequestLine(line); !ok || len(h.method) > maxH1Method {
			return h, fmt.Errorf("request line %q: %w", h1Clip(line), httpsyntax.ErrMalformed)
		}
	} else {
		if h.proto, h.status, _, ok = httpsyntax.ParseStatusLine(line); !ok {
			return h, fmt.Errorf("status line %q: %w", h1Clip(line), httpsyntax.ErrMalformed)
		}
	}
	for rest != "" {
		var l string
		l, rest = httpsyntax.CutLine(rest)
		if l == "" {
			break
		}
		if l[0] == ' ' || l[0] == '\t' {
			continue // an obsolete folded continuation of the previous field
		}
		name, value, ok := httpsyntax.CutField(l)
		if !ok {
			return h, fmt.Errorf("header line %q: %w", h1Clip(l), httpsyntax.ErrMalformed)
		}
		switch {
		case httpsyntax.EqualFold(name, "Content-Length"):
			n, ok := httpsyntax.ParseContentLength(value)
			if !ok || (h.length >= 0 && h.length != n) {
				return h, fmt.Errorf("content-length %q: %w", h1Clip(value), httpsyntax.ErrMalformed)
			}
			h.length = n
		case httpsyntax.EqualFold(name, "Transfer-Encoding"):
			h.te = httpsyntax.JoinList(h.te, value)
		case httpsyntax.EqualFold(name, "Host"):
			if h.host == "" {
				h.host = value
			}
		case httpsyntax.EqualFold(name, "Connection"):
			h.connUpgrade = h.connUpgrade || httpsyntax.HasElement(value, "upgrade")
		case httpsyntax.EqualFold(name, "Upgrade"):
			h.upgrade = httpsyntax.JoinList(h.upgrade, value)
		}
	}
	if h.te != "" {
		// RFC 9112 6.3: Transfer-Encoding overrides Content-Length; a body whose last coding
		// is not chunked runs to the close (responses) or cannot be framed (requests).
		h.chunked = httpsyntax.EqualFold(httpsyntax.LastElement(h.te), "chunked")
		h.length = -1
		if h.chunked {
			h.te = ""
		}
	}
	return h, nil
}

// maxH1Method bounds the method of a request line: any token is a method, but detect must give up
// on a run of token bytes without a space at some point, and a request line found later must not
// be one that detect would not have taken at the start of the connection.
const maxH1Method = 32

// h1PathAndHost turns a request target into the path with its query, taking the host from an
// absolute-form or authority-form target when the request has no Host field.
func h1PathAndHost(target, host string) (string, string) {
	path, authority := httpsyntax.SplitTarget(target)
	if host == "" {
		host = authority
	}
	return path, host
}

// h1Clip keeps error messages about hostile input short.
func h1Clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
