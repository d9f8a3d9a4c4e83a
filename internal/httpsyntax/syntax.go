package httpsyntax

import (
	"bytes"
	"iter"
	"strings"
)

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

// IsTokenChar reports whether c may appear in a token (RFC 9110 5.6.2 tchar).
func IsTokenChar(c byte) bool { return tokenChars[c] }

// IsToken reports whether s is an RFC 9110 token: what a method, a field name, a transfer coding
// and a Connection option are.
func IsToken(s string) bool {
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

// EqualFold compares ASCII case-insensitively, as field names and tokens are compared. Unlike
// strings.EqualFold it does not fold Unicode: "Tranſfer-Encoding" (long s) is not
// "Transfer-Encoding", as it is not for the app behind the proxy.
func EqualFold(a, b string) bool {
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

// HasPrefixFold reports whether s starts with prefix, compared as EqualFold does.
func HasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && EqualFold(s[:len(prefix)], prefix)
}

// IsVersion reports whether s is an HTTP/1 version, "HTTP/1." and one digit. RFC 9110 2.5 has a
// recipient treat a higher minor version (HTTP/1.2) as the highest it implements, so any digit is
// accepted; callers treat everything but HTTP/1.0 as HTTP/1.1.
func IsVersion(s string) bool {
	return len(s) == 8 && s[:7] == "HTTP/1." && s[7] >= '0' && s[7] <= '9'
}

// IsTarget reports whether s may be a request target: a non-empty run of visible bytes. Which of
// them a URI may hold is the app's concern, and obs-text (bytes >= 0x80) shows up in real traffic.
func IsTarget(s string) bool {
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

// IsFieldValue reports whether s may be a field value (or a reason phrase, or a chunk extension):
// no control characters but the horizontal tab (RFC 9110 5.5; CR, LF and NUL are never allowed).
func IsFieldValue(s string) bool { return isFieldValue(s) }

func isFieldValue[T string | []byte](s T) bool {
	for i := range len(s) {
		if c := s[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// CutLine splits off the first line of s, without its line ending (CRLF, or the bare LF that
// RFC 9112 2.2 lets a recipient accept in a head).
func CutLine(s string) (line, rest string) {
	i := strings.IndexByte(s, '\n')
	if i < 0 {
		return s, ""
	}
	line, rest = s[:i], s[i+1:]
	return strings.TrimSuffix(line, "\r"), rest
}

// ParseRequestLine splits a request line (without its line ending): a token method, a target and
// a version, separated by single spaces (RFC 9112 3).
func ParseRequestLine(line string) (method, target, version string, ok bool) {
	method, rest, ok1 := strings.Cut(line, " ")
	target, version, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !IsToken(method) || !IsTarget(target) || !IsVersion(version) {
		return "", "", "", false
	}
	return method, target, version, true
}

// ParseStatusLine splits a status line (without its line ending): a version, a three-digit code of
// at least 100, and a reason phrase. The space before an empty reason phrase may be missing, as
// net/http and common clients accept.
func ParseStatusLine(line string) (version string, status int, reason string, ok bool) {
	version, rest, _ := strings.Cut(line, " ")
	code, reason, hasReason := strings.Cut(rest, " ")
	if !IsVersion(version) || len(code) != 3 || (!hasReason && len(rest) != 3) || !IsFieldValue(reason) {
		return "", 0, "", false
	}
	for i := range 3 {
		if code[i] < '0' || code[i] > '9' {
			return "", 0, "", false
		}
		status = status*10 + int(code[i]-'0')
	}
	if status < 100 {
		return "", 0, "", false
	}
	return version, status, reason, true
}

// CutField splits a field line (without its line ending, not a folded continuation) into a token
// name and its value trimmed of the white space around it (RFC 9112 5). White space between the
// name and the colon is refused, as RFC 9112 5.1 requires of a server.
func CutField(line string) (name, value string, ok bool) {
	name, value, ok = strings.Cut(line, ":")
	if !ok || !IsToken(name) {
		return "", "", false
	}
	value = strings.Trim(value, " \t")
	if !IsFieldValue(value) {
		return "", "", false
	}
	return name, value, true
}

// SplitFieldLine splits a "Name: value" line (the form capture keeps fields in and the steal
// filters match) into its name and value, trimmed of white space; ok is false without a colon.
// Unlike CutField it does not judge the syntax: the line was judged when it was parsed.
func SplitFieldLine(line string) (name, value string, ok bool) {
	name, value, ok = strings.Cut(line, ":")
	return strings.Trim(name, " \t"), strings.Trim(value, " \t"), ok
}

// FieldLineValue is the value of a "Name: value" line when its name is name (EqualFold); ok is
// false for another name.
func FieldLineValue(line, name string) (value string, ok bool) {
	n, v, found := SplitFieldLine(line)
	if !found || !EqualFold(n, name) {
		return "", false
	}
	return v, true
}

// JoinList appends b to the comma-separated list a, as repeated field lines of a list field are
// combined (RFC 9110 5.3).
func JoinList(a, b string) string {
	if a == "" {
		return b
	}
	return a + ", " + b
}

// ListElements yields the non-empty elements of a comma-separated list, trimmed of white space
// (RFC 9110 5.6.1: empty elements are ignored).
func ListElements(list string) iter.Seq[string] {
	return func(yield func(string) bool) {
		for list != "" {
			var t string
			t, list, _ = strings.Cut(list, ",")
			if t = strings.Trim(t, " \t"); t != "" && !yield(t) {
				return
			}
		}
	}
}

// LastElement is the list's last non-empty element, or "".
func LastElement(list string) string {
	last := ""
	for t := range ListElements(list) {
		last = t
	}
	return last
}

// HasElement reports whether the list has the element token (EqualFold).
func HasElement(list, token string) bool {
	for t := range ListElements(list) {
		if EqualFold(t, token) {
			return true
		}
	}
	return false
}

// SplitTarget turns a request target into its path with query and, for the absolute form
// ("http://host/a?b"), its authority; the authority form (CONNECT's "host:port") is its own
// authority and path; the origin form ("/a?b") and "*" have no authority.
func SplitTarget(target string) (path, authority string) {
	if target == "" || target[0] == '/' || target == "*" {
		return target, ""
	}
	_, rest, ok := strings.Cut(target, "://")
	if !ok {
		return target, target
	}
	authority, path = rest, "/"
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		authority, path = rest[:i], rest[i:]
		if path[0] == '?' {
			path = "/" + path
		}
	}
	return path, authority
}

// methods are the request methods a request line is recognised by in the middle of other bytes
// (protocol detection, resynchronisation after a gap). Any token is a valid method, but accepting
// any token there would take text protocols (SMTP's "EHLO host", Redis inline commands) for HTTP.
// WebDAV and a few other registered methods are included because they show up in real apps.
var methods = [...]string{
	"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
	"PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "REPORT",
	"MKCALENDAR", "MKACTIVITY", "CHECKOUT", "MERGE", "ACL", "BIND", "UNBIND", "REBIND", "PURGE",
	"LINK", "UNLINK", "QUERY",
}

// StartsWithMethod reports whether b starts with a well-known method and the space after it
// (found), or is too short to tell (more: b is a proper prefix of such a start). Methods are
// case-sensitive (RFC 9110 9.1).
func StartsWithMethod(b []byte) (found, more bool) {
	for _, m := range methods {
		switch {
		case len(b) > len(m):
			if b[len(m)] == ' ' && string(b[:len(m)]) == m {
				return true, false
			}
		case string(b) == m[:len(b)]:
			more = true
		}
	}
	return false, more
}

// MethodSuffixLen is the length of the longest well-known method that b ends with, or 0: where a
// method starts when a request line follows other bytes without a line break ("...bodyUNLOCK /x").
func MethodSuffixLen(b []byte) int {
	n := 0
	for _, m := range methods {
		if len(m) > n && bytes.HasSuffix(b, []byte(m)) {
			n = len(m)
		}
	}
	return n
}

// H2Preface is what an HTTP/2 client sends first (RFC 9113 3.4).
const H2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// MatchH2Preface reports whether b could be the start of a connection with prior-knowledge HTTP/2
// (b is a prefix of the preface, or starts with all of it) and whether all of it is there.
func MatchH2Preface(b []byte) (match, whole bool) {
	n := min(len(b), len(H2Preface))
	if string(b[:n]) != H2Preface[:n] {
		return false, false
	}
	return true, n == len(H2Preface)
}
