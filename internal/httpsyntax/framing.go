package httpsyntax

import (
	"bytes"
	"errors"
	"fmt"
)

var (
	// ErrIncomplete means the bytes end before the head does; read more and parse again.
	ErrIncomplete = errors.New("incomplete http head")
	// ErrTooLarge means no end of head was found within the limit.
	ErrTooLarge = errors.New("http head too large")
	// ErrMalformed is wrapped by every syntax error.
	ErrMalformed = errors.New("malformed http message")
)

// errEmptyStart is a head that starts with its empty line.
var errEmptyStart = fmt.Errorf("head starts with an empty line: %w", ErrMalformed)

// HeadLen returns the length of the head at the start of b, through its empty line, looking at no
// more than limit bytes. Lines end in CRLF or a bare LF (RFC 9112 2.2 lets a recipient accept LF,
// and net/http does). The error is ErrIncomplete when b ends first, ErrTooLarge when the limit does,
// and wraps ErrMalformed for a head that starts with an empty line.
func HeadLen(b []byte, limit int) (int, error) {
	i := 0
	for {
		j := bytes.IndexByte(b[i:min(len(b), limit)], '\n')
		if j < 0 {
			if len(b) >= limit {
				return 0, ErrTooLarge
			}
			return 0, ErrIncomplete
		}
		end := i + j
		if end == i || (end == i+1 && b[i] == '\r') {
			if i == 0 {
				return 0, errEmptyStart
			}
			return end + 1, nil
		}
		i = end + 1
	}
}

// ParseContentLength parses a Content-Length value: digits only (RFC 9110 8.6: no sign, no white
// space inside, no list), at most 18 of them so that it cannot overflow an int64. A list of equal
// values ("5, 5"), which RFC 9110 lets a recipient accept, is refused, as net/http refuses it;
// repeated field lines with the same value are the caller's to accept.
func ParseContentLength(s string) (int64, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	var n int64
	for i := range len(s) {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// maxChunkDigits keeps a chunk size within an int64 (15 hex digits are 60 bits).
const maxChunkDigits = 15

// ParseChunkSize parses a chunk-size line without its line ending (RFC 9112 7.1): hex digits from
// the first byte, then either nothing, trailing white space, or a chunk extension starting with
// ";" that holds no control characters. It takes net/http's reading (no white space before the
// size, none before ";"): RFC 9112 would allow white space before ";", but a line net/http rejects
// must not be one a proxy relays as a chunk, nor one capture decodes as one.
func ParseChunkSize(line []byte) (int64, bool) {
	var n int64
	i := 0
	for ; i < len(line); i++ {
		d, ok := hexDigit(line[i])
		if !ok {
			break
		}
		if i >= maxChunkDigits {
			return 0, false
		}
		n = n<<4 | int64(d)
	}
	if i == 0 {
		return 0, false
	}
	tail := line[i:]
	if len(tail) > 0 && tail[0] == ';' {
		return n, isFieldValue(tail)
	}
	return n, len(bytes.Trim(tail, " \t")) == 0
}

func hexDigit(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
