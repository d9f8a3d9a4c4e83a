package lineout

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestEscape: what a client of the pod sent reaches the terminal with every control written out as
// Go escapes it, and printable text, in any script, as it was.
func TestEscape(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/api/v1/items?q=1", "/api/v1/items?q=1"},
		{"/grüße/日本 a", "/grüße/日本 a"},
		{"", ""},
		// OSC 52 writes the clipboard; the terminal must see neither ESC nor BEL.
		{"/x\x1b]52;c;aGVsbG8=\a", `/x\x1b]52;c;aGVsbG8=\a`},
		// CSI that clears the screen and moves the cursor home, to hide the lines before.
		{"GET\x1b[2J\x1b[H", `GET\x1b[2J\x1b[H`},
		{"a\r\nb\tc\x00d\x7fe", `a\r\nb\tc\x00d\x7fe`},
		// C1 controls (CSI is U+009B), a bidi override that reorders what is shown, a zero-width space.
		{"\u009b31m\u202etxt.exe\u200b", `\u009b31m\u202etxt.exe\u200b`},
		// Bytes that are not UTF-8: a lone C1 byte, a truncated sequence.
		{"a\x9bb\xe6\x97", `a\x9bb\xe6\x97`},
		// A replacement character that was sent as such is printable.
		{"\ufffd", "\ufffd"},
		// A backslash stays, as it is.
		{`C:\dir`, `C:\dir`},
	}
	for _, tt := range tests {
		if d := cmp.Diff(tt.want, Escape(tt.in)); d != "" {
			t.Errorf("Escape(%q) (-want +got):\n%s", tt.in, d)
		}
	}
}

// TestEscapeKeepsCleanStrings: the common case, a clean path, costs no allocation.
func TestEscapeKeepsCleanStrings(t *testing.T) {
	s := "/api/v1/items/1234?expand=true"
	if n := testing.AllocsPerRun(100, func() { _ = Escape(s) }); n != 0 {
		t.Errorf("%v allocations per clean string, want 0", n)
	}
}
