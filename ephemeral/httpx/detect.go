package httpx

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/trafficlab/kubectl-trafficlab/internal/httpsyntax"
)

// Proto is the protocol a connection speaks, as far as routing is concerned.
type Proto int

const (
	// ProtoUnknown is anything that is not recognisably HTTP; it is relayed raw.
	ProtoUnknown Proto = iota
	// ProtoHTTP1 is HTTP/1.0 or HTTP/1.1 (including connections that later upgrade).
	ProtoHTTP1
	// ProtoH2C is cleartext HTTP/2 with prior knowledge: the connection starts with the client preface.
	ProtoH2C
)

func (p Proto) String() string {
	switch p {
	case ProtoHTTP1:
		return "HTTP/1"
	case ProtoH2C:
		return "h2c"
	}
	return "unknown"
}

// MaxHeadSize bounds an HTTP/1 head (request or response line plus header lines) and the bytes Peek
// reads. net/http allows 1 MiB, but a filter that buffers heads per connection should not, and 64 KiB
// is what common servers (nginx large_client_header_buffers 4x8k, Node's 16 KiB) stay far below.
const MaxHeadSize = 64 << 10

// Detect names the protocol of a connection from its first bytes. decided is false while prefix is
// too short to tell (a client that sent "GE" so far); once decided, the answer holds for every longer
// prefix, so a caller may stop reading. An HTTP/1 verdict rests on the method and the space after it;
// whether the head that follows is valid is the parser's business.
func Detect(prefix []byte) (p Proto, decided bool) {
	if len(prefix) == 0 {
		return ProtoUnknown, false
	}
	if match, whole := httpsyntax.MatchH2Preface(prefix); match {
		if whole {
			return ProtoH2C, true
		}
		// "PRI" is not a well-known method, so a preface prefix cannot also be a method prefix.
		return ProtoUnknown, false
	}
	// Only well-known methods: any token is a valid method, but accepting any token would take text
	// protocols (SMTP's "EHLO host", Redis inline commands) for HTTP; they would then fail to parse and
	// go raw to the app anyway, just later.
	found, more := httpsyntax.StartsWithMethod(prefix)
	switch {
	case found:
		return ProtoHTTP1, true
	case more:
		return ProtoUnknown, false
	}
	return ProtoUnknown, true
}

// Peeked is what Peek learned about a connection.
type Peeked struct {
	Proto Proto
	// Prefix is every byte Peek read; the caller replays it to whichever side gets the connection.
	Prefix []byte
	// First is the first request's head (HTTP/1, or HTTP/2's first HEADERS decoded), or nil when it
	// was not complete within the timeout or the size limit, or was malformed. Its Raw aliases Prefix.
	First *RequestHead
}

// Peek reads from c until Detect decides and, for HTTP, until the first request's head is complete,
// or until timeout passes. A client that sends nothing within timeout (a server-first protocol such as
// SMTP or MySQL) yields ProtoUnknown with an empty Prefix and no error. The read deadline is cleared
// before Peek returns. The error is io.EOF when the client closed without sending anything, or a read
// error; Prefix is valid in every case.
func Peek(c net.Conn, timeout time.Duration) (Peeked, error) {
	var pk Peeked
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return pk, err
	}
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	buf := make([]byte, 0, 2048)
	for {
		if done := pk.examine(buf); done {
			pk.Prefix = buf
			return pk, nil
		}
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, min(cap(buf), MaxHeadSize-len(buf)))
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			pk.examine(buf)
			pk.Prefix = buf
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded):
				return pk, nil
			case errors.Is(err, io.EOF) && len(buf) > 0:
				// What was sent still goes to the app, which sees the same EOF after it.
				return pk, nil
			}
			return pk, err
		}
	}
}

// examine updates pk from the bytes so far and reports whether reading more is pointless.
func (pk *Peeked) examine(b []byte) bool {
	p, decided := Detect(b)
	pk.Proto = p
	if !decided {
		return len(b) >= MaxHeadSize
	}
	switch p {
	case ProtoHTTP1:
		h, err := ParseRequestHead(b)
		if err == nil {
			pk.First = &h
			return true
		}
		return !errors.Is(err, ErrIncomplete) || len(b) >= MaxHeadSize
	case ProtoH2C:
		h, err := parseH2First(b[len(httpsyntax.H2Preface):])
		if err == nil {
			pk.First = h
			return true
		}
		return !errors.Is(err, ErrIncomplete) || len(b) >= MaxHeadSize
	}
	return true
}

// parseH2First decodes the first request's header block from the frames after the client preface
// (SETTINGS, WINDOW_UPDATE, PRIORITY may come before it). It re-parses from the start on every call:
// a fresh decoder is what the first block needs (the dynamic table starts empty), and Peek's input is
// at most 64 KiB.
func parseH2First(b []byte) (*RequestHead, error) {
	fr := http2.NewFramer(io.Discard, bytes.NewReader(b))
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = MaxHeadSize
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, ErrIncomplete
			}
			return nil, err
		}
		mh, ok := f.(*http2.MetaHeadersFrame)
		if !ok {
			continue
		}
		h := &RequestHead{Proto: "HTTP/2.0", ContentLength: -1}
		host := ""
		for _, hf := range mh.Fields {
			switch hf.Name {
			case ":method":
				h.Method = hf.Value
			case ":path":
				h.Target = hf.Value
			case ":authority":
				host = hf.Value
			default:
				if hf.IsPseudo() {
					continue
				}
				h.Header = append(h.Header, HeaderField{Name: hf.Name, Value: hf.Value})
			}
		}
		h.addHost(host)
		if mh.StreamEnded() {
			h.ContentLength = 0
		}
		return h, nil
	}
}
