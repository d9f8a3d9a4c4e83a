package capture

import (
	"bytes"
	"strings"
	"time"
)

// The protocols HTTPOptions.OnProtocol reports.
const (
	// ProtoHTTP1 is HTTP/1.0 or HTTP/1.1. A connection that later upgrades to h2c stays
	// ProtoHTTP1 (its first request is HTTP/1); its h2c requests come as Requests.
	ProtoHTTP1 = "HTTP/1.1"
	// ProtoH2C is HTTP/2 with prior knowledge over cleartext, gRPC included.
	ProtoH2C = "h2c"
	// ProtoOpaque is any other protocol, and a connection that ended before it could tell.
	ProtoOpaque = "tcp"
)

// Request is one client request in full, as HTTPOptions.OnRequest reports it. The consumer
// owns it and its slices.
type Request struct {
	Flow Flow
	// Seq numbers the requests of a connection from 1, in the order they started (for
	// HTTP/2, in which their streams opened). The Exchange of the request has the same Seq.
	Seq uint64
	// StreamID is the HTTP/2 stream; 0 for HTTP/1, 1 for the h2c stream that an HTTP/1
	// Upgrade request becomes (its Request is the HTTP/1 one).
	StreamID uint32
	// Start is the capture time of the request's first byte, End of its last one.
	Start, End time.Time
	// Proto is "HTTP/1.1" or "HTTP/1.0" (from the request line), or "h2c".
	Proto string
	// GRPC says that an HTTP/2 request has a gRPC content type.
	GRPC bool
	// Method and Target are the request line's method and request-target as sent (for
	// HTTP/2 :method and :path). Host is the Host field or :authority.
	Method, Target, Host string
	// Pseudo are HTTP/2's pseudo-header fields as ":name: value" lines, in order; nil for
	// HTTP/1.
	Pseudo []string
	// Header are the header fields as "Name: value" lines, in the order sent, names as sent
	// (HTTP/2 sends them in lower case), obsolete line folding undone.
	Header []string
	// Body is the body: de-chunked for HTTP/1, the DATA frames' payload for HTTP/2. It holds
	// at most HTTPOptions.MaxBody bytes.
	Body []byte
	// Trailer are the trailer fields, as Header.
	Trailer []string
	// Truncated says that the request did not fit the limits: Body (or Header or Trailer)
	// holds only part of it, or it took more than MaxHeaderBytes + 2×MaxBody bytes on the
	// wire (Raw is nil).
	Truncated bool
	// Raw is the request exactly as the client sent it, for HTTP/1 only: request line,
	// header, body with its chunk framing and trailer. It can be written unchanged to another
	// server. It is nil for HTTP/2 and when the request is Partial or Truncated.
	Raw []byte
	// Partial says that the request was not seen whole: a gap hit it, the capture started or
	// stopped inside it, or the client did not finish it (the connection closed, the stream
	// was reset). Its fields hold what was captured; Body misses the lost bytes.
	Partial bool
	// OverBudget says that HTTPOptions.Budget refused bytes of the request: it is Truncated
	// too, and Raw is nil.
	OverBudget bool
}

// Budget is a memory budget shared by many connections (the agent's): the bytes of messages in
// progress are reserved before they are kept and released once they are handed over or dropped.
type Budget interface {
	// Reserve takes n bytes; false means they must not be kept.
	Reserve(n int) bool
	Release(n int)
}

// Response is a response in full, kept for Exchange.Response with HTTPOptions.KeepResponses.
// Its status is Exchange.Status; gRPC's status is in Trailer (or in Header for a
// trailers-only response) and in Exchange.GRPCStatus.
type Response struct {
	// Header are the header fields as Request.Header; HTTP/2's :status is left out.
	Header []string
	// Body is the decoded body, at most HTTPOptions.MaxBody bytes.
	Body []byte
	// Trailer are the trailer fields, as Header.
	Trailer []string
	// Truncated says that Body, Header or Trailer holds only part of the response.
	Truncated bool
}

// kept is what a decoder keeps of one message in progress, within the limits.
type kept struct {
	header, trailer []string
	body            []byte
	truncated       bool
	overBudget      bool // HTTPOptions.Budget refused some of it
	lines           int  // bytes of header and trailer lines
	held            int  // bytes charged to the connection's budget (and to HTTPOptions.Budget)
}

// maxHeld is the budget of one connection: the bytes of messages kept at once (an HTTP/2
// connection has many streams open).
func (f *HTTPFlow) maxHeld() int { return 4 * (f.opts.MaxBody + f.opts.MaxHeaderBytes) }

// charge reserves n bytes of HTTPOptions.Budget for k (nil for Raw); false marks k truncated and over
// budget, and the bytes must not be kept.
func (f *HTTPFlow) charge(k *kept, n int) bool {
	if f.opts.Budget == nil || n <= 0 {
		return true
	}
	if !f.opts.Budget.Reserve(n) {
		if k != nil {
			k.truncated, k.overBudget = true, true
		}
		return false
	}
	f.budgeted += n
	return true
}

// uncharge gives back n bytes of HTTPOptions.Budget. It never gives back more than the connection
// took, so a release of bytes that were never charged is harmless.
func (f *HTTPFlow) uncharge(n int) {
	n = min(n, f.budgeted)
	if n <= 0 {
		return
	}
	f.budgeted -= n
	f.opts.Budget.Release(n)
}

// addBody keeps p, as much as the limits allow.
func (f *HTTPFlow) addBody(k *kept, p []byte) {
	if len(p) == 0 {
		return
	}
	room := min(f.opts.MaxBody-len(k.body), f.maxHeld()-f.held)
	if room < len(p) {
		k.truncated = true
		p = p[:max(room, 0)]
	}
	if !f.charge(k, len(p)) {
		return
	}
	k.body = append(k.body, p...)
	k.held += len(p)
	f.held += len(p)
}

// addLine keeps a field line in *dst (k.header or k.trailer). A line starting with white
// space continues the previous one (obsolete folding).
func (f *HTTPFlow) addLine(k *kept, dst *[]string, line []byte) {
	line = bytes.TrimRight(line, " \t")
	if len(line) == 0 {
		return
	}
	n := len(line) + 16 // a string header's worth of overhead
	if k.lines+n > 4*f.opts.MaxHeaderBytes || f.held+n > f.maxHeld() {
		k.truncated = true
		return
	}
	if !f.charge(k, n) {
		return
	}
	var s string
	if line[0] == ' ' || line[0] == '\t' {
		if len(*dst) == 0 {
			return
		}
		last := len(*dst) - 1
		s = (*dst)[last] + " " + string(bytes.TrimLeft(line, " \t"))
		*dst = (*dst)[:last]
	} else if name, value, ok := bytes.Cut(line, []byte(":")); ok {
		s = string(name) + ": " + string(bytes.Trim(value, " \t"))
	} else {
		s = string(line)
	}
	*dst = append(*dst, s)
	k.lines += n
	k.held += n
	f.held += n
}

// addField keeps a decoded HTTP/2 field as a line.
func (f *HTTPFlow) addField(k *kept, dst *[]string, name, value string) {
	n := len(name) + len(value) + 16
	if k.lines+n > 4*f.opts.MaxHeaderBytes || f.held+n > f.maxHeld() {
		k.truncated = true
		return
	}
	if !f.charge(k, n) {
		return
	}
	*dst = append(*dst, name+": "+value)
	k.lines += n
	k.held += n
	f.held += n
}

// release gives back what k held to the connection's budget: its message was handed over.
func (f *HTTPFlow) release(k *kept) {
	f.held -= k.held
	f.uncharge(k.held)
	k.held = 0
}

// h1Fields keeps the field lines of an HTTP/1 head (after its start line).
func (f *HTTPFlow) h1Fields(k *kept, head []byte) {
	_, rest, _ := bytes.Cut(head, []byte("\n"))
	for len(rest) > 0 {
		var line []byte
		line, rest, _ = bytes.Cut(rest, []byte("\n"))
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break
		}
		f.addLine(k, &k.header, line)
	}
}

// reqState is a Request being filled.
type reqState struct {
	req Request // what the head told
	kept
	raw    []byte
	rawOff bool // Raw is not kept: too long, or not seen whole
	rawCap int  // bytes of raw charged to HTTPOptions.Budget
}

// newReq starts a Request, when requests are reported.
func (f *HTTPFlow) newReq(r Request) *reqState {
	if f.opts.OnRequest == nil {
		return nil
	}
	r.Flow = f.flow
	return &reqState{req: r}
}

// addRaw keeps bytes of an HTTP/1 request as sent.
func (f *HTTPFlow) addRaw(rq *reqState, p []byte) {
	if rq.rawOff {
		return
	}
	if rq.truncated || len(rq.raw)+len(p) > f.opts.MaxHeaderBytes+2*f.opts.MaxBody {
		rq.truncated = true
		f.dropRaw(rq)
		return
	}
	if !f.charge(&rq.kept, len(p)) {
		f.dropRaw(rq)
		return
	}
	rq.rawCap += len(p)
	rq.raw = append(rq.raw, p...)
}

// dropRaw stops keeping Raw.
func (f *HTTPFlow) dropRaw(rq *reqState) {
	f.uncharge(rq.rawCap)
	rq.raw, rq.rawOff, rq.rawCap = nil, true, 0
}

// tellRequest reports a request that ended at end; partial says it was not seen whole.
func (f *HTTPFlow) tellRequest(rq *reqState, end time.Time, partial bool) {
	r := rq.req
	r.End = end
	if r.End.Before(r.Start) {
		r.End = r.Start
	}
	r.Partial = r.Partial || partial
	r.Header, r.Trailer, r.Body, r.Truncated = rq.header, rq.trailer, rq.body, rq.truncated
	r.OverBudget = rq.overBudget
	if !r.Partial && !r.Truncated && !rq.rawOff {
		r.Raw = rq.raw
	}
	// The consumer owns what is handed over, and budgets it itself.
	f.uncharge(rq.rawCap)
	f.release(&rq.kept)
	*rq = reqState{}
	f.opts.OnRequest(&r)
}

// newResp starts keeping a response, when responses are kept.
func (f *HTTPFlow) newResp() *kept {
	if !f.opts.KeepResponses {
		return nil
	}
	return &kept{}
}

// response hands over a kept response.
func (f *HTTPFlow) response(k *kept) *Response {
	if k == nil {
		return nil
	}
	f.release(k)
	return &Response{Header: k.header, Body: k.body, Trailer: k.trailer, Truncated: k.truncated}
}

// isPseudo reports whether an HTTP/2 field is a pseudo-header.
func isPseudo(name string) bool { return strings.HasPrefix(name, ":") }
