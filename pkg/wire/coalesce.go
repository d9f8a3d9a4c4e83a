package wire

import (
	"encoding/binary"
	"io"
)

// yamux's send loop writes each data frame as two writes, the 12-byte header and then the body. On a
// TCP socket with Nagle off, and on a port-forward stream where every write becomes its own SPDY or
// WebSocket frame (and TLS record), that doubles the frames every proxy on the path handles. The
// coalescer holds a data frame's header back and sends it in one write with its body.
type coalescer struct {
	io.ReadWriteCloser
	hdr    [yamuxHeaderSize]byte
	held   bool
	buf    []byte
	wantBy int // body length the held header announces
}

const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
)

func newCoalescer(conn io.ReadWriteCloser) *coalescer { return &coalescer{ReadWriteCloser: conn} }

// Write is called only from yamux's single send loop, so it needs no lock.
func (c *coalescer) Write(p []byte) (int, error) {
	if c.held {
		c.held = false
		if len(p) == c.wantBy {
			c.buf = append(append(c.buf[:0], c.hdr[:]...), p...)
			if _, err := c.ReadWriteCloser.Write(c.buf); err != nil {
				return 0, err
			}
			return len(p), nil
		}
		// Not the announced body: send the header alone, then this write, as yamux meant.
		if _, err := c.ReadWriteCloser.Write(c.hdr[:]); err != nil {
			return 0, err
		}
	}
	if len(p) == yamuxHeaderSize && p[1] == yamuxTypeData {
		if n := int(binary.BigEndian.Uint32(p[8:12])); n > 0 {
			copy(c.hdr[:], p)
			c.held, c.wantBy = true, n
			return len(p), nil
		}
	}
	return c.ReadWriteCloser.Write(p)
}

// CloseWrite passes a half-close through when the connection has one.
func (c *coalescer) CloseWrite() error {
	if cw, ok := c.ReadWriteCloser.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
