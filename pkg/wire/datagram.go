package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// MaxDatagramSize is the largest UDP payload a datagram frame can carry (16-bit length).
const MaxDatagramSize = 65535

// UDP over a stream: each datagram is a big-endian uint16 length followed by that many bytes. A
// zero-length datagram is legal, as it is in UDP.

// AppendDatagram appends one framed datagram to dst.
func AppendDatagram(dst, p []byte) ([]byte, error) {
	if len(p) > MaxDatagramSize {
		return dst, fmt.Errorf("datagram of %d bytes: %w", len(p), ErrDatagramTooLarge)
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(p)))
	return append(dst, p...), nil
}

// WriteDatagram writes one datagram with a single Write, so that concurrent writers holding their
// own lock never interleave.
func WriteDatagram(w io.Writer, p []byte) error {
	buf, err := AppendDatagram(make([]byte, 0, 2+len(p)), p)
	if err != nil {
		return err
	}
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write datagram: %w", err)
	}
	return nil
}

// ReadDatagram reads one datagram into buf and returns its length. A datagram longer than buf is
// consumed and reported as ErrDatagramTooLarge, so the stream stays in sync, like a truncated
// recvmsg. io.EOF means a clean end between datagrams.
func ReadDatagram(r io.Reader, buf []byte) (int, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, err
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n > len(buf) {
		if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
			return 0, fmt.Errorf("read datagram: %w", unexpected(err))
		}
		return 0, fmt.Errorf("datagram of %d bytes, buffer %d: %w", n, len(buf), ErrDatagramTooLarge)
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		return 0, fmt.Errorf("read datagram: %w", unexpected(err))
	}
	return n, nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// DatagramConn carries a UDP association over a stream. Its methods are safe for concurrent use.
type DatagramConn struct {
	rw  io.ReadWriter
	rmu sync.Mutex
	wmu sync.Mutex
}

// NewDatagramConn frames datagrams on rw, normally a *Stream opened with NetworkUDP.
func NewDatagramConn(rw io.ReadWriter) *DatagramConn { return &DatagramConn{rw: rw} }

// ReadDatagram reads the next datagram into buf.
func (d *DatagramConn) ReadDatagram(buf []byte) (int, error) {
	d.rmu.Lock()
	defer d.rmu.Unlock()
	return ReadDatagram(d.rw, buf)
}

// WriteDatagram sends p as one datagram.
func (d *DatagramConn) WriteDatagram(p []byte) error {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	return WriteDatagram(d.rw, p)
}
