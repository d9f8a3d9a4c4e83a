package httpsyntax

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"
)

// Each parser against what its result must mean: a different reading of the same bytes is the
// kind of bug that lets a body be taken for the next request.

func FuzzHeadLen(f *testing.F) {
	for _, s := range []string{"GET / HTTP/1.1\r\nHost: a\r\n\r\nX", "a\n\n", "\r\n", "a\r\n\r", "a\r\r\n\r\n"} {
		f.Add([]byte(s), 64)
	}
	f.Fuzz(func(t *testing.T, b []byte, limit int) {
		if limit <= 0 || limit > 1<<16 {
			return
		}
		n, err := HeadLen(b, limit)
		switch {
		case err == nil:
			head := b[:n]
			if n > limit || (!bytes.HasSuffix(head, []byte("\n\n")) && !bytes.HasSuffix(head, []byte("\n\r\n"))) {
				t.Fatalf("HeadLen(%q, %d) = %d: not through an empty line", b, limit, n)
			}
			// No empty line before the one that ends it.
			lines := strings.Split(string(head[:n-1]), "\n")
			for i, l := range lines[:len(lines)-1] {
				if l == "" || l == "\r" {
					t.Fatalf("HeadLen(%q) = %d: line %d is already empty", b, n, i)
				}
			}
		case errors.Is(err, ErrIncomplete):
			if len(b) >= limit {
				t.Fatalf("HeadLen(%q, %d): incomplete at the limit", b, limit)
			}
		case errors.Is(err, ErrTooLarge):
			if len(b) < limit {
				t.Fatalf("HeadLen(%q, %d): too large below the limit", b, limit)
			}
		case errors.Is(err, ErrMalformed):
			if !bytes.HasPrefix(b, []byte("\n")) && !bytes.HasPrefix(b, []byte("\r\n")) {
				t.Fatalf("HeadLen(%q): malformed without an empty first line", b)
			}
		default:
			t.Fatalf("HeadLen(%q): %v", b, err)
		}
	})
}

func FuzzParseContentLength(f *testing.F) {
	for _, s := range []string{"0", "42", "999999999999999999", "1000000000000000000", "-1", "+1", " 1", "5, 5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, ok := ParseContentLength(s)
		want, err := strconv.ParseUint(s, 10, 63)
		digits := s != "" && strings.Trim(s, "0123456789") == ""
		switch {
		case ok && (!digits || err != nil || int64(want) != n || n < 0):
			t.Fatalf("ParseContentLength(%q) = %d, want %d (%v)", s, n, want, err)
		case !ok && digits && len(s) <= 18:
			t.Fatalf("ParseContentLength(%q) refused %d digits", s, len(s))
		}
	})
}

func FuzzParseChunkSize(f *testing.F) {
	for _, s := range []string{"0", "1a;ext=v", "fffffffffffffff", "1000000000000000", "a  ", " a", "a ;x", "a;\x00"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		n, ok := ParseChunkSize(line)
		if !ok {
			return
		}
		end := len(line) - len(bytes.TrimLeft(line, "0123456789abcdefABCDEF"))
		want, err := strconv.ParseInt(string(line[:end]), 16, 64)
		if err != nil || want != n || end > 15 {
			t.Fatalf("ParseChunkSize(%q) = %d, want %d (%v)", line, n, want, err)
		}
		tail := line[end:]
		if bytes.ContainsAny(tail, "\r\n\x00") || (len(tail) > 0 && tail[0] != ';' && len(bytes.Trim(tail, " \t")) > 0) {
			t.Fatalf("ParseChunkSize(%q) accepted the tail %q", line, tail)
		}
	})
}

func FuzzParseRequestLine(f *testing.F) {
	for _, s := range []string{"GET / HTTP/1.1", "CONNECT h:1 HTTP/1.0", "GET  / HTTP/1.1", "GET / HTTP/2.0", "G\x00T / HTTP/1.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		m, tg, v, ok := ParseRequestLine(line)
		if !ok {
			return
		}
		if m+" "+tg+" "+v != line || !IsToken(m) || strings.ContainsAny(tg, " \r\n\x00") || !IsVersion(v) {
			t.Fatalf("ParseRequestLine(%q) = %q, %q, %q", line, m, tg, v)
		}
	})
}

func FuzzParseStatusLine(f *testing.F) {
	for _, s := range []string{"HTTP/1.1 200 OK", "HTTP/1.1 204", "HTTP/1.0 099 x", "HTTP/1.1 200 a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		v, s, r, ok := ParseStatusLine(line)
		if !ok {
			return
		}
		rebuilt := v + " " + strconv.Itoa(s) + " " + r
		if (rebuilt != line && rebuilt != line+" ") || s < 100 || s > 999 || strings.ContainsAny(r, "\r\n\x00") {
			t.Fatalf("ParseStatusLine(%q) = %q, %d, %q", line, v, s, r)
		}
	})
}

func FuzzCutField(f *testing.F) {
	for _, s := range []string{"Host: a", "Host : a", "X:\t v \t", "X: a\x00", ": x", "Bad Name: x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		name, value, ok := CutField(line)
		if !ok {
			return
		}
		if !IsToken(name) || !strings.HasPrefix(line, name+":") || strings.Trim(line[len(name)+1:], " \t") != value ||
			strings.ContainsAny(value, "\r\n\x00") || value != strings.Trim(value, " \t") {
			t.Fatalf("CutField(%q) = %q, %q", line, name, value)
		}
		if v, ok := FieldLineValue(line, strings.ToUpper(name)); !ok || v != value {
			t.Fatalf("FieldLineValue(%q) = %q, %v; CutField says %q", line, v, ok, value)
		}
	})
}

func FuzzListElements(f *testing.F) {
	for _, s := range []string{"gzip, chunked", " , ,a,,", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, list string) {
		var got []string
		for e := range ListElements(list) {
			if e == "" || strings.Contains(e, ",") || e != strings.Trim(e, " \t") {
				t.Fatalf("ListElements(%q) yielded %q", list, e)
			}
			got = append(got, e)
		}
		if j := strings.Join(got, ","); strings.ReplaceAll(strings.ReplaceAll(strings.ReplaceAll(list, " ", ""), "\t", ""), ",", "") !=
			strings.ReplaceAll(strings.ReplaceAll(strings.ReplaceAll(j, " ", ""), "\t", ""), ",", "") {
			t.Fatalf("ListElements(%q) = %q: bytes lost", list, got)
		}
	})
}
