package transport

import (
	"bytes"
	"net"
	"net/http"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/moby/spdystream/spdy"
)

// writesConn records each Write, as each becomes one TLS record and one relayed message.
type writesConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

func (c *writesConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes = append(c.writes, append([]byte(nil), p...))
	return len(p), nil
}

// TestFrameConnWritesWholeFrames drives frameConn with spdystream's own framer: each frame, of every
// kind the plugin sends, reaches the connection in one write, and the bytes decode to the same frames.
func TestFrameConnWritesWholeFrames(t *testing.T) {
	rec := &writesConn{}
	fc := &frameConn{Conn: rec}
	framer, err := spdy.NewFramer(fc, nil)
	if err != nil {
		t.Fatal(err)
	}
	frames := []spdy.Frame{
		&spdy.SynStreamFrame{StreamId: 1, Headers: http.Header{"Streamtype": {"data"}, "Port": {"4390"}}},
		&spdy.DataFrame{StreamId: 1, Data: []byte("GET / HTTP/1.1\r\n\r\n")},
		&spdy.DataFrame{StreamId: 1, Data: []byte("x")},
		&spdy.DataFrame{StreamId: 1, Data: bytes.Repeat([]byte("y"), 200<<10)},
		&spdy.DataFrame{StreamId: 1, Flags: spdy.DataFlagFin},
		&spdy.PingFrame{Id: 7},
		&spdy.WindowUpdateFrame{StreamId: 1, DeltaWindowSize: 65536},
		&spdy.RstStreamFrame{StreamId: 3, Status: spdy.Cancel},
	}
	for i, f := range frames {
		if err := framer.WriteFrame(f); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if got := len(rec.writes); got != i+1 {
			t.Fatalf("after frame %d (%T): %d writes, want %d", i, f, got, i+1)
		}
	}
	if len(fc.buf) != 0 {
		t.Errorf("%d bytes held after whole frames", len(fc.buf))
	}
	reader, err := spdy.NewFramer(nil, bytes.NewReader(bytes.Join(rec.writes, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range frames {
		got, err := reader.ReadFrame()
		if err != nil {
			t.Fatalf("read frame %d: %v", i, err)
		}
		// The writer filled in the header fields it computes, so the frames compare whole.
		if diff := cmp.Diff(want, got, cmp.AllowUnexported(spdy.ControlFrameHeader{}), cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("frame %d (-want +got):\n%s", i, diff)
		}
	}
}

// TestFrameConnSplitWrites: a frame that arrives in pieces of any size leaves in one write once its
// last byte is in, and several frames in one write leave together.
func TestFrameConnSplitWrites(t *testing.T) {
	frame := func(id byte, payload string) []byte {
		n := len(payload)
		return append([]byte{0, 0, 0, id, 0, byte(n >> 16), byte(n >> 8), byte(n)}, payload...)
	}
	a, b := frame(1, "hello"), frame(3, "")
	for _, tc := range []struct {
		name   string
		pieces [][]byte
		want   [][]byte
	}{
		{"header then body", [][]byte{a[:4], a[4:8], a[8:]}, [][]byte{a}},
		{"byte by byte", split(a, 1), [][]byte{a}},
		{"two frames in one write", [][]byte{append(append([]byte(nil), a...), b...)}, [][]byte{append(append([]byte(nil), a...), b...)}},
		{"a frame and the start of the next", [][]byte{append(append([]byte(nil), a...), b[:3]...), b[3:]}, [][]byte{a, b}},
		{"empty frame", [][]byte{b}, [][]byte{b}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &writesConn{}
			fc := &frameConn{Conn: rec}
			for _, p := range tc.pieces {
				if n, err := fc.Write(p); err != nil || n != len(p) {
					t.Fatalf("Write(%d bytes) = %d, %v", len(p), n, err)
				}
			}
			if diff := cmp.Diff(tc.want, rec.writes); diff != "" {
				t.Errorf("writes (-want +got):\n%s", diff)
			}
		})
	}
}

func split(b []byte, n int) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		k := min(n, len(b))
		out = append(out, b[:k])
		b = b[k:]
	}
	return out
}
