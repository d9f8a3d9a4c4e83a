package lineout

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Escape makes a string taken from traffic (a path, a method, a header value, a peer, a message
// that quotes them) safe to print on a terminal. Any client of the pod writes these strings, and a
// terminal obeys what they contain: ESC starts sequences that set the title, write the clipboard
// (OSC 52), move the cursor over earlier lines or hide text, and C1 controls (U+0080-U+009F, 0x9b
// is CSI) do the same on some terminals. Every rune strconv.IsPrint refuses (C0, DEL, C1, and the
// format characters such as bidi overrides that reorder what is shown) is written as Go escapes it,
// "\x1b", "\a", "\u009b", "\u202e", as is every byte that is not UTF-8; printable UTF-8 and the
// space are kept, so that a path in another script stays readable. A backslash is kept too: a path
// that spells "\x1b" itself only looks escaped, which fools no terminal.
func Escape(s string) string {
	i := 0
	for i < len(s) {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f {
				break
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError || !strconv.IsPrint(r) {
			break
		}
		i += n
	}
	if i == len(s) {
		return s // the common case: nothing to escape, nothing allocated
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	b.WriteString(s[:i])
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			b.WriteString(`\x`)
			b.WriteString(hex2(s[i]))
		case r == ' ' || (r != utf8.RuneError && strconv.IsPrint(r)):
			b.WriteString(s[i : i+n])
		default:
			q := strconv.QuoteRune(r) // 'x' with x escaped as Go does it
			b.WriteString(q[1 : len(q)-1])
		}
		i += n
	}
	return b.String()
}

func hex2(c byte) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[c>>4], digits[c&0xf]})
}
