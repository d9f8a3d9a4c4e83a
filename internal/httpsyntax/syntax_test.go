package httpsyntax

import (
	"slices"
	"testing"
)

func TestIsToken(t *testing.T) {
	for s, want := range map[string]bool{
		"GET": true, "M-SEARCH": true, "x!#$%&'*+-.^_`|~9": true, "Content-Length": true,
		"": false, "GE T": false, "a:b": false, "a\tb": false, "a\x00": false, "caf\xc3\xa9": false,
		"(x)": false, "a/b": false, "\"q\"": false, "a,b": false, "a\x7f": false,
	} {
		if got := IsToken(s); got != want {
			t.Errorf("IsToken(%q) = %v, want %v", s, got, want)
		}
	}
	// The table against the RFC's definition, byte by byte.
	for c := range 256 {
		b := byte(c)
		want := b >= '0' && b <= '9' || b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' ||
			b == '!' || b == '#' || b == '$' || b == '%' || b == '&' || b == '\'' || b == '*' ||
			b == '+' || b == '-' || b == '.' || b == '^' || b == '_' || b == '`' || b == '|' || b == '~'
		if IsTokenChar(b) != want {
			t.Errorf("IsTokenChar(%#x) = %v, want %v", b, !want, want)
		}
	}
}

func TestEqualFold(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"Transfer-Encoding", "transfer-encoding", true},
		{"CHUNKED", "chunked", true},
		{"", "", true},
		{"Tranſfer-Encoding", "Transfer-Encoding", false}, // strings.EqualFold says true
		{"\u212aeep-alive", "keep-alive", false},          // Kelvin sign
		{"a", "ab", false},
		{"[", "{", false}, // 0x5b and 0x7b differ by the case bit but are not letters
		{"@", "`", false},
	}
	for _, tt := range tests {
		if got := EqualFold(tt.a, tt.b); got != tt.want {
			t.Errorf("EqualFold(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
	if !HasPrefixFold("Kube-Probe/1.33", "kube-probe/") || HasPrefixFold("kube", "kube-probe/") {
		t.Error("HasPrefixFold")
	}
}

func TestParseRequestLine(t *testing.T) {
	tests := []struct {
		line                    string
		method, target, version string
	}{
		{"GET / HTTP/1.1", "GET", "/", "HTTP/1.1"},
		{"OPTIONS * HTTP/1.0", "OPTIONS", "*", "HTTP/1.0"},
		{"CONNECT host:443 HTTP/1.1", "CONNECT", "host:443", "HTTP/1.1"},
		{"GET http://h/a?b HTTP/1.1", "GET", "http://h/a?b", "HTTP/1.1"},
		{"GET /caf\xc3\xa9 HTTP/1.1", "GET", "/caf\xc3\xa9", "HTTP/1.1"}, // obs-text in the target
		{"GET / HTTP/1.2", "GET", "/", "HTTP/1.2"},                       // RFC 9110 2.5: a higher minor version
		// A method longer than 32 bytes is still a token (capture's parser refused it).
		{"ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJ / HTTP/1.1", "ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJ", "/", "HTTP/1.1"},
		{"GET  / HTTP/1.1", "", "", ""},   // two spaces
		{"GET / HTTP/1.1 ", "", "", ""},   // trailing space
		{"GET /a b HTTP/1.1", "", "", ""}, // space in the target
		{"GET /\x7f HTTP/1.1", "", "", ""},
		{"GET / HTTP/2.0", "", "", ""},
		{"GET / HTTP/1.x", "", "", ""},
		{"GET / http/1.1", "", "", ""},
		{"G(T / HTTP/1.1", "", "", ""},
		{"GET /", "", "", ""},
		{"", "", "", ""},
	}
	for _, tt := range tests {
		m, tg, v, ok := ParseRequestLine(tt.line)
		if ok != (tt.method != "") || m != tt.method || tg != tt.target || v != tt.version {
			t.Errorf("ParseRequestLine(%q) = %q, %q, %q, %v; want %q, %q, %q", tt.line, m, tg, v, ok, tt.method, tt.target, tt.version)
		}
	}
}

func TestParseStatusLine(t *testing.T) {
	tests := []struct {
		line    string
		version string
		status  int
		reason  string
	}{
		{"HTTP/1.1 200 OK", "HTTP/1.1", 200, "OK"},
		{"HTTP/1.0 404 Not Found", "HTTP/1.0", 404, "Not Found"},
		{"HTTP/1.1 204 ", "HTTP/1.1", 204, ""},
		{"HTTP/1.1 204", "HTTP/1.1", 204, ""}, // no space before an empty reason: net/http accepts it
		{"HTTP/1.1 101 Switching Protocols", "HTTP/1.1", 101, "Switching Protocols"},
		{"HTTP/1.1 200 caf\xc3\xa9\tok", "HTTP/1.1", 200, "caf\xc3\xa9\tok"},
		{"HTTP/1.1 999 x", "HTTP/1.1", 999, "x"},
		{"HTTP/1.1 099 x", "", 0, ""},
		{"HTTP/1.1 20 OK", "", 0, ""},
		{"HTTP/1.1 2000 OK", "", 0, ""},
		{"HTTP/1.1 2x0 OK", "", 0, ""},
		{"HTTP/1.1  200 OK", "", 0, ""},
		{"HTTP/1.1 200 O\x00K", "", 0, ""}, // capture's parser took control characters in the reason
		{"HTTP/1.1 200 O\rK", "", 0, ""},
		{"HTTP/2 200 OK", "", 0, ""},
		{"ICY 200 OK", "", 0, ""},
		{"", "", 0, ""},
	}
	for _, tt := range tests {
		v, s, r, ok := ParseStatusLine(tt.line)
		if ok != (tt.version != "") || v != tt.version || s != tt.status || r != tt.reason {
			t.Errorf("ParseStatusLine(%q) = %q, %d, %q, %v; want %q, %d, %q", tt.line, v, s, r, ok, tt.version, tt.status, tt.reason)
		}
	}
}

func TestCutField(t *testing.T) {
	tests := []struct {
		line, name, value string
		ok                bool
	}{
		{"Host: svc", "Host", "svc", true},
		{"Host:svc", "Host", "svc", true},
		{"X-A: \t v w \t", "X-A", "v w", true},
		{"X-Empty:", "X-Empty", "", true},
		{"X: a:b", "X", "a:b", true},
		{"X: caf\xc3\xa9", "X", "caf\xc3\xa9", true},
		{"Host : svc", "", "", false}, // RFC 9112 5.1: no white space before the colon
		{" Host: svc", "", "", false},
		{"Bad Name: x", "", "", false}, // capture's parser took any non-empty name
		{": x", "", "", false},
		{"no colon", "", "", false},
		{"X: a\x00b", "", "", false},
		{"X: a\rb", "", "", false},
		{"X: a\x7f", "", "", false},
	}
	for _, tt := range tests {
		n, v, ok := CutField(tt.line)
		if n != tt.name || v != tt.value || ok != tt.ok {
			t.Errorf("CutField(%q) = %q, %q, %v; want %q, %q, %v", tt.line, n, v, ok, tt.name, tt.value, tt.ok)
		}
	}
	for _, tt := range []struct {
		line, name, value string
		ok                bool
	}{
		{"Host: svc", "Host", "svc", true},
		{" Host \t:\t svc ", "Host", "svc", true},
		{"X:", "X", "", true},
		{"X: a:b", "X", "a:b", true},
		{"no colon", "no colon", "", false},
	} {
		n, v, ok := SplitFieldLine(tt.line)
		if n != tt.name || v != tt.value || ok != tt.ok {
			t.Errorf("SplitFieldLine(%q) = %q, %q, %v; want %q, %q, %v", tt.line, n, v, ok, tt.name, tt.value, tt.ok)
		}
	}
	for _, tt := range []struct {
		line, name, value string
		ok                bool
	}{
		{"User-Agent: kube-probe/1.33", "user-agent", "kube-probe/1.33", true},
		{"user-agent:x ", "User-Agent", "x", true},
		{"User-Agents: x", "User-Agent", "", false},
		{"User-Agent", "User-Agent", "", false},
	} {
		v, ok := FieldLineValue(tt.line, tt.name)
		if v != tt.value || ok != tt.ok {
			t.Errorf("FieldLineValue(%q, %q) = %q, %v; want %q, %v", tt.line, tt.name, v, ok, tt.value, tt.ok)
		}
	}
}

func TestCutLine(t *testing.T) {
	for _, tt := range []struct{ in, line, rest string }{
		{"a\r\nb", "a", "b"},
		{"a\nb\r\n", "a", "b\r\n"},
		{"a", "a", ""},
		{"a\r", "a\r", ""}, // a CR without LF is not a line ending
		{"\r\n", "", ""},
	} {
		if l, r := CutLine(tt.in); l != tt.line || r != tt.rest {
			t.Errorf("CutLine(%q) = %q, %q; want %q, %q", tt.in, l, r, tt.line, tt.rest)
		}
	}
}

func TestLists(t *testing.T) {
	tests := []struct {
		list string
		want []string
	}{
		{"", nil},
		{"chunked", []string{"chunked"}},
		{"gzip, chunked", []string{"gzip", "chunked"}},
		{" , ,gzip\t,, chunked ,", []string{"gzip", "chunked"}}, // RFC 9110 5.6.1: empty elements
		{",", nil},
	}
	for _, tt := range tests {
		if got := slices.Collect(ListElements(tt.list)); !slices.Equal(got, tt.want) {
			t.Errorf("ListElements(%q) = %q, want %q", tt.list, got, tt.want)
		}
		last := ""
		if len(tt.want) > 0 {
			last = tt.want[len(tt.want)-1]
		}
		if got := LastElement(tt.list); got != last {
			t.Errorf("LastElement(%q) = %q, want %q", tt.list, got, last)
		}
	}
	for _, tt := range []struct {
		list, token string
		want        bool
	}{
		{"keep-alive, Upgrade", "upgrade", true},
		{"close", "close", true},
		{"closed", "close", false},
		{"x-close", "close", false},
		{"", "close", false},
		{"\u212aeep-alive", "keep-alive", false},
	} {
		if got := HasElement(tt.list, tt.token); got != tt.want {
			t.Errorf("HasElement(%q, %q) = %v, want %v", tt.list, tt.token, got, tt.want)
		}
	}
	if got := JoinList(JoinList(JoinList("", "gzip"), "chunked"), "x"); got != "gzip, chunked, x" {
		t.Errorf("JoinList = %q", got)
	}
	// Stopping early is honoured.
	for range ListElements("a, b, c") {
		break
	}
}

func TestSplitTarget(t *testing.T) {
	for _, tt := range []struct{ target, path, authority string }{
		{"/a?b", "/a?b", ""},
		{"*", "*", ""},
		{"", "", ""},
		{"http://h:8080/a?b", "/a?b", "h:8080"},
		{"http://h?q", "/?q", "h"},
		{"http://h", "/", "h"},
		{"https://u@h/x", "/x", "u@h"},
		{"host:443", "host:443", "host:443"},
	} {
		p, a := SplitTarget(tt.target)
		if p != tt.path || a != tt.authority {
			t.Errorf("SplitTarget(%q) = %q, %q; want %q, %q", tt.target, p, a, tt.path, tt.authority)
		}
	}
}

func TestMethods(t *testing.T) {
	for _, tt := range []struct {
		in          string
		found, more bool
	}{
		{"GET /", true, false},
		{"GET", false, true},
		{"G", false, true},
		{"", false, true},
		{"UNLOCK /", true, false},
		{"get /", false, false}, // methods are case-sensitive
		{"EHLO host", false, false},
		{"PRI * HTTP/2.0", false, false},
		{"GETS /", false, false},
	} {
		found, more := StartsWithMethod([]byte(tt.in))
		if found != tt.found || more != tt.more {
			t.Errorf("StartsWithMethod(%q) = %v, %v; want %v, %v", tt.in, found, more, tt.found, tt.more)
		}
	}
	for in, want := range map[string]int{
		"bodyGET": 3, "xUNLOCK": 6, "LOCK": 4, "REBIND": 6, "xBIND": 4, "body": 0, "": 0, "get": 0,
	} {
		if got := MethodSuffixLen([]byte(in)); got != want {
			t.Errorf("MethodSuffixLen(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestMatchH2Preface(t *testing.T) {
	for _, tt := range []struct {
		in           string
		match, whole bool
	}{
		{"", true, false},
		{"PRI * HTTP/2.0\r\n", true, false},
		{H2Preface, true, true},
		{H2Preface + "\x00\x00\x12\x04", true, true},
		{"PRI * HTTP/1.1\r\n", false, false},
		{"GET / HTTP/1.1\r\n", false, false},
	} {
		match, whole := MatchH2Preface([]byte(tt.in))
		if match != tt.match || whole != tt.whole {
			t.Errorf("MatchH2Preface(%q) = %v, %v; want %v, %v", tt.in, match, whole, tt.match, tt.whole)
		}
	}
}
