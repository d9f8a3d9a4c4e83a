package wire

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// docConstants are the values docs/protocol.md quotes as `wire.Name` = value, by the name the doc
// uses. TestDocConstants compares each quote with the value here, which is the code's.
func docConstants() map[string]any {
	tc := DefaultMuxConfig()
	return map[string]any{
		"wire.Protocol":                             Protocol,
		"wire.MaxFrameSize":                         MaxFrameSize,
		"wire.SecretSize":                           SecretSize,
		"wire.PreambleSize":                         PreambleSize,
		"wire.PreambleAckSize":                      PreambleAckSize,
		"wire.KeyPinSize":                           KeyPinSize,
		"wire.MaxDataConns":                         MaxDataConns,
		"wire.DefaultHeartbeatInterval":             DefaultHeartbeatInterval,
		"wire.DefaultHeartbeatDeadline":             DefaultHeartbeatDeadline,
		"wire.minHeartbeatInterval":                 minHeartbeatInterval,
		"wire.maxHeartbeatDeadline":                 maxHeartbeatDeadline,
		"wire.DefaultMuxConfig().StreamWindow":      int(tc.StreamWindow),
		"wire.DefaultMuxConfig().KeepAliveInterval": tc.KeepAliveInterval,
		"wire.DefaultMuxConfig().WriteTimeout":      tc.WriteTimeout,
		"wire.DefaultMuxConfig().AcceptBacklog":     tc.AcceptBacklog,
		"wire.DefaultMuxConfig().OpenTimeout":       tc.OpenTimeout,
		"wire.PluginStreamWindow":                   PluginStreamWindow,
		"wire.MirrorWriteInterval":                  MirrorWriteInterval,
		"wire.MaxBlockSize":                         MaxBlockSize,
		"wire.minCompressSize":                      minCompressSize,
		"wire.maxSkipBlocks":                        maxSkipBlocks,
		"wire.MaxDatagramSize":                      MaxDatagramSize,
		"wire.IncomingOpenTimeout":                  IncomingOpenTimeout,
		"wire.DefaultHeadTimeout":                   DefaultHeadTimeout,
		"wire.DefaultReconnectGrace":                DefaultReconnectGrace,
		"wire.MaxReconnectGrace":                    MaxReconnectGrace,
	}
}

// docQuote is one `wire.Name` = value in the doc. Value is a time.Duration when the doc gave a time
// unit, else an int64 (bytes for a size unit).
type docQuote struct {
	Line  int
	Name  string
	Text  string
	Value any
}

var (
	// quoteRE finds every quote; a quote whose value does not parse is an error, not a skip.
	quoteRE = regexp.MustCompile("`(wire\\.[^`]+)` = ")
	valueRE = regexp.MustCompile(`^(\d[\d,]*)(?: (ms|s|min|bytes|KiB|MiB)\b)?`)
)

// parseDocQuotes returns the quotes in doc, in order.
func parseDocQuotes(doc string) ([]docQuote, error) {
	var quotes []docQuote
	for i, line := range strings.Split(doc, "\n") {
		for _, m := range quoteRE.FindAllStringSubmatchIndex(line, -1) {
			name, rest := line[m[2]:m[3]], line[m[1]:]
			v := valueRE.FindStringSubmatch(rest)
			if v == nil {
				return nil, fmt.Errorf("line %d: %s = %.20q: not a number with an optional unit (ms, s, min, bytes, KiB, MiB)", i+1, name, rest)
			}
			n, err := strconv.ParseInt(strings.ReplaceAll(v[1], ",", ""), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("line %d: %s = %q: %w", i+1, name, v[0], err)
			}
			var value any
			switch v[2] {
			case "ms":
				value = time.Duration(n) * time.Millisecond
			case "s":
				value = time.Duration(n) * time.Second
			case "min":
				value = time.Duration(n) * time.Minute
			case "KiB":
				value = n << 10
			case "MiB":
				value = n << 20
			default: // bytes, or a plain count
				value = n
			}
			quotes = append(quotes, docQuote{Line: i + 1, Name: name, Text: v[0], Value: value})
		}
	}
	return quotes, nil
}

// sameValue compares a quote's value with the code's: a duration only with a duration, a number only
// with an integer.
func sameValue(quoted, code any) bool {
	if d, ok := code.(time.Duration); ok {
		q, ok := quoted.(time.Duration)
		return ok && q == d
	}
	q, ok := quoted.(int64)
	if !ok {
		return false
	}
	switch v := reflect.ValueOf(code); v.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return v.Int() == q
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return q >= 0 && v.Uint() == uint64(q)
	}
	return false
}

// TestDocConstants keeps docs/protocol.md and the code in step: every quoted constant must have the
// code's value, every quote must name a constant the table knows, and every constant in the table
// must still be quoted somewhere.
func TestDocConstants(t *testing.T) {
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	quotes, err := parseDocQuotes(string(doc))
	if err != nil {
		t.Fatalf("docs/protocol.md: %v", err)
	}
	want := docConstants()
	quoted := map[string]bool{}
	for _, q := range quotes {
		quoted[q.Name] = true
		code, ok := want[q.Name]
		if !ok {
			t.Errorf("docs/protocol.md:%d quotes %s, which docConstants does not check: add it there", q.Line, q.Name)
			continue
		}
		if !sameValue(q.Value, code) {
			t.Errorf("docs/protocol.md:%d says %s = %s, the code has %v", q.Line, q.Name, q.Text, code)
		}
	}
	for name := range want {
		if !quoted[name] {
			t.Errorf("docs/protocol.md no longer quotes %s as `%s` = value; quote it or drop it from docConstants", name, name)
		}
	}
}

func TestParseDocQuotes(t *testing.T) {
	doc := "a `wire.A` = 4 ms and `wire.B` = 64 KiB,\n" +
		"| `wire.C` = 65,535 bytes | `wire.D` = 5 min | `wire.E` = 64 blocks | `wire.F` = 16 MiB |\n" +
		"`wire.G` = 2 s; `other.H` = 3 ms is not ours; `wire.I` is not a quote\n"
	got, err := parseDocQuotes(doc)
	if err != nil {
		t.Fatal(err)
	}
	want := []docQuote{
		{1, "wire.A", "4 ms", 4 * time.Millisecond},
		{1, "wire.B", "64 KiB", int64(64 << 10)},
		{2, "wire.C", "65,535 bytes", int64(65535)},
		{2, "wire.D", "5 min", 5 * time.Minute},
		{2, "wire.E", "64", int64(64)},
		{2, "wire.F", "16 MiB", int64(16 << 20)},
		{3, "wire.G", "2 s", 2 * time.Second},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parseDocQuotes (-want +got):\n%s", diff)
	}
	if _, err := parseDocQuotes("x `wire.A` = four ms"); err == nil {
		t.Error("a quote whose value is not a number parsed")
	}
}

func TestSameValue(t *testing.T) {
	for _, tt := range []struct {
		quoted, code any
		want         bool
	}{
		{4 * time.Millisecond, 4 * time.Millisecond, true},
		{time.Millisecond, 4 * time.Millisecond, false},
		{int64(4), 4 * time.Millisecond, false}, // a count where the code has a duration
		{4 * time.Second, 4, false},             // a duration where the code has a count
		{int64(65536), 64 << 10, true},
		{int64(4 << 20), uint32(4 << 20), true},
		{int64(-1), uint32(1), false},
		{int64(1), "1", false},
	} {
		if got := sameValue(tt.quoted, tt.code); got != tt.want {
			t.Errorf("sameValue(%#v, %#v) = %v, want %v", tt.quoted, tt.code, got, tt.want)
		}
	}
}
