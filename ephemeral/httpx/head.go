package httpx

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/probe"
	"github.com/trafficlab/kubectl-trafficlab/internal/httpsyntax"
)

var (
	// ErrIncomplete means the bytes end before the head does; read more and parse again.
	ErrIncomplete = httpsyntax.ErrIncomplete
	// ErrHeadTooLarge means no end of head was found within MaxHeadSize bytes.
	ErrHeadTooLarge = errors.New("http head larger than 64 KiB")
	// ErrMalformed is wrapped by every syntax error and every framing the proxy refuses to guess at.
	ErrMalformed = httpsyntax.ErrMalformed
)

// HeaderField is one header line as received: the name keeps its case, the value is trimmed of the
// whitespace around it.
type HeaderField struct {
	Name, Value string
}

// RequestHead is an HTTP request's head. For HTTP/1 it is parsed from the bytes on the wire, which
// Raw keeps for forwarding; for HTTP/2 it is built from the decoded header block, with :authority
// added as a Host field so that a `^Host:` filter works with both.
type RequestHead struct {
	Method string
	// Target is the request target as sent: origin form (path and query) for ordinary requests, or
	// absolute form for proxy requests; PathQuery gives the path and query of either.
	Target string
	Proto  string // "HTTP/1.1", "HTTP/1.0" or "HTTP/2.0"
	Header []HeaderField
	// ContentLength is the body's length: 0 without a body, -1 when chunked (HTTP/1) or not known up
	// front (HTTP/2).
	ContentLength int64
	Chunked       bool
	// Upgrade is the Upgrade header's value when the request asks for one (Connection: upgrade).
	Upgrade string
	// Close means the client wants the connection closed after this request.
	Close bool
	// Expect100 means the client waits for "100 Continue" before it sends the body.
	Expect100 bool
	// Raw is the HTTP/1 head through its empty line, aliasing the parsed buffer; nil for HTTP/2.
	Raw []byte
}

// ResponseHead is an HTTP/1 response's head.
type ResponseHead struct {
	Proto  string
	Status int
	Reason string
	Header []HeaderField
	// ContentLength is -1 when the response does not give one.
	ContentLength int64
	Chunked       bool
	// Close means the server closes the connection after this response; a response without a length
	// that is not chunked also ends at close.
	Close bool
	Raw   []byte
}

// Get returns the first value of the named header (case-insensitive), or "".
func (h *RequestHead) Get(name string) string { return getField(h.Header, name) }

// Get returns the first value of the named header (case-insensitive), or "".
func (h *ResponseHead) Get(name string) string { return getField(h.Header, name) }

func getField(fs []HeaderField, name string) string {
	for _, f := range fs {
		if httpsyntax.EqualFold(f.Name, name) {
			return f.Value
		}
	}
	return ""
}

// ProbeRequest is the request as probe.Rule reads it, on a connection from source to the pod's
// address dest.
func (h *RequestHead) ProbeRequest(source, dest netip.AddrPort) probe.Request {
	return probe.Request{Source: source, Port: dest.Port(), Path: h.PathQuery(), Header: h.HeaderLines()}
}

// PathQuery is the path and query the request is for: Target itself in origin form, with scheme and
// authority removed in absolute form ("http://host/a?b" is "/a?b").
func (h *RequestHead) PathQuery() string {
	p, _ := httpsyntax.SplitTarget(h.Target)
	return p
}

// addHost makes HTTP/2's :authority visible as a Host field, unless the client sent both.
func (h *RequestHead) addHost(authority string) {
	if authority == "" || getField(h.Header, "Host") != "" {
		return
	}
	h.Header = append(h.Header, HeaderField{Name: "Host", Value: authority})
}

// ParseRequestHead parses the HTTP/1 request head at the start of b. It is strict where a lenient
// reading could frame the body differently from the app behind the proxy (both Content-Length and
// Transfer-Encoding, differing lengths, transfer codings other than chunked, folded header lines),
// because a disagreement there would let one request's body be routed as the next request. Bytes
// after the head are ignored; len(h.Raw) is where the body starts.
func ParseRequestHead(b []byte) (RequestHead, error) {
	n, err := headLen(b)
	if err != nil {
		return RequestHead{}, err
	}
	// One string for all the head's strings: a request costs one allocation here, not one per field.
	s := string(b[:n])
	line, rest := httpsyntax.CutLine(s)
	h := RequestHead{Raw: b[:n:n]}
	method, target, proto, ok := httpsyntax.ParseRequestLine(line)
	if !ok {
		return RequestHead{}, fmt.Errorf("request line %q: %w", clip(line), ErrMalformed)
	}
	h.Method, h.Target, h.Proto = method, target, proto
	if h.Header, err = parseFields(rest); err != nil {
		return RequestHead{}, err
	}
	if err := h.frame(); err != nil {
		return RequestHead{}, err
	}
	return h, nil
}

func (h *RequestHead) frame() error {
	f, err := scanFraming(h.Header)
	if err != nil {
		return err
	}
	http10 := h.Proto == "HTTP/1.0"
	switch {
	case f.te != "" && f.cl >= 0:
		return fmt.Errorf("request with both Transfer-Encoding and Content-Length: %w", ErrMalformed)
	case f.te != "" && (http10 || !httpsyntax.EqualFold(f.te, "chunked")):
		return fmt.Errorf("request Transfer-Encoding %q: %w", clip(f.te), ErrMalformed)
	case f.te != "":
		h.Chunked, h.ContentLength = true, -1
	case f.cl >= 0:
		h.ContentLength = f.cl
	}
	h.Close = f.close || (http10 && !f.keepAlive)
	if f.upgrade && !http10 {
		h.Upgrade = f.upgradeValue
	}
	h.Expect100 = !http10 && httpsyntax.EqualFold(f.expect, "100-continue")
	return nil
}

// ParseResponseHead parses the HTTP/1 response head at the start of b.
func ParseResponseHead(b []byte) (ResponseHead, error) {
	n, err := headLen(b)
	if err != nil {
		return ResponseHead{}, err
	}
	s := string(b[:n])
	line, rest := httpsyntax.CutLine(s)
	h := ResponseHead{Raw: b[:n:n], ContentLength: -1}
	proto, status, reason, ok := httpsyntax.ParseStatusLine(line)
	if !ok {
		return ResponseHead{}, fmt.Errorf("status line %q: %w", clip(line), ErrMalformed)
	}
	h.Proto, h.Status, h.Reason = proto, status, reason
	if h.Header, err = parseFields(rest); err != nil {
		return ResponseHead{}, err
	}
	f, err := scanFraming(h.Header)
	if err != nil {
		return ResponseHead{}, err
	}
	// RFC 9112 6.3: Transfer-Encoding overrides Content-Length, and a response whose last coding is
	// not chunked runs until the connection closes.
	switch {
	case f.te != "" && httpsyntax.EqualFold(httpsyntax.LastElement(f.te), "chunked"):
		h.Chunked = true
	case f.te != "":
		h.Close = true
	case f.cl >= 0:
		h.ContentLength = f.cl
	}
	h.Close = h.Close || f.close || (proto == "HTTP/1.0" && !f.keepAlive)
	return h, nil
}

// framing is what the framing-relevant header fields say.
type framing struct {
	cl                   int64
	te                   string // all Transfer-Encoding values, comma-joined
	close, keepAlive     bool
	upgrade              bool // Connection has the upgrade token
	upgradeValue, expect string
}

func scanFraming(fs []HeaderField) (framing, error) {
	f := framing{cl: -1}
	for _, hf := range fs {
		switch {
		case httpsyntax.EqualFold(hf.Name, "Content-Length"):
			n, ok := httpsyntax.ParseContentLength(hf.Value)
			if !ok || (f.cl >= 0 && f.cl != n) {
				return f, fmt.Errorf("Content-Length %q: %w", clip(hf.Value), ErrMalformed)
			}
			f.cl = n
		case httpsyntax.EqualFold(hf.Name, "Transfer-Encoding"):
			f.te = httpsyntax.JoinList(f.te, hf.Value)
		case httpsyntax.EqualFold(hf.Name, "Connection"):
			for t := range httpsyntax.ListElements(hf.Value) {
				switch {
				case httpsyntax.EqualFold(t, "close"):
					f.close = true
				case httpsyntax.EqualFold(t, "keep-alive"):
					f.keepAlive = true
				case httpsyntax.EqualFold(t, "upgrade"):
					f.upgrade = true
				}
			}
		case httpsyntax.EqualFold(hf.Name, "Upgrade"):
			f.upgradeValue = httpsyntax.JoinList(f.upgradeValue, hf.Value)
		case httpsyntax.EqualFold(hf.Name, "Expect"):
			f.expect = hf.Value
		}
	}
	if f.te != "" && httpsyntax.LastElement(f.te) == "" {
		// An empty list ("Transfer-Encoding: ,") is as bad as an unknown coding.
		return f, fmt.Errorf("Transfer-Encoding %q: %w", clip(f.te), ErrMalformed)
	}
	return f, nil
}

// headLen returns the length of the head at the start of b, through its empty line.
func headLen(b []byte) (int, error) {
	n, err := httpsyntax.HeadLen(b, MaxHeadSize)
	if errors.Is(err, httpsyntax.ErrTooLarge) {
		return 0, ErrHeadTooLarge
	}
	return n, err
}

// parseFields parses header lines up to the empty line that ends s.
func parseFields(s string) ([]HeaderField, error) {
	fs := make([]HeaderField, 0, strings.Count(s, "\n"))
	for {
		line, rest := httpsyntax.CutLine(s)
		if line == "" {
			return fs, nil
		}
		s = rest
		if line[0] == ' ' || line[0] == '\t' {
			// Folded lines are obsolete; RFC 9112 5.2 lets a server reject them, which beats guessing
			// whether the app unfolds them.
			return nil, fmt.Errorf("folded header line %q: %w", clip(line), ErrMalformed)
		}
		name, value, ok := httpsyntax.CutField(line)
		if !ok {
			return nil, fmt.Errorf("header line %q: %w", clip(line), ErrMalformed)
		}
		fs = append(fs, HeaderField{Name: name, Value: value})
	}
}

// clip keeps error messages about hostile input short.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// HeaderLines is the request's headers as the "Name: value" lines a steal filter matches, one per
// field, in the order they came.
func (h *RequestHead) HeaderLines() []string {
	lines := make([]string, len(h.Header))
	for i, f := range h.Header {
		lines[i] = f.Name + ": " + f.Value
	}
	return lines
}
