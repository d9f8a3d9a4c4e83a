package target

import (
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/util/validation"
)

// FuzzParsePortSpec: an accepted --port names a pod port by number (1-65535) or by a valid port name,
// has a LOCAL port in range, and reads back the same from REMOTE:LOCAL; a refused one is named in
// the refusal.
func FuzzParsePortSpec(f *testing.F) {
	for _, s := range []string{"80", "80:8080", "http:8080", "http", ":80", "80:", "0", "65536:1", "+80", "a:b:c", "HTTP:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ps, err := ParsePortSpec(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "--port "+strconv.Quote(s)+": ") {
				t.Fatalf("refusal of %q does not name it: %v", s, err)
			}
			return
		}
		if ps.Local < 1 || ps.Local > 65535 || strings.Contains(ps.Remote, ":") {
			t.Fatalf("%q: %+v", s, ps)
		}
		if n, nerr := strconv.Atoi(ps.Remote); nerr == nil {
			if ps.Port != n || n < 1 || n > 65535 {
				t.Fatalf("%q: numeric remote, %+v", s, ps)
			}
			if !strings.Contains(s, ":") && ps.Local != ps.Port {
				t.Fatalf("%q: LOCAL defaults to %d, not REMOTE", s, ps.Local)
			}
		} else if ps.Port != 0 || len(validation.IsValidPortName(ps.Remote)) > 0 {
			t.Fatalf("%q: named remote, %+v", s, ps)
		}
		again, err := ParsePortSpec(ps.Remote + ":" + strconv.Itoa(ps.Local))
		if err != nil {
			t.Fatalf("%q parsed to %+v, which does not read back: %v", s, ps, err)
		}
		if diff := cmp.Diff(ps, again); diff != "" {
			t.Fatalf("%q round trip (-first +again):\n%s", s, diff)
		}
	})
}
