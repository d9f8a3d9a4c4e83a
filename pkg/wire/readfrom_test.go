package wire

import (
	"bytes"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// sizedReader returns the sizes it is told to, one read each, then io.EOF; it remembers the buffer
// each read filled, so a test can see whether a block left from it.
type sizedReader struct {
	p     []byte
	sizes []int
	last  []byte
}

func (r *sizedReader) Read(b []byte) (int, error) {
	if len(r.p) == 0 {
		return 0, io.EOF
	}
	n := len(r.p)
	if len(r.sizes) > 0 {
		n, r.sizes = min(n, r.sizes[0]), r.sizes[1:]
	}
	n = copy(b[:min(n, len(b))], r.p)
	r.p, r.last = r.p[n:], b[:n]
	return n, nil
}

// blockLog records each write a Stream makes on its connection: the block's type and data length, and
// whether it went out from the reader's own buffer.
type blockLog struct {
	src    *sizedReader
	out    bytes.Buffer
	blocks []loggedBlock
}

type loggedBlock struct {
	Type     byte
	Len      int
	FromRead bool
}

func (l *blockLog) Read([]byte) (int, error) { return 0, io.EOF }
func (l *blockLog) Close() error             { return nil }
func (l *blockLog) Write(p []byte) (int, error) {
	fromRead := l.src != nil && len(l.src.last) > 0 && len(p) > blockHeaderSize && &p[blockHeaderSize] == &l.src.last[0]
	l.blocks = append(l.blocks, loggedBlock{Type: p[0], Len: uint24(p[1:4]), FromRead: fromRead})
	return l.out.Write(p)
}

// TestStreamReadFromFraming pins what ReadFrom puts on the wire: one block per read, the same
// compression decisions (and back-off) as Write given the same pieces, raw blocks sent from the read
// buffer itself, and data that decodes to what was read.
func TestStreamReadFromFraming(t *testing.T) {
	mixed := bytes.Join([][]byte{jsonBytes(2, 3*readFromBlock), randomBytes(2, 9*readFromBlock), jsonBytes(3, 2*readFromBlock)}, nil)
	// Reads of every size that matters: below minCompressSize, odd, and the buffer's whole length.
	sizes := []int{100, 511, 512, 40_000, readFromBlock, 7}
	for _, c := range []Compression{CompressionNone, CompressionS2, CompressionZstd} {
		t.Run(c.String(), func(t *testing.T) {
			src := &sizedReader{p: mixed}
			for range 20 {
				src.sizes = append(src.sizes, sizes...)
			}
			readSizes := append([]int(nil), src.sizes...)
			viaReadFrom := &blockLog{src: src}
			st, _ := Wrap(viaReadFrom, c)
			n, err := st.ReadFrom(src)
			if err != nil || n != int64(len(mixed)) {
				t.Fatalf("ReadFrom = %d, %v; want %d, nil", n, err, len(mixed))
			}

			// The same pieces through Write.
			viaWrite := &blockLog{}
			ws, _ := Wrap(viaWrite, c)
			rest := mixed
			for _, sz := range readSizes {
				sz = min(sz, len(rest), readFromBlock)
				if sz == 0 {
					break
				}
				if _, err := ws.Write(rest[:sz]); err != nil {
					t.Fatal(err)
				}
				rest = rest[sz:]
			}
			if len(rest) > 0 {
				t.Fatalf("test sizes cover %d of %d bytes", len(mixed)-len(rest), len(mixed))
			}
			typesOf := func(bs []loggedBlock) []loggedBlock {
				out := make([]loggedBlock, len(bs))
				for i, b := range bs {
					out[i] = loggedBlock{Type: b.Type, Len: b.Len}
				}
				return out
			}
			if diff := cmp.Diff(typesOf(viaWrite.blocks), typesOf(viaReadFrom.blocks)); diff != "" {
				t.Errorf("blocks from ReadFrom differ from Write's (-Write +ReadFrom):\n%s", diff)
			}
			raw, fromRead := 0, 0
			for _, b := range viaReadFrom.blocks {
				if b.Type == blockRaw {
					raw++
				}
				if b.FromRead {
					fromRead++
					if b.Type != blockRaw {
						t.Errorf("a 0x%02x block claims to be the read buffer", b.Type)
					}
				}
			}
			if raw == 0 || fromRead != raw {
				t.Errorf("%d of %d raw blocks went out from the read buffer, want all", fromRead, raw)
			}
			if viaWrite.blocks[0].FromRead {
				t.Errorf("the test's check sees Write's copies as the read buffer")
			}

			r, _ := Wrap(nopCloser{&viaReadFrom.out}, CompressionNone)
			_ = st.CloseWrite()
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, mixed) {
				t.Fatalf("decoded %d bytes, %v; want the %d read", len(got), err, len(mixed))
			}
		})
	}
}

// TestStreamReadFromAfterClose: ReadFrom stops at once on a stream that no longer takes writes, as
// Write does, and does not read on.
func TestStreamReadFromAfterClose(t *testing.T) {
	log := &blockLog{}
	st, _ := Wrap(log, CompressionNone)
	if err := st.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	src := &sizedReader{p: randomBytes(1, 3*readFromBlock)}
	if _, err := st.ReadFrom(src); err == nil {
		t.Fatalf("ReadFrom after CloseWrite succeeded")
	}
	if got := len(src.p); got < 2*readFromBlock {
		t.Errorf("ReadFrom read on after the stream refused a block: %d bytes left of %d", got, 3*readFromBlock)
	}
	if len(log.blocks) != 1 || log.blocks[0].Type != blockEnd {
		t.Errorf("blocks on the wire: %+v, want the end block only", log.blocks)
	}
}
