package capture

import (
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/internal/httpsyntax"
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
	// Budget, when set, is charged for what OnRequest and KeepResponses keep of messages in
	// progress (fields, bodies, raw bytes), across every connection that shares it. A message
	// whose bytes it refuses is kept no further: its Request is Truncated and OverBudget.
	Budget Budget
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
	budgeted  int    // bytes reserved of opts.Budget, all given back when the connection ends
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
	// Messages abandoned on the way (a reset stream, a response never completed) held bytes too.
	f.uncharge(f.budgeted)
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
	if match, whole := httpsyntax.MatchH2Preface(b); match {
		if !whole {
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
		case !httpsyntax.IsTokenChar(c) || i >= maxH1Method:
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
