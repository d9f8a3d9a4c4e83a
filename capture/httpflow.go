package capture

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Exchange is one HTTP request and its response, as seen on the wire.
type Exchange struct {
	// Start is the capture time of the request's first byte.
	Start          time.Time
	Client, Server netip.AddrPort
	// Proto is "HTTP/1.1" or "HTTP/1.0" (the request's version), "h2c", or "grpc" for HTTP/2
	// with a gRPC content type.
	Proto string
	// Method, Path (with the query) and Host are empty when the request was not captured.
	Method, Path, Host string
	// Status is the final status code; 0 when no response was seen.
	Status int
	// GRPCStatus is the grpc-status of a gRPC call, empty when none was seen.
	GRPCStatus string
	// Latency runs from the request's first byte to the response's last one.
	Latency time.Duration
	// ReqBytes and RespBytes are the body sizes: decoded chunked bodies and HTTP/2 DATA
	// without padding. Bytes lost in a gap inside a body of known length count.
	ReqBytes, RespBytes int64
	// Partial says that the exchange was not seen whole, so its fields may be incomplete: a
	// gap hit it, the capture started or stopped inside it, a message in it was cut short,
	// or which request a response answers had to be inferred after a gap. An exchange the
	// peers themselves left unfinished (a request the server closed the connection on, a
	// reset stream) is not partial: it has Status 0 or its response is short.
	Partial bool
	// Seq is the Request.Seq of the request answered, to pair the two; 0 when the request
	// was not captured. It is set whether or not requests are reported.
	Seq uint64
	// StreamID is the HTTP/2 stream, 0 for HTTP/1.
	StreamID uint32
	// Response is the response in full with HTTPOptions.KeepResponses; nil without it, and
	// when no response was seen.
	Response *Response
}

func (e Exchange) String() string {
	s := fmt.Sprintf("%s %s %s %s %s%s %d %s req=%d resp=%d",
		e.Start.Format("15:04:05.000000"), e.Client, e.Proto, e.Method, e.Host, e.Path, e.Status, e.Latency, e.ReqBytes, e.RespBytes)
	if e.GRPCStatus != "" {
		s += " grpc-status=" + e.GRPCStatus
	}
	if e.Partial {
		s += " partial"
	}
	return s
}

// Connection summarizes a TCP connection whose bytes were not decoded as HTTP: another
// protocol, a tunnel after an upgrade or CONNECT, or HTTP the decoder gave up on after a gap.
type Connection struct {
	Client, Server netip.AddrPort
	// Start is the capture time of the first packet; Duration runs to the last one seen.
	Start    time.Time
	Duration time.Duration
	// BytesIn is what the client sent to the server, BytesOut what the server sent back;
	// both count captured bytes only.
	BytesIn, BytesOut int64
	// Gaps counts the holes in the capture, including the start of a connection that was
	// already open when the capture began.
	Gaps int
}

// HTTPOptions configure HTTP decoding. The callbacks run on the goroutine that feeds the
// decoder (for an Assembler's handlers, the one calling Feed, Flush or Close, with the
// Assembler's lock held); the calls for one connection never overlap.
type HTTPOptions struct {
	// OnExchange is called for each request/response pair when it completes, and for every
	// request still open when its connection ends.
	OnExchange func(Exchange)
	// OnConnection is called at the end of a connection that was not (all) HTTP.
	OnConnection func(Connection)
	// OnRequest is called for each client request as soon as it is complete (head and whole
	// body), in the order the requests complete on the connection, and always before the
	// OnExchange with its Seq. A request the decoder gives up on (a gap, the end of the
	// capture or of the connection) is reported then, marked Partial. Requests lost whole in
	// a gap, HTTP/1 bytes after a protocol switch (WebSocket, CONNECT), and HTTP/2 streams
	// past 1024 open at once are not reported. Setting it makes the decoder keep each
	// request's fields, body and raw bytes until then.
	OnRequest func(*Request)
	// KeepResponses fills Exchange.Response: each response's fields and body are kept until
	// its exchange is reported.
	KeepResponses bool
	// OnProtocol is called once per connection when the decoder settles what the client
	// speaks: ProtoHTTP1 when the first HTTP/1 message parses, ProtoH2C at the HTTP/2 client
	// preface, ProtoOpaque when the first bytes are not HTTP (or, at the latest, when the
	// connection ends undecided). It comes before the connection's first OnRequest and
	// OnExchange, by the time the client sent MaxHeaderBytes (unless the capture missed the
	// connection's start: HTTP/1 is then settled by the first message found after the gap).
	// A later change (HTTP/2 that can no longer be followed, an upgrade) is not reported.
	OnProtocol func(f Flow, proto string)
	// MaxHeaderBytes bounds an HTTP/1 head or an HTTP/2 header block; default 64 KiB.
	// Bigger ones are treated as lost.
	MaxHeaderBytes int
	// MaxBuffer bounds the bytes of one direction held back while the other catches up (a
	// response captured before its request was delivered); default 256 KiB.
	MaxBuffer int
	// MaxBody bounds the body kept of each request (OnRequest) and response
	// (KeepResponses); default 4 MiB. Beyond it the message is marked Truncated. One
	// connection keeps at most 4×(MaxBody+MaxHeaderBytes) of fields and bodies at once
	// (concurrent HTTP/2 streams), plus the raw bytes of the HTTP/1 request in progress
	// (MaxHeaderBytes+2×MaxBody); past it, what comes next is truncated too.
	MaxBody int
}

func (o HTTPOptions) withDefaults() HTTPOptions {
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = 64 << 10
	}
	if o.MaxBuffer <= 0 {
		o.MaxBuffer = 256 << 10
	}
	if o.MaxBody <= 0 {
		o.MaxBody = 4 << 20
	}
	return o
}

// HTTPStreams is a StreamFactory that decodes every connection with NewHTTPFlow.
func HTTPStreams(opts HTTPOptions) StreamFactory {
	return func(f Flow) StreamHandler { return NewHTTPFlow(f, opts) }
}

type flowMode uint8

const (
	modeDetect flowMode = iota // no client bytes yet, or too few to tell
	modeHTTP1
	modeH2
	modeOpaque // not HTTP, tunneled, or given up on: only counted
)

// HTTPFlow decodes the HTTP in one connection's byte streams: HTTP/1.x with keep-alive and
// pipelining, and h2c with prior knowledge or upgrade. It is a StreamHandler; feed it by hand
// (Data, Gap, End) to decode recorded streams. Connections that turn out not to be HTTP are
// summarized as one Connection. Memory per connection is bounded by the options: bodies are
// counted as they pass, and only kept for OnRequest and KeepResponses, up to MaxBody.
//
// After a gap an HTTP/1 direction resynchronizes at the next request or status line; until
// requests and responses line up again, a response is paired with the latest request that
// started before it, which holds for clients that do not pipeline, and exchanges where that
// is not certain are marked Partial. HTTP/2 cannot resume after a gap outside a DATA frame
// (the header compression state is lost): its open streams are emitted as partial and the
// connection is summarized.
type HTTPFlow struct {
	flow  Flow
	opts  HTTPOptions
	mode  flowMode
	buf   [2]dirBuf
	bytes [2]int64
	gaps  int
	ended [2]bool
	// lost marks a direction with a gap before the mode was decided.
	lost [2]bool
	// cut is set when a direction ended because the capture stopped following it (idle
	// timeout, flush), not because the peers closed it.
	cut  bool
	last time.Time
	// seen is the capture time of the latest bytes (or gap) of each direction.
	seen      [2]time.Time
	exchanges int
	summarize bool // emit a Connection at the end even though exchanges were decoded
	finished  bool
	stuck     bool   // process ran out of its budget (a bug; the fuzz test looks)
	seq       uint64 // the Seq of the latest request
	held      int    // bytes of fields and bodies kept (see maxHeld)
	settled   bool   // OnProtocol was called

	h1 *h1conn
	h2 *h2conn
}

// NewHTTPFlow returns a decoder for one connection.
func NewHTTPFlow(f Flow, opts HTTPOptions) *HTTPFlow {
	return &HTTPFlow{flow: f, opts: opts.withDefaults(), last: f.Start}
}

func (f *HTTPFlow) touch(t time.Time) {
	if t.After(f.last) {
		f.last = t
	}
}

func (f *HTTPFlow) see(dir Direction, t time.Time) {
	if t.After(f.seen[dir]) {
		f.seen[dir] = t
	}
}

// Data implements StreamHandler.
func (f *HTTPFlow) Data(dir Direction, data []byte, t time.Time) {
	if f.finished || f.ended[dir] || dir > ServerToClient {
		return
	}
	f.touch(t)
	f.see(dir, t)
	f.bytes[dir] += int64(len(data))
	if f.mode == modeOpaque || len(data) == 0 {
		return
	}
	f.buf[dir].add(data, t)
	f.process()
	f.buf[dir].settle()
}

// Gap implements StreamHandler.
func (f *HTTPFlow) Gap(dir Direction, missing int, t time.Time) {
	if f.finished || f.ended[dir] || dir > ServerToClient {
		return
	}
	f.touch(t)
	f.see(dir, t)
	f.gaps++
	switch f.mode {
	case modeDetect:
		f.buf[dir].reset()
		f.lost[dir] = true
		if dir == ClientToServer {
			// The client's first bytes are gone: only HTTP/1 can be picked up again.
			f.startHTTP1()
			f.h1.gap(dir, int64(missing), t)
		}
	case modeHTTP1:
		f.h1.gap(dir, int64(missing), t)
	case modeH2:
		f.h2.gap(dir, int64(missing))
	}
	f.process()
}

// End implements StreamHandler.
func (f *HTTPFlow) End(dir Direction, why EndReason, t time.Time) {
	if f.finished || f.ended[dir] || dir > ServerToClient {
		return
	}
	f.touch(t)
	f.ended[dir] = true
	if why == EndIdle || why == EndFlush {
		f.cut = true
	}
	f.process()
	if f.mode == modeHTTP1 {
		f.h1.end(dir, t)
		f.process()
	}
	if f.ended[ClientToServer] && f.ended[ServerToClient] {
		f.finish()
	}
}

// finish emits what is left once both directions ended.
func (f *HTTPFlow) finish() {
	f.finished = true
	switch f.mode {
	case modeHTTP1:
		f.h1.finish()
	case modeH2:
		f.h2.finish()
	}
	f.settle(ProtoOpaque)
	if (f.exchanges == 0 || f.summarize) && f.opts.OnConnection != nil {
		f.opts.OnConnection(Connection{
			Client: f.flow.Client, Server: f.flow.Server,
			Start: f.flow.Start, Duration: max(0, f.last.Sub(f.flow.Start)),
			BytesIn: f.bytes[ClientToServer], BytesOut: f.bytes[ServerToClient],
			Gaps: f.gaps,
		})
	}
	f.buf[0].reset()
	f.buf[1].reset()
	f.h1, f.h2 = nil, nil
}

// emit reports an exchange with its kept response, if any.
func (f *HTTPFlow) emit(e *Exchange, resp *kept) {
	f.exchanges++
	e.Client, e.Server = f.flow.Client, f.flow.Server
	e.Response = f.response(resp)
	if f.opts.OnExchange != nil {
		f.opts.OnExchange(*e)
	}
}

// settle reports the protocol, the first time only.
func (f *HTTPFlow) settle(proto string) {
	if f.settled {
		return
	}
	f.settled = true
	if f.opts.OnProtocol != nil {
		f.opts.OnProtocol(f.flow, proto)
	}
}

// opaque stops decoding; the connection is only counted from now on and summarized.
func (f *HTTPFlow) opaque() {
	f.settle(ProtoOpaque)
	f.mode = modeOpaque
	f.summarize = true
	f.buf[0].reset()
	f.buf[1].reset()
}

func (f *HTTPFlow) startHTTP1() {
	f.mode = modeHTTP1
	f.h1 = &h1conn{f: f}
	if f.lost[ServerToClient] {
		// What the server sent after its gap is buffered from a line start on.
		h := &f.h1.half[ServerToClient]
		h.st, h.lineStart = h1Hunt, true
		f.h1.timed = true
	}
}

func (f *HTTPFlow) startH2() {
	f.settle(ProtoH2C)
	f.mode = modeH2
	f.h2 = newH2conn(f)
	if f.lost[ServerToClient] {
		f.h2.giveUp()
	}
}

// process decodes what the buffers hold, until neither direction can move.
func (f *HTTPFlow) process() {
	// Every round that reports progress consumes bytes or moves a state machine forward, a
	// bounded number of times per byte; the bound only guards against a bug turning into a
	// busy loop on hostile input.
	budget := 16*(f.buf[0].len()+f.buf[1].len()) + 64
	for ; budget > 0; budget-- {
		var progress bool
		switch f.mode {
		case modeDetect:
			progress = f.detect()
		case modeHTTP1:
			progress = f.h1.step(ClientToServer)
			if f.mode == modeHTTP1 { // a step may switch to h2c or stop decoding
				progress = f.h1.step(ServerToClient) || progress
			}
		case modeH2:
			progress = f.h2.step(ClientToServer)
			if f.mode == modeH2 {
				progress = f.h2.step(ServerToClient) || progress
			}
		default:
			return
		}
		if !progress {
			return
		}
	}
	f.stuck = true
	f.opaque()
}

// h2Preface is what an HTTP/2 client sends first.
const h2Preface = http2.ClientPreface

// detect decides the protocol from the client's first bytes.
func (f *HTTPFlow) detect() bool {
	b := f.buf[ClientToServer].bytes()
	if len(b) == 0 {
		if f.buf[ServerToClient].len() > f.opts.MaxBuffer {
			f.opaque() // a server that talks first and at length is not an HTTP server
			return false
		}
		return false
	}
	n := min(len(b), len(h2Preface))
	if string(b[:n]) == h2Preface[:n] {
		if n < len(h2Preface) {
			return false
		}
		f.startH2()
		return true
	}
	// A request line starts with a method token and a space.
	for i, c := range b {
		switch {
		case c == ' ' && i > 0:
			f.startHTTP1()
			return true
		case !isH1TokenChar(c) || i >= 32:
			f.opaque()
			return false
		}
	}
	return false
}

// dirBuf holds one direction's bytes not decoded yet, with their capture times. Bytes
// handed to Data are decoded in place when nothing is pending before them, and only what is
// left when the call returns (a partial head, a response waiting for its request) is copied:
// bodies stream through without a copy, and a buffer does not keep the size of the largest
// chunk it ever saw.
type dirBuf struct {
	store    []byte
	start    int  // store[start:] is pending
	borrowed bool // store is the caller's slice, valid until settle
	spare    []byte
	off      int64   // stream offset of store[start] (delivered bytes only)
	marks    []tmark // where the capture time changes, by offset
	last     time.Time
}

type tmark struct {
	off int64
	t   time.Time
}

func (d *dirBuf) bytes() []byte { return d.store[d.start:] }
func (d *dirBuf) len() int      { return len(d.store) - d.start }

func (d *dirBuf) add(p []byte, t time.Time) {
	end := d.off + int64(d.len())
	if n := len(d.marks); n == 0 || !d.marks[n-1].t.Equal(t) {
		d.marks = append(d.marks, tmark{off: end, t: t})
	}
	d.last = t
	if d.len() == 0 && !d.borrowed {
		d.spare = d.store[:0]
		d.store, d.start, d.borrowed = p, 0, true
		return
	}
	d.settle()
	if d.start > 0 && d.start >= len(d.store)/2 {
		// Move the pending bytes down rather than let the array grow.
		n := copy(d.store, d.store[d.start:])
		d.store, d.start = d.store[:n], 0
	}
	d.store = append(d.store, p...)
}

// settle copies what is pending out of a borrowed slice, before the caller reuses it.
func (d *dirBuf) settle() {
	if d.borrowed {
		pending := d.bytes()
		d.store, d.start, d.borrowed, d.spare = d.spare[:0], 0, false, nil
		d.store = append(d.store, pending...)
	}
	if d.len() == 0 && cap(d.store) > 16<<10 {
		d.store, d.start = nil, 0 // do not hold on to a buffer that grew for one big message
	}
}

// timeAt is the capture time of the pending byte at i.
func (d *dirBuf) timeAt(i int) time.Time {
	x := d.off + int64(i)
	j := sort.Search(len(d.marks), func(k int) bool { return d.marks[k].off > x }) - 1
	if j < 0 {
		return d.last
	}
	return d.marks[j].t
}

func (d *dirBuf) consume(n int) {
	d.start += n
	d.off += int64(n)
	if d.start >= len(d.store) {
		if d.borrowed {
			d.store, d.borrowed, d.spare = d.spare, false, nil
		}
		d.store, d.start = d.store[:0], 0
	}
	// Keep the marks from the one that covers the last consumed byte (timeAt(-1)) on.
	j := sort.Search(len(d.marks), func(k int) bool { return d.marks[k].off >= d.off }) - 1
	if j > 0 {
		d.marks = append(d.marks[:0], d.marks[j:]...)
	}
}

// reset drops the pending bytes; the stream offset moves on as if they were consumed.
func (d *dirBuf) reset() {
	d.consume(d.len())
	d.settle()
}

// ---- HTTP/1 ----

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
		size, valid := parseH1ChunkSize(line)
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
	n, err := h1HeadLen(p, f.opts.MaxHeaderBytes)
	if errors.Is(err, errH1Incomplete) {
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
	n, err := h1HeadLen(p, f.opts.MaxHeaderBytes)
	if errors.Is(err, errH1Incomplete) {
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
	case resp.status == 101 && h1HasToken(resp.upgrade, "h2c") && h1HasToken(ex.upgrade, "h2c"):
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
			rq.dropRaw()
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

// h1Methods are the methods a request line found in the middle of other bytes may start with.
var h1Methods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

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
		case p[v] != '0' && p[v] != '1':
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
		method := p[run:sp]
		for _, m := range h1Methods {
			if bytes.HasSuffix(method, []byte(m)) {
				return sp - len(m)
			}
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
		if isH1StatusLine(bytes.TrimSuffix(p[i:i+n], []byte("\r"))) {
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

var (
	errH1Incomplete = errors.New("incomplete http head")
	errH1Malformed  = errors.New("malformed http head")
)

// h1HeadLen returns the length of the head at the start of b, through its empty line.
func h1HeadLen(b []byte, limit int) (int, error) {
	i := 0
	for {
		j := bytes.IndexByte(b[i:min(len(b), limit)], '\n')
		if j < 0 {
			if len(b) >= limit {
				return 0, fmt.Errorf("head longer than %d bytes: %w", limit, errH1Malformed)
			}
			return 0, errH1Incomplete
		}
		end := i + j
		if end == i || (end == i+1 && b[i] == '\r') {
			if i == 0 {
				return 0, fmt.Errorf("head starts with an empty line: %w", errH1Malformed)
			}
			return end + 1, nil
		}
		i = end + 1
	}
}

// parseH1Head parses a request or response head. It is lenient where the message is still
// clear (folded lines, Content-Length with Transfer-Encoding, where the latter wins), since
// it watches traffic rather than relaying it.
func parseH1Head(b []byte, request bool) (h1head, error) {
	s := string(b)
	line, rest, _ := strings.Cut(s, "\n")
	line = strings.TrimSuffix(line, "\r")
	h := h1head{length: -1}
	if request {
		if !isH1RequestLine([]byte(line)) {
			return h, fmt.Errorf("request line %q: %w", h1Clip(line), errH1Malformed)
		}
		h.method, line, _ = strings.Cut(line, " ")
		h.target, h.proto, _ = strings.Cut(line, " ")
	} else {
		if !isH1StatusLine([]byte(line)) {
			return h, fmt.Errorf("status line %q: %w", h1Clip(line), errH1Malformed)
		}
		h.proto = line[:8]
		h.status = int(line[9]-'0')*100 + int(line[10]-'0')*10 + int(line[11]-'0')
	}
	for rest != "" {
		var l string
		l, rest, _ = strings.Cut(rest, "\n")
		l = strings.TrimSuffix(l, "\r")
		if l == "" {
			break
		}
		if l[0] == ' ' || l[0] == '\t' {
			continue // an obsolete folded continuation of the previous field
		}
		name, value, ok := strings.Cut(l, ":")
		if !ok || name == "" {
			return h, fmt.Errorf("header line %q: %w", h1Clip(l), errH1Malformed)
		}
		value = strings.Trim(value, " \t")
		switch {
		case strings.EqualFold(name, "Content-Length"):
			n, ok := parseH1Length(value)
			if !ok || (h.length >= 0 && h.length != n) {
				return h, fmt.Errorf("content-length %q: %w", h1Clip(value), errH1Malformed)
			}
			h.length = n
		case strings.EqualFold(name, "Transfer-Encoding"):
			h.te = h1JoinList(h.te, value)
		case strings.EqualFold(name, "Host"):
			if h.host == "" {
				h.host = value
			}
		case strings.EqualFold(name, "Connection"):
			h.connUpgrade = h.connUpgrade || h1HasToken(value, "upgrade")
		case strings.EqualFold(name, "Upgrade"):
			h.upgrade = h1JoinList(h.upgrade, value)
		}
	}
	if h.te != "" {
		// RFC 9112 6.3: Transfer-Encoding overrides Content-Length; a body whose last coding
		// is not chunked runs to the close (responses) or cannot be framed (requests).
		h.chunked = strings.EqualFold(h1LastToken(h.te), "chunked")
		h.length = -1
		if h.chunked {
			h.te = ""
		}
	}
	return h, nil
}

// h1PathAndHost turns a request target into the path with its query, taking the host from an
// absolute-form target when the request has no Host field.
func h1PathAndHost(target, host string) (string, string) {
	if target == "" || target[0] == '/' || target == "*" {
		return target, host
	}
	_, rest, ok := strings.Cut(target, "://")
	if !ok {
		// Authority form (CONNECT host:port).
		if host == "" {
			host = target
		}
		return target, host
	}
	authority, path := rest, "/"
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		authority, path = rest[:i], rest[i:]
		if path[0] == '?' {
			path = "/" + path
		}
	}
	if host == "" {
		host = authority
	}
	return path, host
}

// isH1RequestLine reports whether line (without its line ending) is an HTTP/1 request line.
func isH1RequestLine(line []byte) bool {
	method, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok || len(method) == 0 || len(method) > 32 {
		return false
	}
	for _, c := range method {
		if !isH1TokenChar(c) {
			return false
		}
	}
	target, proto, ok := bytes.Cut(rest, []byte(" "))
	if !ok || len(target) == 0 {
		return false
	}
	for _, c := range target {
		if c <= ' ' || c == 0x7f {
			return false
		}
	}
	return isH1Version(proto)
}

// isH1StatusLine reports whether line is an HTTP/1 status line: "HTTP/1.1 200 OK".
func isH1StatusLine(line []byte) bool {
	if len(line) < 12 || !isH1Version(line[:8]) || line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
		return false
	}
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return line[9] != '0'
}

func isH1Version(p []byte) bool {
	return len(p) == 8 && string(p[:7]) == "HTTP/1." && (p[7] == '0' || p[7] == '1')
}

func isH1Token(s string) bool {
	for i := range len(s) {
		if !isH1TokenChar(s[i]) {
			return false
		}
	}
	return s != ""
}

func isH1TokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func parseH1Length(s string) (int64, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	var n int64
	for i := range len(s) {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// parseH1ChunkSize parses a chunk-size line, ignoring chunk extensions.
func parseH1ChunkSize(line []byte) (int64, bool) {
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	line = bytes.Trim(line, " \t")
	if len(line) == 0 || len(line) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range line {
		var v byte
		switch {
		case c >= '0' && c <= '9':
			v = c - '0'
		case c >= 'a' && c <= 'f':
			v = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			v = c - 'A' + 10
		default:
			return 0, false
		}
		n = n<<4 | int64(v)
	}
	return n, true
}

func h1JoinList(a, b string) string {
	if a == "" {
		return b
	}
	return a + ", " + b
}

func h1LastToken(list string) string {
	last := ""
	for t := range strings.SplitSeq(list, ",") {
		if t = strings.Trim(t, " \t"); t != "" {
			last = t
		}
	}
	return last
}

func h1HasToken(list, token string) bool {
	for t := range strings.SplitSeq(list, ",") {
		if strings.EqualFold(strings.Trim(t, " \t"), token) {
			return true
		}
	}
	return false
}

// h1Clip keeps error messages about hostile input short.
func h1Clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// ---- HTTP/2 ----

// h2MaxStreams bounds the streams tracked per connection; the headers of further ones are
// still decoded, to keep the compression state, but they are not reported.
const h2MaxStreams = 1024

type h2stream struct {
	Exchange
	reqDone, respDone bool
	gotResp           bool // the final response headers came
	respEnd           time.Time
	rq                *reqState // the request being kept for OnRequest, until it is reported
	rs                *kept     // the response being kept for KeepResponses
}

// h2skip is a frame being skipped as it streams by: DATA, whose size is all that matters,
// and the frames that do not matter at all.
type h2skip struct {
	stream          uint32
	body, pad       int64 // bytes of body and of padding still to come
	data            bool  // DATA: the body counts
	endStream       bool
	active, partial bool
}

// h2block is a header block being decoded.
type h2block struct {
	stream    uint32
	endStream bool
	push      bool
	size      int // compressed
	decoded   int // decompressed, as HTTP/2 counts a header list (RFC 9113 6.5.2)
	start     time.Time
	fields    []hpack.HeaderField
}

type h2conn struct {
	f       *HTTPFlow
	preface bool // the client preface is still to come
	rd      [2]*h2FrameReader
	fr      [2]*http2.Framer
	dec     [2]*hpack.Decoder
	block   [2]h2block
	skip    [2]h2skip
	streams map[uint32]*h2stream
	// maxStream is the highest stream the client opened: a header block on a lower one
	// that is not open (trailers after a reset) starts nothing.
	maxStream uint32
}

// h2FrameReader hands the Framer one buffered frame at a time.
type h2FrameReader struct{ p []byte }

func (r *h2FrameReader) Read(b []byte) (int, error) {
	if len(r.p) == 0 {
		return 0, errH1Incomplete
	}
	n := copy(b, r.p)
	r.p = r.p[n:]
	return n, nil
}

func newH2conn(f *HTTPFlow) *h2conn {
	c := &h2conn{f: f, preface: true, streams: map[uint32]*h2stream{}}
	for _, d := range []Direction{ClientToServer, ServerToClient} {
		c.rd[d] = &h2FrameReader{}
		c.fr[d] = http2.NewFramer(nil, c.rd[d])
		// Frames are bounded by the buffer limit below, not by the peer's settings.
		c.fr[d].SetMaxReadFrameSize(1<<24 - 1)
		blk := &c.block[d]
		limit := 4 * f.opts.MaxHeaderBytes
		c.dec[d] = hpack.NewDecoder(4096, func(hf hpack.HeaderField) {
			// References to the dynamic table expand a few bytes into many: bound what a
			// block decodes to, not only its size on the wire.
			blk.decoded += len(hf.Name) + len(hf.Value) + 32
			if blk.decoded <= limit {
				blk.fields = append(blk.fields, hf)
			}
		})
		c.dec[d].SetMaxStringLength(f.opts.MaxHeaderBytes)
	}
	return c
}

func (c *h2conn) step(d Direction) bool {
	b := &c.f.buf[d]
	p := b.bytes()
	if d == ClientToServer && c.preface {
		if len(p) < len(h2Preface) {
			return false
		}
		if string(p[:len(h2Preface)]) != h2Preface {
			c.giveUp()
			return false
		}
		b.consume(len(h2Preface))
		c.preface = false
		return true
	}
	if sk := &c.skip[d]; sk.active {
		if len(p) == 0 {
			return false
		}
		n := min(int64(len(p)), sk.body+sk.pad)
		c.skipped(d, n, p[:n])
		b.consume(int(n))
		if sk.body+sk.pad == 0 {
			c.skipDone(d, b.timeAt(-1))
		}
		return true
	}
	if len(p) < 9 {
		return false
	}
	length := int(p[0])<<16 | int(p[1])<<8 | int(p[2])
	typ, flags := http2.FrameType(p[3]), http2.Flags(p[4])
	switch typ {
	case http2.FrameHeaders, http2.FrameContinuation, http2.FramePushPromise, http2.FrameRSTStream, http2.FrameSettings:
	default:
		// Skipped as it streams by, not buffered.
		need := 9
		data := typ == http2.FrameData
		if data && flags.Has(http2.FlagDataPadded) {
			need = 10
		}
		if len(p) < need {
			return false
		}
		// The Framer checks the order of frames (nothing inside a header block).
		c.rd[d].p = p[:9]
		fh, err := c.fr[d].ReadFrameHeader()
		if err != nil {
			c.giveUp()
			return false
		}
		pad := 0
		if need == 10 {
			pad = int(p[9])
			if length < 1+pad {
				c.giveUp()
				return false
			}
		}
		b.consume(need)
		c.skip[d] = h2skip{
			stream: fh.StreamID, body: int64(length - (need - 9) - pad), pad: int64(pad),
			data: data, endStream: data && flags.Has(http2.FlagDataEndStream), active: true,
		}
		if length == need-9 {
			c.skipDone(d, b.timeAt(-1))
		}
		return true
	}
	if length > max(c.f.opts.MaxHeaderBytes, 16<<10) {
		c.giveUp() // a control frame this large is not worth holding on to
		return false
	}
	if len(p) < 9+length {
		return false
	}
	c.rd[d].p = p[:9+length]
	ts := b.timeAt(0)
	fr, err := c.fr[d].ReadFrame()
	var se http2.StreamError
	switch {
	case errors.As(err, &se):
		// A frame the Framer rejects for one stream only (a zero window increment): the
		// connection goes on.
	case err != nil:
		c.giveUp()
		return false
	default:
		if !c.frame(d, fr, ts, b.timeAt(8+length)) {
			c.giveUp()
			return false
		}
	}
	b.consume(9 + length)
	return true
}

// frame handles a non-DATA frame from d that started at ts and ended at te; false means the
// connection can no longer be followed.
func (c *h2conn) frame(d Direction, fr http2.Frame, ts, te time.Time) bool {
	blk := &c.block[d]
	switch fr := fr.(type) {
	case *http2.HeadersFrame:
		*blk = h2block{stream: fr.StreamID, endStream: fr.StreamEnded(), start: ts, fields: blk.fields[:0]}
		return c.fragment(d, fr.HeaderBlockFragment(), fr.HeadersEnded(), te)
	case *http2.PushPromiseFrame:
		*blk = h2block{stream: fr.StreamID, push: true, start: ts, fields: blk.fields[:0]}
		return c.fragment(d, fr.HeaderBlockFragment(), fr.HeadersEnded(), te)
	case *http2.ContinuationFrame:
		return c.fragment(d, fr.HeaderBlockFragment(), fr.HeadersEnded(), te)
	case *http2.RSTStreamFrame:
		if s := c.streams[fr.StreamID]; s != nil {
			c.requestDone(s, te, true)
			s.respDone = true
			if s.respEnd.IsZero() {
				s.respEnd = te
			}
			c.done(fr.StreamID, s)
		}
	case *http2.SettingsFrame:
		if !fr.IsAck() {
			// The table size one side's decoder allows bounds the other side's encoder.
			if v, ok := fr.Value(http2.SettingHeaderTableSize); ok {
				c.dec[d.Reverse()].SetAllowedMaxDynamicTableSize(v)
			}
		}
	}
	return true
}

// fragment decodes part of a header block.
func (c *h2conn) fragment(d Direction, frag []byte, end bool, te time.Time) bool {
	blk := &c.block[d]
	blk.size += len(frag)
	if blk.size > c.f.opts.MaxHeaderBytes {
		return false
	}
	if _, err := c.dec[d].Write(frag); err != nil || blk.decoded > 4*c.f.opts.MaxHeaderBytes {
		return false
	}
	if !end {
		return true
	}
	if err := c.dec[d].Close(); err != nil || blk.decoded > 4*c.f.opts.MaxHeaderBytes {
		return false
	}
	if !blk.push {
		c.headers(d, blk, te)
	}
	blk.fields = blk.fields[:0]
	return true
}

// headers applies a decoded header block from d that ended at te.
func (c *h2conn) headers(d Direction, blk *h2block, te time.Time) {
	s := c.streams[blk.stream]
	if d == ClientToServer {
		if s == nil {
			if blk.stream <= c.maxStream || len(c.streams) >= h2MaxStreams {
				return
			}
			c.maxStream = blk.stream
			c.f.seq++
			s = &h2stream{Exchange: Exchange{Start: blk.start, Proto: "h2c", Seq: c.f.seq, StreamID: blk.stream}}
			c.streams[blk.stream] = s
			for _, hf := range blk.fields {
				switch hf.Name {
				case ":method":
					if isH1Token(hf.Value) { // a malformed stream's method is not reported
						s.Method = hf.Value
					}
				case ":path":
					s.Path = hf.Value
				case ":authority":
					s.Host = hf.Value
				case "host":
					if s.Host == "" {
						s.Host = hf.Value
					}
				case "content-type":
					if isGRPC(hf.Value) {
						s.Proto = "grpc"
					}
				}
			}
			s.rq = c.f.newReq(Request{
				Seq: s.Seq, StreamID: blk.stream, Start: blk.start, Proto: "h2c", GRPC: s.Proto == "grpc",
				Method: s.Method, Target: s.Path, Host: s.Host,
			})
			if rq := s.rq; rq != nil {
				for _, hf := range blk.fields {
					if isPseudo(hf.Name) {
						c.f.addField(&rq.kept, &rq.req.Pseudo, hf.Name, hf.Value)
					} else {
						c.f.addField(&rq.kept, &rq.header, hf.Name, hf.Value)
					}
				}
			}
		} else if rq := s.rq; rq != nil && !s.reqDone {
			// A second block from the client is the trailer.
			for _, hf := range blk.fields {
				if !isPseudo(hf.Name) {
					c.f.addField(&rq.kept, &rq.trailer, hf.Name, hf.Value)
				}
			}
		}
		if blk.endStream {
			c.requestDone(s, te, false)
		}
	} else {
		if s == nil {
			return
		}
		c.keepResponse(s, blk)
		for _, hf := range blk.fields {
			switch hf.Name {
			case ":status":
				if n, ok := parseH1Length(hf.Value); ok && n >= 200 && n < 1000 && !s.gotResp {
					s.Status, s.gotResp = int(n), true
				}
			case "content-type":
				if isGRPC(hf.Value) {
					s.Proto = "grpc"
				}
			case "grpc-status":
				s.GRPCStatus = hf.Value
			}
		}
		if blk.endStream {
			s.respDone, s.respEnd = true, te
		}
	}
	c.done(blk.stream, s)
}

func isGRPC(contentType string) bool { return strings.HasPrefix(contentType, "application/grpc") }

// keepResponse keeps the fields of a header block from the server: the final response's
// header, or the trailer after it. Interim (1xx) blocks are left out.
func (c *h2conn) keepResponse(s *h2stream, blk *h2block) {
	if !c.f.opts.KeepResponses {
		return
	}
	if s.gotResp {
		if s.rs != nil {
			for _, hf := range blk.fields {
				if !isPseudo(hf.Name) {
					c.f.addField(s.rs, &s.rs.trailer, hf.Name, hf.Value)
				}
			}
		}
		return
	}
	final := false
	for _, hf := range blk.fields {
		if hf.Name == ":status" {
			n, ok := parseH1Length(hf.Value)
			final = ok && n >= 200 && n < 1000
		}
	}
	if !final {
		return
	}
	s.rs = c.f.newResp()
	for _, hf := range blk.fields {
		if !isPseudo(hf.Name) {
			c.f.addField(s.rs, &s.rs.header, hf.Name, hf.Value)
		}
	}
}

// requestDone ends the request of s at t; partial says it was not seen whole.
func (c *h2conn) requestDone(s *h2stream, t time.Time, partial bool) {
	if s.reqDone {
		return
	}
	s.reqDone = true
	if rq := s.rq; rq != nil {
		s.rq = nil
		c.f.tellRequest(rq, t, partial)
	}
}

// skipped passes n bytes of the frame being skipped in d, counting DATA bodies; data holds
// them, nil when they were lost in a gap.
func (c *h2conn) skipped(d Direction, n int64, data []byte) {
	sk := &c.skip[d]
	body := min(n, sk.body)
	sk.body -= body
	sk.pad -= n - body
	s := c.streams[sk.stream]
	if s == nil || !sk.data {
		return
	}
	if data != nil {
		data = data[:body]
	}
	if d == ClientToServer {
		s.ReqBytes += body
		if s.rq != nil && !s.reqDone {
			c.f.addBody(&s.rq.kept, data)
		}
	} else {
		s.RespBytes += body
		if s.rs != nil {
			c.f.addBody(s.rs, data)
		}
	}
}

// skipDone ends the frame being skipped in d, whose last byte came at t.
func (c *h2conn) skipDone(d Direction, t time.Time) {
	sk := c.skip[d]
	c.skip[d] = h2skip{}
	s := c.streams[sk.stream]
	if s == nil || !sk.data {
		return
	}
	if sk.partial {
		s.Partial = true
		if s.rq != nil && d == ClientToServer {
			s.rq.req.Partial = true
		}
	}
	if !sk.endStream {
		return
	}
	if d == ClientToServer {
		c.requestDone(s, t, false)
	} else {
		s.respDone, s.respEnd = true, t
	}
	c.done(sk.stream, s)
}

// done emits a stream once both sides ended it.
func (c *h2conn) done(id uint32, s *h2stream) {
	if !s.reqDone || !s.respDone {
		return
	}
	delete(c.streams, id)
	c.emit(s)
}

func (c *h2conn) emit(s *h2stream) {
	if !s.respEnd.IsZero() {
		s.Latency = max(0, s.respEnd.Sub(s.Start))
	}
	rs := s.rs
	s.rs = nil
	c.f.emit(&s.Exchange, rs)
}

// gap handles a hole of n bytes in d.
func (c *h2conn) gap(d Direction, n int64) {
	if sk := &c.skip[d]; sk.active && n >= 0 && n <= sk.body+sk.pad {
		// Inside a frame of known size: the frames after it are not lost.
		sk.partial = true
		c.skipped(d, n, nil)
		if sk.body+sk.pad == 0 {
			c.skipDone(d, c.f.last)
		}
		return
	}
	c.giveUp()
}

// giveUp stops decoding HTTP/2: without every frame the header compression state is lost.
// The open streams are reported as partial.
func (c *h2conn) giveUp() {
	c.f.opaque()
	c.flushStreams(true)
}

func (c *h2conn) flushStreams(partial bool) {
	ids := make([]uint32, 0, len(c.streams))
	for id := range c.streams {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		s := c.streams[id]
		delete(c.streams, id)
		// A request the client did not finish is reported, unfinished, before its exchange.
		c.requestDone(s, c.f.last, true)
		// A stream cut short in the middle of a message was not seen whole.
		s.Partial = s.Partial || partial || (s.gotResp && !s.respDone)
		c.emit(s)
	}
}

func (c *h2conn) finish() { c.flushStreams(c.f.cut) }
