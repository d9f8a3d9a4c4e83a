package transport

import (
	"bytes"
	"testing"
)

// FuzzFrameConn writes any byte stream through frameConn in pieces of any size: the connection gets
// the same bytes, in writes that each end where a frame ends, and nothing that completes a frame is
// held back.
func FuzzFrameConn(f *testing.F) {
	frame := func(id byte, payload string) []byte {
		n := len(payload)
		return append([]byte{0x80, 3, 0, id, 0, byte(n >> 16), byte(n >> 8), byte(n)}, payload...)
	}
	f.Add(append(frame(1, "hello"), frame(2, "")...), []byte{3, 20})
	f.Add(frame(1, string(make([]byte, 300))), []byte{8, 1, 255})
	f.Add([]byte{0, 0, 0, 1, 0, 0xff, 0xff, 0xff}, []byte{})
	f.Fuzz(func(t *testing.T, data, cuts []byte) {
		rec := &writesConn{}
		fc := &frameConn{Conn: rec}
		for i, rest := 0, data; len(rest) > 0; i++ {
			n := len(rest)
			if i < len(cuts) {
				n = min(n, int(cuts[i])+1)
			}
			if w, err := fc.Write(rest[:n]); w != n || err != nil {
				t.Fatalf("Write of %d bytes: %d, %v", n, w, err)
			}
			rest = rest[n:]
		}
		var sent []byte
		for _, w := range rec.writes {
			sent = append(sent, w...)
			if len(w) == 0 || completeFrames(sent) != len(sent) {
				t.Fatalf("a write of %d bytes does not end a frame: %x", len(w), sent)
			}
		}
		if !bytes.Equal(append(sent, fc.buf...), data) {
			t.Fatalf("sent %x and held %x, wrote %x", sent, fc.buf, data)
		}
		if completeFrames(fc.buf) != 0 {
			t.Fatalf("holds %x, which starts with a whole frame", fc.buf)
		}
	})
}
