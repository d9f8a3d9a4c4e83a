package wire

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// HalfCloser is a byte stream whose write side can be closed on its own, like *net.TCPConn.
// CloseWrite flushes and makes the peer's Read return io.EOF while reading goes on; Close ends both
// directions, and a peer that has not finished writing sees ErrStreamAborted.
type HalfCloser interface {
	io.ReadWriteCloser
	CloseWrite() error
}

// Stream is one proxied connection or UDP association inside a tunnel session. Reads and writes may
// run concurrently with each other, but not with themselves.
type Stream struct {
	ys        io.ReadWriteCloser // a *yamux.Stream in a session; anything for Wrap
	codec     Compression
	codecs    *codecs
	ownCodecs bool
	req       OpenRequest

	rmu     sync.Mutex
	hdr     [blockCompHeaderSize]byte
	hdrN    int // header bytes read so far; reads survive deadlines mid-block
	rawLeft int // bytes of the current raw block still unread
	enc     *[]byte
	encN    int // compressed payload bytes read so far
	encLen  int
	rawLen  int
	dec     *[]byte
	pending []byte // decoded bytes not yet returned
	rerr    error  // sticky read error (io.EOF, ErrStreamAborted, corruption)

	wmu    sync.Mutex
	skip   int    // blocks left to send uncompressed
	backof int    // next skip length
	wpend  []byte // rest of a block a write deadline interrupted; it goes out before anything else

	mu         sync.Mutex
	sentEnd    bool
	gotEnd     bool
	closed     bool
	aborted    bool
	watch      bool
	readClosed bool

	bg sync.WaitGroup // background readers (CloseRead, watchAbort); tests wait for them
}

func newStream(ys io.ReadWriteCloser, codec Compression, c *codecs, req OpenRequest) *Stream {
	return &Stream{ys: ys, codec: codec, codecs: c, req: req, backof: 1}
}

// Wrap applies the stream framing and codec to any byte stream, for tests and for transports other
// than yamux. Close must mean "no more writes from me" on rwc for the half-close rules to hold, as it
// does for a yamux stream; on a TCP connection, end blocks still work but an abort is only seen when
// the connection closes. Streams from a Session share codec state; a wrapped one owns its own.
func Wrap(rwc io.ReadWriteCloser, codec Compression) (*Stream, error) {
	if !codec.known() {
		return nil, fmt.Errorf("codec %q: %w", codec, ErrUnsupported)
	}
	s := newStream(rwc, codec, newCodecs(), OpenRequest{})
	s.ownCodecs = true
	return s, nil
}

// Request is the open request that created the stream.
func (s *Stream) Request() OpenRequest { return s.req }

// Compression is the codec both directions use.
func (s *Stream) Compression() Compression { return s.codec }

// ID is yamux's stream id, for logs; 0 for a wrapped stream.
func (s *Stream) ID() uint32 {
	if y, ok := s.ys.(interface{ StreamID() uint32 }); ok {
		return y.StreamID()
	}
	return 0
}

// SetDeadline, SetReadDeadline and SetWriteDeadline behave as on net.Conn; a timed-out Read or
// Write can be retried.
func (s *Stream) SetDeadline(t time.Time) error {
	return errors.Join(s.SetReadDeadline(t), s.SetWriteDeadline(t))
}

func (s *Stream) SetReadDeadline(t time.Time) error {
	if d, ok := s.ys.(interface{ SetReadDeadline(time.Time) error }); ok {
		return d.SetReadDeadline(t)
	}
	return fmt.Errorf("set read deadline: %w", ErrUnsupported)
}

func (s *Stream) SetWriteDeadline(t time.Time) error {
	if d, ok := s.ys.(interface{ SetWriteDeadline(time.Time) error }); ok {
		return d.SetWriteDeadline(t)
	}
	return fmt.Errorf("set write deadline: %w", ErrUnsupported)
}

// LocalAddr and RemoteAddr make a Stream usable where a net.Conn is expected.
func (s *Stream) LocalAddr() net.Addr {
	if c, ok := s.ys.(interface{ LocalAddr() net.Addr }); ok {
		return c.LocalAddr()
	}
	return nil
}

func (s *Stream) RemoteAddr() net.Addr {
	if c, ok := s.ys.(interface{ RemoteAddr() net.Addr }); ok {
		return c.RemoteAddr()
	}
	return nil
}

// Read returns decoded stream data, io.EOF after the peer's CloseWrite, or ErrStreamAborted.
func (s *Stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.mu.Lock()
	closed, readClosed := s.closed, s.readClosed
	s.mu.Unlock()
	switch {
	case closed:
		return 0, fmt.Errorf("read stream: %w", net.ErrClosed)
	case readClosed:
		return 0, io.EOF
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	return s.read(p)
}

func (s *Stream) read(p []byte) (int, error) {
	for {
		if len(s.pending) > 0 {
			n := copy(p, s.pending)
			s.pending = s.pending[n:]
			if len(s.pending) == 0 {
				s.codecs.putBuf(s.dec)
				s.dec, s.pending = nil, nil
			}
			return n, nil
		}
		if s.rerr != nil {
			return 0, s.rerr
		}
		if s.rawLeft > 0 {
			n, err := s.ys.Read(p[:min(len(p), s.rawLeft)])
			s.rawLeft -= n
			if err != nil {
				err = s.readFailed(err, true)
			}
			return n, err
		}
		if err := s.readBlock(); err != nil {
			return 0, err
		}
	}
}

// readBlock advances to the next block: it reads the header and, for compressed blocks, the whole
// payload, keeping partial progress when a deadline interrupts it.
func (s *Stream) readBlock() error {
	need := blockHeaderSize
	if s.hdrN >= 1 && (s.hdr[0] == blockS2 || s.hdr[0] == blockZstd) {
		need = blockCompHeaderSize
	}
	for s.hdrN < need {
		n, err := s.ys.Read(s.hdr[s.hdrN:need])
		s.hdrN += n
		if err != nil {
			return s.readFailed(err, s.hdrN > 0)
		}
		if s.hdrN >= 1 && (s.hdr[0] == blockS2 || s.hdr[0] == blockZstd) {
			need = blockCompHeaderSize
		}
	}
	typ, size := s.hdr[0], uint24(s.hdr[1:4])
	switch typ {
	case blockRaw:
		if size > MaxBlockSize {
			return s.corrupt(fmt.Errorf("raw block of %d bytes: %w", size, ErrMalformed))
		}
		s.hdrN, s.rawLeft = 0, size
		return nil
	case blockEnd:
		if size != 0 {
			return s.corrupt(fmt.Errorf("end block with length %d: %w", size, ErrMalformed))
		}
		s.hdrN = 0
		s.rerr = io.EOF
		s.endReceived()
		return io.EOF
	case blockS2, blockZstd:
	default:
		return s.corrupt(fmt.Errorf("block type 0x%02x: %w", typ, ErrMalformed))
	}
	rawLen := uint24(s.hdr[4:7])
	if size == 0 || size > maxEncodedBlock()-blockCompHeaderSize || rawLen == 0 || rawLen > MaxBlockSize {
		return s.corrupt(fmt.Errorf("compressed block %d->%d bytes: %w", size, rawLen, ErrMalformed))
	}
	if s.enc == nil {
		s.enc, s.encN, s.encLen, s.rawLen = s.codecs.getBuf(), 0, size, rawLen
	}
	buf := (*s.enc)[:s.encLen]
	for s.encN < s.encLen {
		n, err := s.ys.Read(buf[s.encN:])
		s.encN += n
		if err != nil {
			return s.readFailed(err, true)
		}
	}
	s.dec = s.codecs.getBuf()
	out, err := s.codecs.decodeBlock((*s.dec)[:0:MaxBlockSize], typ, buf, s.rawLen)
	s.codecs.putBuf(s.enc)
	s.enc, s.hdrN = nil, 0
	if err != nil {
		s.codecs.putBuf(s.dec)
		s.dec = nil
		return s.corrupt(err)
	}
	s.pending = out
	return nil
}

// readFailed turns an error from yamux into the stream's error. Timeouts are not sticky so that the
// caller may retry. A FIN in the middle of a block, or without an end block, is an abort.
func (s *Stream) readFailed(err error, midBlock bool) error {
	if isTimeout(err) {
		s.mu.Lock()
		closed := s.closed
		s.mu.Unlock()
		if closed { // Close set a past deadline to release us
			return fmt.Errorf("read stream: %w", net.ErrClosed)
		}
		return err
	}
	if errors.Is(err, io.EOF) {
		s.abortedByPeer()
		s.rerr = ErrStreamAborted
		if midBlock {
			s.rerr = fmt.Errorf("%w: closed in the middle of a block", ErrStreamAborted)
		}
		return s.rerr
	}
	if errors.Is(err, yamux.ErrConnectionReset) || errors.Is(err, yamux.ErrSessionShutdown) || errors.Is(err, yamux.ErrStreamClosed) {
		s.rerr = fmt.Errorf("%w: %w", ErrStreamAborted, err)
		return s.rerr
	}
	s.rerr = fmt.Errorf("read stream: %w", err)
	return s.rerr
}

// corrupt records a framing violation and closes the stream, since nothing after it can be trusted.
func (s *Stream) corrupt(err error) error {
	s.rerr = err
	_ = s.Close()
	return err
}

// Write frames p into blocks of at most MaxBlockSize, compressing each when it pays. It returns only
// once yamux has taken every block, which is what gives a slow reader back-pressure.
func (s *Stream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	done, aborted := s.sentEnd || s.closed, s.aborted
	s.mu.Unlock()
	switch {
	case aborted:
		return 0, ErrStreamAborted
	case done:
		return 0, ErrWriteClosed
	}
	if err := s.flushPending(); err != nil {
		return 0, err
	}
	buf := s.codecs.getBufFor(min(len(p), MaxBlockSize))
	defer s.codecs.putBuf(buf)
	written := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), MaxBlockSize)]
		codec := s.codec
		if s.skip > 0 {
			s.skip--
			codec = CompressionNone
		}
		block, compressed, err := s.codecs.encodeBlock((*buf)[:0], codec, chunk)
		if err != nil {
			return written, err
		}
		if codec != CompressionNone && len(chunk) >= minCompressSize {
			if compressed {
				s.backof = 1
			} else {
				s.skip, s.backof = s.backof, min(s.backof*2, maxSkipBlocks)
			}
		}
		if nw, err := s.ys.Write(block); err != nil {
			if nw > 0 && isTimeout(err) {
				// Half a block is on the wire: keep the rest so the framing survives a retry,
				// and count the chunk as taken, as a buffered writer would.
				s.wpend = append([]byte(nil), block[nw:]...)
				written += len(chunk)
			}
			return written, s.writeFailed(err)
		}
		written += len(chunk)
		p = p[len(chunk):]
	}
	return written, nil
}

func (s *Stream) flushPending() error {
	if len(s.wpend) == 0 {
		return nil
	}
	nw, err := s.ys.Write(s.wpend)
	s.wpend = s.wpend[nw:]
	if err != nil {
		return s.writeFailed(err)
	}
	s.wpend = nil
	return nil
}

func (s *Stream) writeFailed(err error) error {
	if isTimeout(err) {
		return err
	}
	s.mu.Lock()
	aborted := s.aborted
	s.mu.Unlock()
	if aborted || errors.Is(err, yamux.ErrConnectionReset) || errors.Is(err, yamux.ErrSessionShutdown) {
		return fmt.Errorf("%w: %w", ErrStreamAborted, err)
	}
	return fmt.Errorf("write stream: %w", err)
}

// CloseWrite sends the end block: the peer reads io.EOF once it has read everything before it, and
// may keep writing to us.
func (s *Stream) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	already, gone := s.sentEnd, s.closed || s.aborted
	s.mu.Unlock()
	if gone || (already && len(s.wpend) == 0) {
		return nil
	}
	if err := s.flushPending(); err != nil {
		return err
	}
	if !already {
		s.mu.Lock()
		s.sentEnd = true
		s.mu.Unlock()
		end := []byte{blockEnd, 0, 0, 0}
		if nw, err := s.ys.Write(end); err != nil {
			if nw > 0 && isTimeout(err) {
				s.wpend = end[nw:]
			} else if nw == 0 {
				s.mu.Lock()
				s.sentEnd = false // nothing went out: a retry must send the end block
				s.mu.Unlock()
			}
			return s.writeFailed(err)
		}
	}
	s.mu.Lock()
	finished := s.gotEnd
	s.mu.Unlock()
	if finished {
		// Both end blocks are out: the FIN is housekeeping, and its failure (the session closing
		// right after the peer read our end) loses nothing.
		_ = s.ys.Close()
	}
	return nil
}

// CloseRead declares that we will not read any more: whatever the peer still sends is discarded. A
// stream must always be read (to an error) or have CloseRead called, because reading is how an
// abort by the peer is noticed; a writer that does neither stays blocked if the peer goes away.
func (s *Stream) CloseRead() error {
	s.mu.Lock()
	if s.readClosed || s.closed {
		s.mu.Unlock()
		return nil
	}
	s.readClosed = true
	s.mu.Unlock()
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		buf := make([]byte, 4<<10)
		for {
			s.rmu.Lock()
			_, err := s.read(buf)
			s.rmu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return nil
}

// Close ends both directions. If either direction has not finished with an end block, the peer sees
// ErrStreamAborted, as it would see a reset on TCP.
func (s *Stream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	// A later Read must not block on data nobody will send.
	_ = s.SetReadDeadline(time.Unix(1, 0))
	err := s.ys.Close()
	if s.ownCodecs {
		s.codecs.close()
	}
	return err
}

// endReceived runs when the peer's end block arrives. If we are done writing too, the stream is
// finished; otherwise a watcher waits for the peer's FIN, which now can only mean "abort", so that a
// writer blocked on a peer that went away is released instead of waiting for the window forever.
func (s *Stream) endReceived() {
	s.mu.Lock()
	s.gotEnd = true
	finished := s.sentEnd
	startWatch := !finished && !s.closed && !s.watch
	s.watch = s.watch || startWatch
	s.mu.Unlock()
	if finished {
		_ = s.ys.Close()
		return
	}
	if startWatch {
		s.bg.Add(1)
		go s.watchAbort()
	}
}

func (s *Stream) watchAbort() {
	defer s.bg.Done()
	var b [1]byte
	// The stream lock is not held: Read is done for good (rerr is sticky), so nobody else reads ys.
	_, err := s.ys.Read(b[:])
	if err == nil {
		err = io.EOF // data after the end block: treat as abort as well
	}
	s.mu.Lock()
	finished := s.sentEnd
	s.mu.Unlock()
	if !finished && !isTimeout(err) {
		s.abortedByPeer()
	}
}

// abortedByPeer releases our writer: closing our side of the yamux stream turns a Write blocked on
// the send window into an error at once.
func (s *Stream) abortedByPeer() {
	s.mu.Lock()
	s.aborted = !s.sentEnd || !s.gotEnd
	s.mu.Unlock()
	_ = s.ys.Close()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// VerbStream is a verb's own channel as the plugin's verb reads it (a steal's events): a *Stream, or
// the plugin tunnel's stream that opens itself again on the resumed tunnel after a reconnect.
type VerbStream interface {
	io.Reader
	CloseWrite() error
	Close() error
}
