package httpx

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/trafficlab/kubectl-trafficlab/internal/httpsyntax"
)

// bufioSize is the size of each pooled bufio.Reader and Writer (net/http uses 4 KiB). A head larger
// than one buffer is still read, a line at a time.
const bufioSize = 8 << 10

// copyBufSize matches wire.Join's buffers: large enough that a big body moves in few syscalls, since
// bufio reads and writes straight through its buffer for slices at least this large.
const copyBufSize = 32 << 10

var (
	readerPool  sync.Pool
	writerPool  sync.Pool
	copyBufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}
)

func getReader(r io.Reader) *bufio.Reader {
	if v, ok := readerPool.Get().(*bufio.Reader); ok {
		v.Reset(r)
		return v
	}
	return bufio.NewReaderSize(r, bufioSize)
}

// putReader returns br to the pool; nil is a reader parked already (h1conn.park).
func putReader(br *bufio.Reader) {
	if br == nil {
		return
	}
	br.Reset(nil)
	readerPool.Put(br)
}

func getWriter(w io.Writer) *bufio.Writer {
	if v, ok := writerPool.Get().(*bufio.Writer); ok {
		v.Reset(w)
		return v
	}
	return bufio.NewWriterSize(w, bufioSize)
}

// putWriter returns bw to the pool; nil is a writer parked already (h1conn.park).
func putWriter(bw *bufio.Writer) {
	if bw == nil {
		return
	}
	bw.Reset(nil)
	writerPool.Put(bw)
}

// writeError marks a failure on the destination side of a copy, so that callers can tell a peer
// that stopped reading from one that stopped sending.
type writeError struct{ err error }

func (e writeError) Error() string { return e.err.Error() }
func (e writeError) Unwrap() error { return e.err }

func isWriteError(err error) bool {
	var we writeError
	return errors.As(err, &we)
}

// copyN relays exactly n bytes. Whenever src has nothing buffered, so before each read that may
// block, it flushes dst: what came before (a request head whose client waits for 100 Continue, the
// last piece of a streamed body) goes out now, and big bodies still move in large writes.
func copyN(dst *bufio.Writer, src *bufio.Reader, n int64) (int64, error) {
	return copyBody(dst, src, n)
}

// copyToEOF relays src until it ends; a body without framing ends when its connection does.
func copyToEOF(dst *bufio.Writer, src *bufio.Reader) (int64, error) {
	return copyBody(dst, src, -1)
}

func copyBody(dst *bufio.Writer, src *bufio.Reader, n int64) (int64, error) {
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	buf := *bp
	var written int64
	for n < 0 || written < n {
		if src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return written, writeError{err}
			}
		}
		p := buf
		if n >= 0 && n-written < int64(len(p)) {
			p = p[:n-written]
		}
		r, err := src.Read(p)
		if r > 0 {
			if _, werr := dst.Write(p[:r]); werr != nil {
				return written, writeError{werr}
			}
			written += int64(r)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if n < 0 {
					return written, nil
				}
				err = io.ErrUnexpectedEOF
			}
			return written, err
		}
	}
	return written, nil
}

// maxChunkLine bounds a chunk-size line with its extensions; no real client comes near it.
const maxChunkLine = 4 << 10

// copyChunked relays one chunked body (RFC 9112 7.1) byte for byte, chunk extensions and trailer
// section included, and stops right after it. Unlike heads, chunk framing must end its lines in CRLF:
// net/http rejects a bare LF there (CVE-2025-22871), and a proxy that read such a body differently
// from the app behind it would take the rest of the body for the next request.
func copyChunked(dst *bufio.Writer, src *bufio.Reader) (int64, error) {
	var written int64
	for {
		line, err := readChunkLine(dst, src)
		if err != nil {
			return written, err
		}
		size, err := chunkSize(line)
		if err != nil {
			return written, err
		}
		if _, err := dst.Write(line); err != nil {
			return written, writeError{err}
		}
		written += int64(len(line))
		if size == 0 {
			n, err := copyTrailers(dst, src)
			return written + n, err
		}
		n, err := copyN(dst, src, size)
		written += n
		if err != nil {
			return written, err
		}
		crlf, err := readChunkLine(dst, src)
		if err != nil {
			return written, err
		}
		if string(crlf) != "\r\n" {
			return written, fmt.Errorf("chunk data not followed by CRLF: %w", ErrMalformed)
		}
		if _, err := dst.Write(crlf); err != nil {
			return written, writeError{err}
		}
		written += int64(len(crlf))
	}
}

// readChunkLine reads one CRLF-terminated line of chunk framing; the slice is valid until src's next
// read. Before it blocks it flushes dst, so that each chunk goes out whole as soon as it is in.
func readChunkLine(dst *bufio.Writer, src *bufio.Reader) ([]byte, error) {
	if src.Buffered() == 0 {
		if err := dst.Flush(); err != nil {
			return nil, writeError{err}
		}
	}
	line, err := src.ReadSlice('\n')
	switch {
	case errors.Is(err, bufio.ErrBufferFull) || len(line) > maxChunkLine:
		return nil, fmt.Errorf("chunk line longer than %d bytes: %w", maxChunkLine, ErrMalformed)
	case errors.Is(err, io.EOF):
		return nil, io.ErrUnexpectedEOF
	case err != nil:
		return nil, err
	case len(line) < 2 || line[len(line)-2] != '\r':
		return nil, fmt.Errorf("chunk line %q without CRLF: %w", clip(string(line)), ErrMalformed)
	}
	return line, nil
}

// chunkSize parses a chunk-size line with its CRLF.
func chunkSize(line []byte) (int64, error) {
	size, crlf := bytes.CutSuffix(line, []byte("\r\n"))
	n, ok := httpsyntax.ParseChunkSize(size)
	if !ok || !crlf {
		return 0, fmt.Errorf("chunk size line %q: %w", clip(string(line)), ErrMalformed)
	}
	return n, nil
}

// copyTrailers relays the trailer section after the last chunk, through its empty line.
func copyTrailers(dst *bufio.Writer, src *bufio.Reader) (int64, error) {
	var written int64
	for {
		line, err := readChunkLine(dst, src)
		if err != nil {
			return written, err
		}
		if written+int64(len(line)) > MaxHeadSize {
			return written, fmt.Errorf("trailers: %w", ErrHeadTooLarge)
		}
		if !httpsyntax.IsFieldValue(string(line[:len(line)-2])) {
			return written, fmt.Errorf("trailer line %q: %w", clip(string(line)), ErrMalformed)
		}
		if _, err := dst.Write(line); err != nil {
			return written, writeError{err}
		}
		written += int64(len(line))
		if len(line) == 2 {
			return written, nil
		}
	}
}

// readHead reads one head (through its empty line) into buf[:0]. Requests may be preceded by empty
// lines (RFC 9112 2.2), which skipBlank drops. io.EOF means the peer closed before sending a byte of
// it; a head cut short is io.ErrUnexpectedEOF. With ErrHeadTooLarge buf holds every byte taken from
// br (up to one buffer past MaxHeadSize), so that a caller that relays the connection raw loses none.
func readHead(br *bufio.Reader, buf []byte, skipBlank bool) ([]byte, error) {
	buf = buf[:0]
	lineStart := 0
	for {
		frag, err := br.ReadSlice('\n')
		buf = append(buf, frag...)
		if len(buf) > MaxHeadSize {
			return buf, ErrHeadTooLarge
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil {
			if errors.Is(err, io.EOF) && len(buf) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return buf, err
		}
		line := buf[lineStart:]
		if len(line) == 1 || (len(line) == 2 && line[0] == '\r') {
			if lineStart == 0 && skipBlank {
				buf = buf[:0]
				continue
			}
			return buf, nil
		}
		lineStart = len(buf)
	}
}
