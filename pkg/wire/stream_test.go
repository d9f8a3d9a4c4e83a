package wire

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func TestStreamCodecs(t *testing.T) {
	payloads := map[string][]byte{
		"empty":  {},
		"tiny":   []byte("x"),
		"json":   jsonBytes(1, 3*MaxBlockSize+17),
		"random": randomBytes(1, 3*MaxBlockSize+17),
		// Compressible then not, then compressible again: the adaptive skip must recover.
		"mixed": bytes.Join([][]byte{jsonBytes(2, 4*MaxBlockSize), randomBytes(2, 8*MaxBlockSize), jsonBytes(3, 40*MaxBlockSize)}, nil),
	}
	for _, c := range []Compression{CompressionNone, CompressionS2, CompressionZstd} {
		for name, p := range payloads {
			t.Run(c.String()+"/"+name, func(t *testing.T) {
				a, b := net.Pipe()
				ca := &countingConn{Conn: a}
				w, _ := Wrap(ca, c)
				r, _ := Wrap(b, CompressionNone) // the reader decodes whatever it gets
				defer w.Close()
				defer r.Close()
				go func() {
					// Odd write sizes, to split blocks in odd places.
					for rest := p; len(rest) > 0; {
						n := min(len(rest), 40_000)
						if _, err := w.Write(rest[:n]); err != nil {
							t.Error(err)
							return
						}
						rest = rest[n:]
					}
					_ = w.CloseWrite()
				}()
				got, err := io.ReadAll(r)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, p) {
					t.Fatalf("got %d bytes, want %d (or content differs)", len(got), len(p))
				}
				if len(p) > 0 {
					t.Logf("%d bytes -> %d on the wire (%.2fx)", len(p), ca.written(), float64(len(p))/float64(ca.written()))
				}
				if name == "random" && ca.written() > int64(len(p))+int64(len(p))/100 {
					t.Errorf("random data grew to %d bytes on the wire", ca.written())
				}
				if name == "json" && c != CompressionNone && ca.written() > int64(len(p))/2 {
					t.Errorf("JSON compressed only to %d of %d bytes", ca.written(), len(p))
				}
			})
		}
	}
}

// TestStreamAdaptive checks that incompressible data stops costing compression attempts.
func TestStreamAdaptive(t *testing.T) {
	var out bytes.Buffer
	st, _ := Wrap(nopCloser{&out}, CompressionZstd)
	random := randomBytes(9, 200*MaxBlockSize)
	if _, err := st.Write(random); err != nil {
		t.Fatal(err)
	}
	// Count blocks by type by walking the framing.
	attempts := 0
	for b := out.Bytes(); len(b) > 0; {
		if b[0] != blockRaw {
			t.Fatalf("random data produced a 0x%02x block", b[0])
		}
		b = b[blockHeaderSize+uint24(b[1:4]):]
		attempts++
	}
	if st.skip == 0 && st.backof != maxSkipBlocks {
		t.Errorf("after 200 incompressible blocks the backoff is %d, want %d", st.backof, maxSkipBlocks)
	}
	if _, err := st.Write(jsonBytes(9, 200*MaxBlockSize)); err != nil {
		t.Fatal(err)
	}
	if st.backof != 1 {
		t.Errorf("compressible data did not reset the backoff (%d)", st.backof)
	}
}

// TestStreamDeadlineMidBlock makes sure a read deadline in the middle of a compressed block leaves
// the framing intact for the next Read.
func TestStreamDeadlineMidBlock(t *testing.T) {
	a, b := net.Pipe()
	w, _ := Wrap(a, CompressionS2)
	r, _ := Wrap(b, CompressionNone)
	defer w.Close()
	defer r.Close()
	p := jsonBytes(5, MaxBlockSize)
	var framed bytes.Buffer
	fw, _ := Wrap(nopCloser{&framed}, CompressionS2)
	_, _ = fw.Write(p)
	_ = fw.CloseWrite()
	wire := framed.Bytes()
	half := len(wire) / 2
	go func() { _, _ = a.Write(wire[:half]) }()
	_ = r.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := r.Read(make([]byte, 10)); !isTimeout(err) {
		t.Fatalf("read of half a block: %v, want a timeout", err)
	}
	_ = r.SetReadDeadline(time.Time{})
	go func() { _, _ = a.Write(wire[half:]) }()
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, p) {
		t.Fatalf("after the timeout: %d bytes, %v", len(got), err)
	}
}

func TestStreamCorruption(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"unknown block", []byte{0x42, 0, 0, 1, 0}, ErrMalformed},
		{"end with length", []byte{0xff, 0, 0, 1}, ErrMalformed},
		{"raw too large", []byte{0, 0x10, 0, 0}, ErrMalformed},
		{"s2 garbage", []byte{1, 0, 0, 3, 0, 0, 9, 1, 2, 3}, ErrMalformed},
		{"zstd garbage", []byte{2, 0, 0, 3, 0, 0, 9, 1, 2, 3}, ErrMalformed},
		{"zero raw length compressed", []byte{1, 0, 0, 1, 0, 0, 0, 0}, ErrMalformed},
		{"fin without end", []byte{0, 0, 0, 1, 'a'}, ErrStreamAborted},
		{"fin mid block", []byte{0, 0, 0, 9, 'a'}, ErrStreamAborted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, _ := Wrap(nopCloser{bytes.NewBuffer(tt.in)}, CompressionNone)
			_, err := io.ReadAll(st)
			if !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
}

// Stream is what the plugin's forwarders and the agent's dialer hand around as a HalfCloser.
var _ HalfCloser = (*Stream)(nil)

// TestStreamSmallWritesUseSmallBuffers: a write of a few hundred bytes borrows a small buffer, not
// one sized for a 64 KiB block; sizes at the small buffer's edge still round-trip in every codec.
func TestStreamSmallWritesUseSmallBuffers(t *testing.T) {
	c := newCodecs()
	for _, tt := range []struct {
		n       int
		wantCap int
	}{
		{0, smallBuf}, {300, smallBuf}, {3000, smallBuf}, {smallBuf, maxEncodedBlock()}, {MaxBlockSize, maxEncodedBlock()},
	} {
		b := c.getBufFor(tt.n)
		if cap(*b) != tt.wantCap || encodedLen(tt.n) > cap(*b) {
			t.Errorf("getBufFor(%d): cap %d, want %d (encoded at most %d)", tt.n, cap(*b), tt.wantCap, encodedLen(tt.n))
		}
		c.putBuf(b)
	}
	edge := 0
	for n := 1; encodedLen(n) <= smallBuf; n++ {
		edge = n
	}
	for _, codec := range []Compression{CompressionNone, CompressionS2, CompressionZstd} {
		for _, n := range []int{edge - 1, edge, edge + 1} {
			for name, p := range map[string][]byte{"random": randomBytes(7, n), "json": jsonBytes(7, n)} {
				a, b := net.Pipe()
				w, _ := Wrap(a, codec)
				r, _ := Wrap(b, CompressionNone)
				go func() {
					_, _ = w.Write(p)
					_ = w.CloseWrite()
				}()
				got, err := io.ReadAll(r)
				if err != nil || !bytes.Equal(got, p) {
					t.Errorf("%s %s %d bytes: got %d bytes, err %v", codec, name, n, len(got), err)
				}
				w.Close()
				r.Close()
			}
		}
	}
}
