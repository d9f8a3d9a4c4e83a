package tunnel

import "testing"

func TestLastLineSkipsRoutine(t *testing.T) {
	tests := map[string]string{
		"":                            "",
		"level=INFO msg=started\n":    "",
		"boom\nlevel=INFO msg=x\n":    "boom",
		"level=ERROR msg=bad\n\n":     "level=ERROR msg=bad",
		"exec: \"/x\": not found\r\n": `exec: "/x": not found`,
		// Anything in the pod can make the agent count refused data connections: never the reason.
		"level=ERROR msg=bad\nlevel=WARN msg=\"data connections refused\" count=3\n": "level=ERROR msg=bad",
	}
	for in, want := range tests {
		tb := &tailBuffer{max: 1 << 10}
		tb.Write([]byte(in))
		if got := tb.lastLine(); got != want {
			t.Errorf("lastLine(%q) = %q, want %q", in, got, want)
		}
	}
}
