package wire

import (
	"strings"
	"testing"
	"time"

	"github.com/dlclark/regexp2"
)

// FuzzHTTPFilter checks the compiled filter against its definition: each header pattern is one
// filter that one "Name: value" line must match, each path pattern one on the target, the methods
// together one (without case); MatchAll needs every filter, MatchAny one. A filter that validates
// compiles.
func FuzzHTTPFilter(f *testing.F) {
	f.Add("^X-Dev: alice$", "^/api/(?!health)", "get", "GET", "/api/users?id=1", "x-dev: Alice")
	f.Add("(", "", "", "POST", "/", "A: b")
	f.Add("", "[z-a]", "BAD METHOD", "GET", "/", "")
	f.Add("^Host:", "", "", "DELETE", "/x", "Host: a\nX: b")
	f.Add("", "", "PATCH", "patch", "", "")
	f.Fuzz(func(t *testing.T, header, path, method, reqMethod, target, headerLines string) {
		var filter HTTPFilter
		if header != "" {
			filter.Headers = []string{header}
		}
		if path != "" {
			filter.Paths = []string{path}
		}
		if method != "" {
			filter.Methods = strings.Split(method, ",")
		}
		if err := filter.Validate(); err != nil {
			return
		}
		headers := strings.Split(headerLines, "\n")

		// What each filter decides on its own, with a deadline short enough that a backtracking
		// pattern gives up here; then the verdicts below, with a long one, are not a race.
		var verdicts []bool
		decide := func(p, s string) (ok, decided bool) {
			re := regexp2.MustCompile(p, RegexOptions)
			re.MatchTimeout = 20 * time.Millisecond
			ok, err := re.MatchString(s)
			return ok, err == nil
		}
		if header != "" {
			hit := false
			for _, h := range headers {
				ok, decided := decide(header, h)
				if !decided {
					return
				}
				hit = hit || ok
			}
			verdicts = append(verdicts, hit)
		}
		if path != "" {
			ok, decided := decide(path, target)
			if !decided {
				return
			}
			verdicts = append(verdicts, ok)
		}
		if len(filter.Methods) > 0 {
			ok := false
			for _, m := range filter.Methods {
				ok = ok || strings.EqualFold(m, reqMethod)
			}
			verdicts = append(verdicts, ok)
		}

		for _, match := range []string{MatchAll, MatchAny, ""} {
			filter.Match = match
			m, err := filter.compile(10 * time.Second)
			if err != nil {
				t.Fatalf("%+v validates but does not compile: %v", filter, err)
			}
			if m == nil {
				if !filter.Empty() {
					t.Fatalf("no matcher for %+v", filter)
				}
				continue
			}
			want := match != MatchAny
			for _, v := range verdicts {
				if match == MatchAny {
					want = want || v
				} else {
					want = want && v
				}
			}
			if got := m.Match(reqMethod, target, headers); got != want {
				t.Fatalf("%+v on %q %q %q: %v, each filter says %v", filter, reqMethod, target, headers, got, verdicts)
			}
		}
	})
}
