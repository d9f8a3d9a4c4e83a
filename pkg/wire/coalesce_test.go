package wire

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// recordConn records each Write as one frame on the wire.
type recordConn struct {
	io.Reader
	writes [][]byte
}

func (r *recordConn) Write(p []byte) (int, error) {
	r.writes = append(r.writes, bytes.Clone(p))
	return len(p), nil
}
func (r *recordConn) Close() error { return nil }

func header(typ byte, length uint32) []byte {
	h := make([]byte, yamuxHeaderSize)
	h[0], h[1] = 0, typ
	binary.BigEndian.PutUint32(h[4:8], 3)
	binary.BigEndian.PutUint32(h[8:12], length)
	return h
}

func TestCoalescer(t *testing.T) {
	body := []byte("hello")
	windowUpdate := header(1, 65536)
	tests := []struct {
		name   string
		writes [][]byte
		want   [][]byte
	}{
		{
			name:   "data header joins its body",
			writes: [][]byte{header(0, 5), body},
			want:   [][]byte{append(header(0, 5), body...)},
		},
		{
			name:   "other frames pass at once",
			writes: [][]byte{windowUpdate, header(0, 0)},
			want:   [][]byte{windowUpdate, header(0, 0)},
		},
		{
			name:   "a write that is not the announced body releases the header first",
			writes: [][]byte{header(0, 5), []byte("much longer than five")},
			want:   [][]byte{header(0, 5), []byte("much longer than five")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := &recordConn{}
			c := newCoalescer(rc)
			for _, w := range tt.writes {
				if n, err := c.Write(w); err != nil || n != len(w) {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			if diff := cmp.Diff(tt.want, rc.writes); diff != "" {
				t.Errorf("frames on the wire (-want +got):\n%s", diff)
			}
		})
	}
}
