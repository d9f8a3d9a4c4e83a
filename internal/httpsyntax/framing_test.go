package httpsyntax

import (
	"errors"
	"strings"
	"testing"
)

func TestHeadLen(t *testing.T) {
	tests := []struct {
		in    string
		limit int
		n     int
		err   error
	}{
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY", 1024, 27, nil},
		{"GET / HTTP/1.1\nHost: a\n\nBODY", 1024, 24, nil},          // bare LF (RFC 9112 2.2)
		{"GET / HTTP/1.1\r\nHost: a\n\r\nBODY", 1024, 26, nil},      // mixed endings
		{"GET / HTTP/1.1\r\n\r\n", 1024, 18, nil},                   // no fields
		{"GET / HTTP/1.1\r\nHost: a\r\n", 1024, 0, ErrIncomplete},   // no empty line yet
		{"GET / HTTP/1.1\r\nHost: a\r\n\r", 1024, 0, ErrIncomplete}, // CR of the empty line only
		{"", 1024, 0, ErrIncomplete},
		{"\r\nGET / HTTP/1.1\r\n\r\n", 1024, 0, ErrMalformed},
		{"\nGET / HTTP/1.1\r\n\r\n", 1024, 0, ErrMalformed},
		{"GET / HTTP/1.1\r\nX: \r\r\n\r\n", 1024, 24, nil}, // "X: \r\r\n" is not an empty line; CutField refuses its CR
		{"GET / HTTP/1.1\r\nX: " + strings.Repeat("a", 100), 64, 0, ErrTooLarge},
		{"GET / HTTP/1.1\r\n\r\n", 18, 18, nil}, // exactly the limit
		{"GET / HTTP/1.1\r\n\r\n", 17, 0, ErrTooLarge},
		{"GET / HTTP/1.1\r\n\r", 17, 0, ErrTooLarge},
		{"GET / HTTP/1.1\r\n", 17, 0, ErrIncomplete}, // shorter than the limit: wait
	}
	for _, tt := range tests {
		n, err := HeadLen([]byte(tt.in), tt.limit)
		if n != tt.n || !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
			t.Errorf("HeadLen(%q, %d) = %d, %v; want %d, %v", tt.in, tt.limit, n, err, tt.n, tt.err)
		}
	}
}

func TestParseContentLength(t *testing.T) {
	tests := []struct {
		in   string
		n    int64
		okay bool
	}{
		{"0", 0, true},
		{"42", 42, true},
		{"007", 7, true},
		{"999999999999999999", 999999999999999999, true}, // 18 digits
		{"1000000000000000000", 0, false},                // 19 could overflow: refused
		{"", 0, false},
		{"-1", 0, false},
		{"+1", 0, false},
		{"1 2", 0, false},
		{" 1", 0, false}, // callers trim the value; white space left inside is an error
		{"5, 5", 0, false},
		{"0x10", 0, false},
		{"1e3", 0, false},
		{"\u0661", 0, false}, // Arabic-Indic one
	}
	for _, tt := range tests {
		n, ok := ParseContentLength(tt.in)
		if n != tt.n || ok != tt.okay {
			t.Errorf("ParseContentLength(%q) = %d, %v; want %d, %v", tt.in, n, ok, tt.n, tt.okay)
		}
	}
}

func TestParseChunkSize(t *testing.T) {
	tests := []struct {
		in   string
		n    int64
		okay bool
	}{
		{"0", 0, true},
		{"1a", 26, true},
		{"1A", 26, true},
		{"00000000000000f", 15, true},         // 15 digits
		{"fffffffffffffff", 1<<60 - 1, true},  // the largest
		{"1000000000000000", 0, false},        // 16 digits
		{"a;name=value", 10, true},            // chunk extension
		{"a;name=\"quoted value\"", 10, true}, // quoted extension value
		{"a;", 10, true},                      // empty extension name: its syntax is not checked
		{"a  ", 10, true},                     // trailing white space (net/http trims it)
		{"a\t", 10, true},                     //
		{"a ;ext", 0, false},                  // white space before ";" (net/http refuses it; capture took it)
		{" a", 0, false},                      // white space before the size (capture took it)
		{"", 0, false},                        //
		{";ext", 0, false},                    //
		{"g", 0, false},                       //
		{"0x1a", 0, false},                    //
		{"-1", 0, false},                      //
		{"a;ext\x00", 0, false},               // control character in the extension (capture took it)
		{"a;ext\r", 0, false},                 // a CR that is not a line ending
		{"a b", 0, false},                     //
		{"+a", 0, false},                      //
		{"a\r", 0, false},                     // callers pass the line without its CRLF
		{"a;ext=\xc3\xa9", 10, true},          // obs-text
		{"a;x\t=\ty", 10, true},               // tab inside the extension
		{"1" + strings.Repeat("0", 14) + ";", 1 << 56, true},
	}
	for _, tt := range tests {
		n, ok := ParseChunkSize([]byte(tt.in))
		if ok != tt.okay || (ok && n != tt.n) {
			t.Errorf("ParseChunkSize(%q) = %d, %v; want %d, %v", tt.in, n, ok, tt.n, tt.okay)
		}
	}
}
