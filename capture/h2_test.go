package capture

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/trafficlab/kubectl-trafficlab/internal/httpsyntax"
)

// h2Side writes one direction of an HTTP/2 connection with its own HPACK state.
type h2Side struct {
	buf bytes.Buffer
	fr  *http2.Framer
	hb  bytes.Buffer
	enc *hpack.Encoder
}

func newH2Side(client bool) *h2Side {
	s := &h2Side{}
	if client {
		s.buf.WriteString(http2.ClientPreface)
	}
	s.fr = http2.NewFramer(&s.buf, nil)
	s.enc = hpack.NewEncoder(&s.hb)
	if client {
		s.settings()
	}
	return s
}

func (s *h2Side) settings(set ...http2.Setting) {
	if err := s.fr.WriteSettings(set...); err != nil {
		panic(err)
	}
}

func (s *h2Side) block(fields []string) []byte {
	s.hb.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		if err := s.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]}); err != nil {
			panic(err)
		}
	}
	return bytes.Clone(s.hb.Bytes())
}

func (s *h2Side) headers(id uint32, end bool, fields ...string) {
	err := s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: s.block(fields), EndStream: end, EndHeaders: true})
	if err != nil {
		panic(err)
	}
}

// headersSplit sends a header block as HEADERS and CONTINUATION frames.
func (s *h2Side) headersSplit(id uint32, end bool, fields ...string) {
	b := s.block(fields)
	half := len(b) / 2
	if err := s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b[:half], EndStream: end}); err != nil {
		panic(err)
	}
	if err := s.fr.WriteContinuation(id, true, b[half:]); err != nil {
		panic(err)
	}
}

func (s *h2Side) data(id uint32, end bool, n int, pad uint8) {
	var padding []byte
	if pad > 0 {
		padding = make([]byte, pad)
	}
	if err := s.fr.WriteDataPadded(id, end, bytes.Repeat([]byte{'d'}, n), padding); err != nil {
		panic(err)
	}
}

func (s *h2Side) take() string {
	out := s.buf.String()
	s.buf.Reset()
	return out
}

// chunk is what one side sent at once.
type chunk struct {
	fromClient bool
	data       string
}

// h2cConversation is an h2c connection with two concurrent streams, a gRPC call with
// trailers, a reset stream and a header block split over CONTINUATION.
func h2cConversation() (chunks []chunk, want []string) {
	cl, sv := newH2Side(true), newH2Side(false)
	add := func(fromClient bool, s *h2Side) { chunks = append(chunks, chunk{fromClient, s.take()}) }
	add(true, cl)
	sv.settings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20})
	add(false, sv)
	cl.headers(1, true, ":method", "GET", ":scheme", "http", ":authority", "svc", ":path", "/one?x=1")
	cl.headers(3, false, ":method", "POST", ":scheme", "http", ":authority", "svc", ":path", "/two", "content-type", "text/plain")
	cl.data(3, false, 100, 0)
	add(true, cl)
	cl.data(3, true, 50, 10)
	add(true, cl)
	sv.headers(3, false, ":status", "201", "content-type", "text/plain")
	sv.headers(1, false, ":status", "200")
	sv.data(3, false, 20, 5)
	sv.data(1, true, 1000, 0)
	add(false, sv)
	sv.data(3, true, 30, 0)
	add(false, sv)
	cl.headersSplit(5, false, ":method", "POST", ":scheme", "http", ":authority", "svc",
		":path", "/pkg.Greeter/SayHello", "content-type", "application/grpc", "te", "trailers", "x-big", strings.Repeat("b", 300))
	cl.data(5, true, 12, 0)
	cl.headers(7, true, ":method", "GET", ":scheme", "http", ":authority", "svc", ":path", "/cancelled")
	add(true, cl)
	sv.headers(5, false, ":status", "200", "content-type", "application/grpc")
	sv.data(5, false, 17, 0)
	sv.headers(5, true, "grpc-status", "0", "grpc-message", "")
	if err := sv.fr.WriteRSTStream(7, http2.ErrCodeCancel); err != nil {
		panic(err)
	}
	add(false, sv)
	if err := cl.fr.WriteGoAway(0, http2.ErrCodeNo, []byte("bye")); err != nil {
		panic(err)
	}
	add(true, cl)
	want = []string{
		"h2c GET svc/one?x=1 200 req=0 resp=1000",
		"h2c POST svc/two 201 req=150 resp=50",
		"grpc POST svc/pkg.Greeter/SayHello 200 req=12 resp=17 grpc-status=0",
		"h2c GET svc/cancelled 0 req=0 resp=0",
	}
	return chunks, want
}

func TestHTTPFlowH2C(t *testing.T) {
	chunks, want := h2cConversation()
	for _, addrs := range [][2]string{{"10.0.0.2:40000", "10.0.0.1:8080"}, {"[fd00::2]:40000", "[fd00::1]:8080"}} {
		t.Run(addrs[0], func(t *testing.T) {
			var r httpRecorder
			f := newSegFeeder(t, HTTPStreams(r.options()), AssemblerOptions{})
			play(t, f, newTCPScript(addrs[0], addrs[1], 7, 9), rand.New(rand.NewPCG(3, 4)), chunks)
			wantExchanges(t, &r, want...)
			if len(r.connections) != 0 {
				t.Errorf("connections %+v", r.connections)
			}
			for _, e := range r.exchanges {
				if e.Client.String() != addrs[0] || e.Server.String() != addrs[1] || e.Latency <= 0 || e.Start.Before(streamT0) {
					t.Errorf("exchange %v", e)
				}
			}
		})
	}
}

func TestHTTPFlowH2CGaps(t *testing.T) {
	t.Run("inside DATA", func(t *testing.T) {
		var r httpRecorder
		d := newDriver(&r)
		cl, sv := newH2Side(true), newH2Side(false)
		cl.headers(1, true, ":method", "GET", ":authority", "svc", ":path", "/big")
		cl.headers(3, true, ":method", "GET", ":authority", "svc", ":path", "/small")
		d.c(cl.take())
		sv.settings()
		sv.headers(1, false, ":status", "200")
		sv.data(1, true, 1000, 0)
		frames := sv.take()
		d.s(frames[:200]).gap(ServerToClient, 500).s(frames[700:])
		sv.headers(3, true, ":status", "204")
		d.s(sv.take()).end(EndFIN)
		wantExchanges(t, &r, "h2c GET svc/big 200 req=0 resp=1000 partial", "h2c GET svc/small 204 req=0 resp=0")
	})
	t.Run("in headers", func(t *testing.T) {
		var r httpRecorder
		d := newDriver(&r)
		cl, sv := newH2Side(true), newH2Side(false)
		cl.headers(1, true, ":method", "GET", ":authority", "svc", ":path", "/a")
		d.c(cl.take())
		sv.settings()
		sv.headers(1, false, ":status", "200", "x-pad", strings.Repeat("p", 100))
		frames := sv.take()
		d.s(frames[:30]).gap(ServerToClient, 20).s(frames[50:]).end(EndFIN)
		// The compression state is gone: the open stream is reported as partial and the
		// connection summarized.
		wantExchanges(t, &r, "h2c GET svc/a 0 req=0 resp=0 partial")
		if len(r.connections) != 1 || r.connections[0].Gaps != 1 {
			t.Errorf("connections %+v", r.connections)
		}
	})
}

// The leaf package spells the preface out to stay free of x/net; it must be x/net's.
func TestH2PrefaceIsHTTP2s(t *testing.T) {
	if httpsyntax.H2Preface != http2.ClientPreface {
		t.Fatalf("httpsyntax.H2Preface = %q, http2.ClientPreface = %q", httpsyntax.H2Preface, http2.ClientPreface)
	}
}

// TestH2CPathWithControlsIsMalformed: an h2c :path is held to HTTP/1's request-target syntax, as
// :method is to a token. One with an escape sequence (OSC 52 writes the terminal's clipboard) or a
// space is malformed, which the app's server refuses (RFC 9113 8.1.1); it is not reported as the
// request's path, so that neither a printer nor a mirror's copy takes it.
func TestH2CPathWithControlsIsMalformed(t *testing.T) {
	for _, path := range []string{"/x\x1b]52;c;aGVsbG8=\a", "/a b", "/\x7f"} {
		cl, sv := newH2Side(true), newH2Side(false)
		cl.headers(1, true, ":method", "GET", ":scheme", "http", ":authority", "svc", ":path", path)
		sv.headers(1, true, ":status", "400")
		var reqs []*Request
		var exs []Exchange
		f := NewHTTPFlow(Flow{}, HTTPOptions{
			OnRequest:  func(r *Request) { reqs = append(reqs, r) },
			OnExchange: func(e Exchange) { exs = append(exs, e) },
		})
		now := streamT0
		f.Data(ClientToServer, []byte(cl.take()), now)
		f.Data(ServerToClient, []byte(sv.take()), now)
		f.End(ClientToServer, EndFIN, now)
		f.End(ServerToClient, EndFIN, now)
		if len(reqs) != 1 || reqs[0].Target != "" || reqs[0].Method != "GET" {
			t.Errorf("path %q: requests %+v, want one GET with no target", path, reqs)
		}
		if len(exs) != 1 || exs[0].Path != "" || exs[0].Status != 400 {
			t.Errorf("path %q: exchanges %+v, want one with no path, answered 400", path, exs)
		}
	}
}
