package httpx

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
)

var (
	// ErrIncomplete means the bytes end before the head does; read more and parse again.
	ErrIncomplete = errors.New("incomplete http head")
	// ErrHeadTooLarge means no end of head was found within MaxHeadSize bytes.
	ErrHeadTooLarge = errors.New("http head larger than 64 KiB")
	// ErrMalformed is wrapped by every syntax error and every framing the proxy refuses to guess at.
	ErrMalformed = errors.New("malformed http message")
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
		if asciiEqualFold(f.Name, name) {
			return f.Value
		}
	}
	return ""
}

// IsProbe reports whether the request comes from a kubelet probe: HTTP probes and gRPC probes send a
// User-Agent of "kube-probe/<major>.<minor>" (gRPC adds " grpc-go/...").
func (h *RequestHead) IsProbe() bool {
	const p = "kube-probe/"
	for _, f := range h.Header {
		if asciiEqualFold(f.Name, "User-Agent") && len(f.Value) >= len(p) && asciiEqualFold(f.Value[:len(p)], p) {
			return true
		}
	}
	return false
}

// PathQuery is the path and query the request is for: Target itself in origin form, with scheme and
// authority removed in absolute form ("http://host/a?b" is "/a?b").
func (h *RequestHead) PathQuery() string {
	t := h.Target
	if t == "" || t[0] == '/' || t == "*" {
		return t
	}
	i := strings.Index(t, "://")
	if i < 0 {
		return t // authority form (CONNECT host:port)
	}
	rest := t[i+3:]
	if j := strings.IndexAny(rest, "/?"); j >= 0 {
		if rest[j] == '?' {
			return "/" + rest[j:]
		}
		return rest[j:]
	}
	return "/"
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
	line, rest := cutLine(s)
	h := RequestHead{Raw: b[:n:n]}
	method, rest1, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest1, " ")
	if !ok1 || !ok2 || !isToken(method) || !validTarget(target) || !validHTTP1(proto) {
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
	case f.te != "" && (http10 || !asciiEqualFold(f.te, "chunked")):
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
	h.Expect100 = !http10 && asciiEqualFold(f.expect, "100-continue")
	return nil
}

// ParseResponseHead parses the HTTP/1 response head at the start of b.
func ParseResponseHead(b []byte) (ResponseHead, error) {
	n, err := headLen(b)
	if err != nil {
		return ResponseHead{}, err
	}
	s := string(b[:n])
	line, rest := cutLine(s)
	h := ResponseHead{Raw: b[:n:n], ContentLength: -1}
	proto, status, _ := strings.Cut(line, " ")
	code, reason, hasReason := strings.Cut(status, " ")
	if !validHTTP1(proto) || len(code) != 3 || !validReason(reason) || (!hasReason && len(status) != 3) {
		return ResponseHead{}, fmt.Errorf("status line %q: %w", clip(line), ErrMalformed)
	}
	for i := range 3 {
		if code[i] < '0' || code[i] > '9' {
			return ResponseHead{}, fmt.Errorf("status line %q: %w", clip(line), ErrMalformed)
		}
		h.Status = h.Status*10 + int(code[i]-'0')
	}
	if h.Status < 100 {
		return ResponseHead{}, fmt.Errorf("status line %q: %w", clip(line), ErrMalformed)
	}
	h.Proto, h.Reason = proto, reason
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
	case f.te != "" && asciiEqualFold(lastToken(f.te), "chunked"):
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
		case asciiEqualFold(hf.Name, "Content-Length"):
			n, ok := parseLength(hf.Value)
			if !ok || (f.cl >= 0 && f.cl != n) {
				return f, fmt.Errorf("Content-Length %q: %w", clip(hf.Value), ErrMalformed)
			}
			f.cl = n
		case asciiEqualFold(hf.Name, "Transfer-Encoding"):
			f.te = joinList(f.te, hf.Value)
		case asciiEqualFold(hf.Name, "Connection"):
			forTokens(hf.Value, func(t string) {
				switch {
				case asciiEqualFold(t, "close"):
					f.close = true
				case asciiEqualFold(t, "keep-alive"):
					f.keepAlive = true
				case asciiEqualFold(t, "upgrade"):
					f.upgrade = true
				}
			})
		case asciiEqualFold(hf.Name, "Upgrade"):
			f.upgradeValue = joinList(f.upgradeValue, hf.Value)
		case asciiEqualFold(hf.Name, "Expect"):
			f.expect = hf.Value
		}
	}
	if f.te != "" {
		// An empty list ("Transfer-Encoding: ,") is as bad as an unknown coding.
		n := 0
		forTokens(f.te, func(string) { n++ })
		if n == 0 {
			return f, fmt.Errorf("Transfer-Encoding %q: %w", clip(f.te), ErrMalformed)
		}
	}
	return f, nil
}

// headLen returns the length of the head at the start of b, through its empty line. Lines end in
// CRLF or a bare LF (RFC 9112 2.2 lets a recipient accept LF, and net/http does).
func headLen(b []byte) (int, error) {
	i := 0
	for {
		j := bytes.IndexByte(b[i:min(len(b), MaxHeadSize)], '\n')
		if j < 0 {
			if len(b) >= MaxHeadSize {
				return 0, ErrHeadTooLarge
			}
			return 0, ErrIncomplete
		}
		end := i + j
		empty := end == i || (end == i+1 && b[i] == '\r')
		if empty {
			if i == 0 {
				return 0, fmt.Errorf("head starts with an empty line: %w", ErrMalformed)
			}
			return end + 1, nil
		}
		i = end + 1
	}
}

// cutLine splits off the first line of s, without its line ending.
func cutLine(s string) (line, rest string) {
	i := strings.IndexByte(s, '\n')
	if i < 0 {
		return s, ""
	}
	line, rest = s[:i], s[i+1:]
	return strings.TrimSuffix(line, "\r"), rest
}

// parseFields parses header lines up to the empty line that ends s.
func parseFields(s string) ([]HeaderField, error) {
	fs := make([]HeaderField, 0, strings.Count(s, "\n"))
	for {
		line, rest := cutLine(s)
		if line == "" {
			return fs, nil
		}
		s = rest
		if line[0] == ' ' || line[0] == '\t' {
			// Folded lines are obsolete; RFC 9112 5.2 lets a server reject them, which beats guessing
			// whether the app unfolds them.
			return nil, fmt.Errorf("folded header line %q: %w", clip(line), ErrMalformed)
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || !isToken(name) {
			return nil, fmt.Errorf("header line %q: %w", clip(line), ErrMalformed)
		}
		value = strings.Trim(value, " \t")
		if !validValue(value) {
			return nil, fmt.Errorf("header %q value %q: %w", clip(name), clip(value), ErrMalformed)
		}
		fs = append(fs, HeaderField{Name: name, Value: value})
	}
}

// parseLength parses a Content-Length value: digits only (no sign, no list), at most 18 of them so
// that it cannot overflow.
func parseLength(s string) (int64, bool) {
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

func joinList(a, b string) string {
	if a == "" {
		return b
	}
	return a + ", " + b
}

// forTokens calls f with each non-empty, trimmed element of a comma-separated list.
func forTokens(list string, f func(string)) {
	for list != "" {
		var t string
		t, list, _ = strings.Cut(list, ",")
		if t = strings.Trim(t, " \t"); t != "" {
			f(t)
		}
	}
}

func lastToken(list string) string {
	last := ""
	forTokens(list, func(t string) { last = t })
	return last
}

// tokenChars is RFC 9110 5.6.2 tchar.
var tokenChars = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := range len(s) {
		if !tokenChars[s[i]] {
			return false
		}
	}
	return true
}

// validTarget accepts any non-empty run of visible bytes; which of them a URI may hold is the app's
// concern, and obs-text (bytes >= 0x80) shows up in real traffic.
func validTarget(s string) bool {
	if s == "" {
		return false
	}
	for i := range len(s) {
		if c := s[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

func validValue(s string) bool {
	for i := range len(s) {
		if c := s[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

func validReason(s string) bool { return validValue(s) }

func validHTTP1(s string) bool {
	return len(s) == 8 && s[:7] == "HTTP/1." && s[7] >= '0' && s[7] <= '9'
}

func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range len(a) {
		x, y := a[i], b[i]
		if x == y {
			continue
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
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
