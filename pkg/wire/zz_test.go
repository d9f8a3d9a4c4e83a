package wire

import (
	"bytes"
	"io"
	"testing"
)

func FuzzZZ(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 'a', 0xff, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		st, _ := Wrap(nopCloser{bytes.NewBuffer(in)}, CompressionNone)
		defer st.Close()
		_, _ = io.ReadAll(readerOnly{st})
	})
}
