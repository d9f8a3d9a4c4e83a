package capture

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/net/bpf"
)

// FuzzParseExpr feeds arbitrary text to the parser. It must not panic; its errors are one
// line; what it accepts compiles and assembles, prints as a canonical form that parses back to
// the same tree and program, and matches the corpus frames exactly as the reference matcher
// says. Run it with
//
//	go test -run '^$' -fuzz FuzzParseExpr -fuzztime 30s ./capture/
func FuzzParseExpr(f *testing.F) {
	picked, random := oracleExprs()
	for _, s := range append(picked, random[:20]...) {
		f.Add(s)
	}
	for _, s := range []string{
		"", "(", ")", "!", "&&", "not not not", "port 80 or 443", "tcp or udp and port 53",
		"host 10.0.0.1/8", "net 10.0.0.0 mask 255.255.0.0", "tcp[13] & 2 != 0", "portrange 9-1",
		"less 4294967295", "src net ::ffff:0:0/96", "ip6 proto 44 || !arp", "((((tcp))))",
	} {
		f.Add(s)
	}
	frames := exprFrames(f)
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseExpr(s)
		if err != nil {
			msg := err.Error()
			if strings.ContainsAny(msg, "\n\r") || !strings.HasPrefix(msg, fmt.Sprintf("filter %q: ", s)) {
				t.Fatalf("ParseExpr(%q): malformed error %q", s, msg)
			}
			return
		}
		prog, err := e.Program(DefaultSnapLen)
		if err != nil {
			t.Fatalf("ParseExpr(%q) succeeded but Program failed: %v", s, err)
		}
		if _, err := bpf.Assemble(prog); err != nil {
			t.Fatalf("program for %q does not assemble: %v", s, err)
		}
		if _, err := bpf.NewVM(prog); err != nil {
			t.Fatalf("program for %q: %v", s, err)
		}

		canon := e.String()
		again, err := ParseExpr(canon)
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", canon, s, err)
		}
		if again.String() != canon || !reflect.DeepEqual(again.root, e.root) {
			t.Fatalf("canonical form %q of %q parses as %q", canon, s, again)
		}
		prog2, err := again.Program(DefaultSnapLen)
		if err != nil || !reflect.DeepEqual(prog, prog2) {
			t.Fatalf("canonical form %q of %q compiles differently (%v)", canon, s, err)
		}

		for _, fr := range frames {
			if got, want := e.Match(fr.data), refMatch(e.root, fr.data); got != want {
				t.Fatalf("%q on %s: BPF %v, reference %v\n%s", canon, fr.name, got, want, listing(prog))
			}
		}
	})
}
