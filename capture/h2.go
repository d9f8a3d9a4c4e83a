package capture

import (
	"errors"
	"sort"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/trafficlab/kubectl-trafficlab/internal/httpsyntax"
)

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

// errH2Short is what h2FrameReader says when the Framer asks for more than the frame it was handed.
var errH2Short = errors.New("incomplete http/2 frame")

func (r *h2FrameReader) Read(b []byte) (int, error) {
	if len(r.p) == 0 {
		return 0, errH2Short
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
		if len(p) < len(httpsyntax.H2Preface) {
			return false
		}
		if _, whole := httpsyntax.MatchH2Preface(p); !whole {
			c.giveUp()
			return false
		}
		b.consume(len(httpsyntax.H2Preface))
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
					if httpsyntax.IsToken(hf.Value) { // a malformed stream's method is not reported
						s.Method = hf.Value
					}
				case ":path":
					// As HTTP/1's request line: a path with control characters or spaces is
					// malformed (the app's server refuses the stream), and a terminal that
					// printed it would obey the escape sequences any client can put in it.
					if httpsyntax.IsTarget(hf.Value) {
						s.Path = hf.Value
					}
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
				if n, ok := httpsyntax.ParseContentLength(hf.Value); ok && n >= 200 && n < 1000 && !s.gotResp {
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
			n, ok := httpsyntax.ParseContentLength(hf.Value)
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
