package mirror

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// testSession is the session id the tests' mirrors mark their copies with.
const testSession = "s1test"

// markServer is a copy's destination, HTTP/1 and h2c, that records each request's path and its
// wire.MirrorHeader values.
type markServer struct {
	mu   sync.Mutex
	seen []string
	srv  *httptest.Server
}

func newMarkServer(t *testing.T) *markServer {
	t.Helper()
	s := &markServer{}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.seen = append(s.seen, fmt.Sprintf("%s %s %s=%q", r.Proto, r.URL.Path, wire.MirrorHeader, r.Header.Values(wire.MirrorHeader)))
		s.mu.Unlock()
	}))
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	s.srv.Config.Protocols = &p
	s.srv.Start()
	t.Cleanup(s.srv.Close)
	return s
}

func (s *markServer) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

// h2cClient writes the client's side of one h2c connection: one HEADERS frame per request, each
// ending its stream.
func h2cClient(t *testing.T, requests ...[]string) []byte {
	t.Helper()
	var out, hb bytes.Buffer
	out.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&out, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	enc := hpack.NewEncoder(&hb)
	for i, fields := range requests {
		hb.Reset()
		for j := 0; j+1 < len(fields); j += 2 {
			if err := enc.WriteField(hpack.HeaderField{Name: fields[j], Value: fields[j+1]}); err != nil {
				t.Fatal(err)
			}
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{
			StreamID: uint32(2*i + 1), BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true,
		}); err != nil {
			t.Fatal(err)
		}
	}
	return out.Bytes()
}

func h2cGet(path string, extra ...string) []string {
	return append([]string{":method", "GET", ":scheme", "http", ":authority", "app", ":path", path}, extra...)
}

// TestMirrorMarksCopiesAndSkipsMarked: every HTTP copy carries wire.MirrorHeader with the
// session's id (HTTP/1 in its head as captured, h2c in the HEADERS encoded afresh), and a request
// that carries the header, whatever its value, is a copy come back (a Service that selects the
// mirrored pod, behind hairpin NAT): it is not copied again, it is counted, and one warning says so.
func TestMirrorMarksCopiesAndSkipsMarked(t *testing.T) {
	dest := newMarkServer(t)
	var ev events
	m, err := New(context.Background(), Config{Session: testSession, Spec: wire.MirrorSpec{Ports: []int{8080}}, Open: &dialer{addr: dest.srv.Listener.Addr().String()}, Events: ev.add})
	if err != nil {
		t.Fatal(err)
	}
	feed(m.Handler(testFlow), false, [][2]string{
		{request("GET", "/h1", ""), response("x")},
		{"GET /h1-copy HTTP/1.1\r\nHost: app\r\nx-trafficlab-mirror: another-session\r\n\r\n", response("x")},
		{"GET /h1-empty-mark HTTP/1.1\r\nHost: app\r\nX-Trafficlab-Mirror:\r\n\r\n", response("x")},
		{request("POST", "/h1-body", "hello"), response("x")},
	})
	h2Flow := testFlow
	h2Flow.Client = netip.AddrPortFrom(testFlow.Client.Addr(), testFlow.Client.Port()+1)
	h := m.Handler(h2Flow)
	now := time.Now()
	h.Data(capture.ClientToServer, h2cClient(t,
		h2cGet("/h2"),
		h2cGet("/h2-copy", "x-trafficlab-mirror", "another-session"),
		h2cGet("/h2-after"),
	), now)
	h.End(capture.ClientToServer, capture.EndFIN, now)
	h.End(capture.ServerToClient, capture.EndFIN, now)
	m.Drain(10 * time.Second)

	got := dest.requests()
	sort.Strings(got)
	want := []string{
		`HTTP/1.1 /h1 X-Trafficlab-Mirror=["s1test"]`,
		`HTTP/1.1 /h1-body X-Trafficlab-Mirror=["s1test"]`,
		`HTTP/2.0 /h2 X-Trafficlab-Mirror=["s1test"]`,
		`HTTP/2.0 /h2-after X-Trafficlab-Mirror=["s1test"]`,
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("copies at the destination (-want +got):\n%s", d)
	}
	s := m.Stats()
	if s.SkippedCopies != 3 || s.Mirrored != 4 || s.Requests != 7 {
		t.Errorf("stats %+v, want 7 requests, 3 skipped copies, 4 mirrored", s)
	}
	var warnings []string
	for _, e := range ev.list() {
		if e.Kind == wire.EventWarning {
			warnings = append(warnings, e.Message)
		}
	}
	if len(warnings) != 1 {
		t.Errorf("warnings %q, want one", warnings)
	}
}

// TestMirrorSkipsMalformedH2C: an h2c request whose :path the decoder refused (control characters)
// is not replayed as a request for "/", nor one whose :method it refused as a GET.
func TestMirrorSkipsMalformedH2C(t *testing.T) {
	dest := newMarkServer(t)
	m, err := New(context.Background(), Config{Session: testSession, Spec: wire.MirrorSpec{Ports: []int{8080}}, Open: &dialer{addr: dest.srv.Listener.Addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	h := m.Handler(testFlow)
	now := time.Now()
	h.Data(capture.ClientToServer, h2cClient(t,
		h2cGet("/x\x1b]52;c;aGVsbG8=\a"),
		[]string{":method", "G T", ":scheme", "http", ":authority", "app", ":path", "/bad-method"},
		h2cGet("/ok"),
	), now)
	h.End(capture.ClientToServer, capture.EndFIN, now)
	h.End(capture.ServerToClient, capture.EndFIN, now)
	m.Drain(10 * time.Second)
	if d := cmp.Diff([]string{`HTTP/2.0 /ok X-Trafficlab-Mirror=["s1test"]`}, dest.requests()); d != "" {
		t.Errorf("copies at the destination (-want +got):\n%s", d)
	}
	if s := m.Stats(); s.DroppedMalformed != 2 || s.Mirrored != 1 {
		t.Errorf("stats %+v, want 2 malformed and 1 mirrored", s)
	}
}

// TestMirrorRefusesAnUnmarkableSession: the session id goes into every copy's head, so one that is
// not a header value (or empty) is refused rather than sent as a broken or missing mark.
func TestMirrorRefusesAnUnmarkableSession(t *testing.T) {
	for _, id := range []string{"", " ", "a\r\nEvil: 1"} {
		if _, err := New(context.Background(), Config{Session: id, Spec: wire.MirrorSpec{Ports: []int{8080}}, Open: sinkOpener{}}); err == nil {
			t.Errorf("session %q accepted", id)
		}
	}
}
