package egress

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseRule(t *testing.T) {
	pfx := netip.MustParsePrefix
	tests := []struct {
		value   string
		want    Rule
		wantErr string
	}{
		{value: "db", want: Rule{Name: "db"}},
		{value: "DB.Example.COM.", want: Rule{Name: "db.example.com"}},
		{value: "db:5432", want: Rule{Name: "db", Port: 5432}},
		{value: "redis.other-ns:6379", want: Rule{Name: "redis.other-ns", Port: 6379}},
		{value: "_grpc._tcp.svc", want: Rule{Name: "_grpc._tcp.svc"}},
		{value: "*.example.com", want: Rule{Name: "*.example.com"}},
		{value: "*.Example.com:443", want: Rule{Name: "*.example.com", Port: 443}},
		{value: "10.0.0.7", want: Rule{Prefix: pfx("10.0.0.7/32")}},
		{value: "10.0.0.7:80", want: Rule{Prefix: pfx("10.0.0.7/32"), Port: 80}},
		{value: "10.0.0.0/8", want: Rule{Prefix: pfx("10.0.0.0/8")}},
		{value: "10.1.2.3/8:5432", want: Rule{Prefix: pfx("10.0.0.0/8"), Port: 5432}},
		{value: "::1", want: Rule{Prefix: pfx("::1/128")}},
		{value: "fd00::/8", want: Rule{Prefix: pfx("fd00::/8")}},
		{value: "[::1]:5432", want: Rule{Prefix: pfx("::1/128"), Port: 5432}},
		{value: "[fd00::/8]:443", want: Rule{Prefix: pfx("fd00::/8"), Port: 443}},
		{value: "[fd00::1]", want: Rule{Prefix: pfx("fd00::1/128")}},
		{value: "::ffff:10.0.0.1", want: Rule{Prefix: pfx("10.0.0.1/32")}},
		{value: "[::ffff:10.0.0.0/104]:53", want: Rule{Prefix: pfx("10.0.0.0/8"), Port: 53}},
		{value: "1.2.3.4:65535", want: Rule{Prefix: pfx("1.2.3.4/32"), Port: 65535}},

		{value: "", wantErr: "empty destination"},
		{value: "db:99999", wantErr: "port must be 1-65535"},
		{value: "db:0", wantErr: "port must be 1-65535"},
		{value: "db:http", wantErr: "port must be 1-65535"},
		{value: "db:", wantErr: `missing port after ":"`},
		{value: "db:-1", wantErr: "port must be 1-65535"},
		{value: "[::1]:", wantErr: `missing port after ":"`},
		{value: "[::1", wantErr: `unbalanced "["`},
		{value: "[::1]5432", wantErr: "want [ADDR]:PORT"},
		{value: "[db]:80", wantErr: `"db" is not an IP address or CIDR: brackets are for IPv6`},
		{value: "::1:5432:x", wantErr: "not an IPv6 address or CIDR (with a port, write [ADDR]:PORT)"},
		{value: "db:80:90", wantErr: "not an IPv6 address or CIDR"},
		{value: "10.0.0.0/33", wantErr: "not a valid CIDR"},
		{value: "db/8", wantErr: "not a valid CIDR"},
		{value: "fe80::1%eth0", wantErr: "IPv6 zones are not supported"},
		{value: "10.0.0.300", wantErr: "not a valid IP address"},
		{value: "*", wantErr: "a wildcard needs a domain"},
		{value: "*.", wantErr: "a wildcard needs a domain"},
		{value: "a.*.com", wantErr: "a wildcard may only be the first label"},
		{value: "*.*.com", wantErr: "a wildcard may only be the first label"},
		{value: "db..example", wantErr: "empty label"},
		{value: ".db", wantErr: "empty label"},
		{value: "db!", wantErr: `label "db!": a host name has letters, digits, "-" and "_" only`},
		{value: "db name", wantErr: "must not contain spaces"},
		{value: strings.Repeat("a", 64), wantErr: "longer than 63 characters"},
		{value: strings.Repeat("a.", 127) + "bb", wantErr: "longer than 253 characters"},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			got, err := ParseRule(tt.value)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseRule(%q) error = %v, want it to contain %q", tt.value, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRule(%q): %v", tt.value, err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("ParseRule(%q) mismatch (-want +got):\n%s", tt.value, diff)
			}
		})
	}
}

func TestRuleString(t *testing.T) {
	for value, want := range map[string]string{
		"DB:5432":         "db:5432",
		"*.example.com":   "*.example.com",
		"10.0.0.7":        "10.0.0.7",
		"10.1.2.3/8:53":   "10.0.0.0/8:53",
		"[fd00::1]:5432":  "[fd00::1]:5432",
		"[fd00::/8]:5432": "[fd00::/8]:5432",
		"fd00::/8":        "fd00::/8",
	} {
		r, err := ParseRule(value)
		if err != nil {
			t.Fatalf("ParseRule(%q): %v", value, err)
		}
		if got := r.String(); got != want {
			t.Errorf("ParseRule(%q).String() = %q, want %q", value, got, want)
		}
	}
}

// FuzzParseRule: whatever the user types, parsing never panics, errors stay on one line, and a
// parsed rule prints back to something that parses to the same rule.
func FuzzParseRule(f *testing.F) {
	for _, s := range []string{"db", "db:5432", "*.example.com:443", "10.0.0.0/8:53", "[::1]:5432", "fd00::/8", "[", "a:b:c", "::ffff:1.2.3.4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		r, err := ParseRule(value)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error for %q: %q", value, err)
			}
			return
		}
		back, err := ParseRule(r.String())
		if err != nil {
			t.Fatalf("ParseRule(%q) = %q, which does not parse: %v", value, r, err)
		}
		if back != r {
			t.Fatalf("ParseRule(%q) = %#v, printed %q, parsed back %#v", value, r, r, back)
		}
		if r.IsName() == r.Prefix.IsValid() {
			t.Fatalf("ParseRule(%q) = %#v: want exactly one of name and prefix", value, r)
		}
	})
}
