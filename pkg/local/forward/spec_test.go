package forward

import (
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseSpec(t *testing.T) {
	tests := []struct {
		arg     string
		want    Spec
		wantErr string
	}{
		{arg: "8080", want: Spec{LocalPort: 8080, Host: "localhost", Port: 8080, Protocol: "tcp"}},
		{arg: "9000:8080", want: Spec{LocalPort: 9000, Host: "localhost", Port: 8080, Protocol: "tcp"}},
		{arg: ":8080", want: Spec{LocalPort: 0, Host: "localhost", Port: 8080, Protocol: "tcp"}},
		{arg: "redis:6379", want: Spec{LocalPort: 6379, Host: "redis", Port: 6379, Protocol: "tcp"}},
		{arg: "7000:redis:6379", want: Spec{LocalPort: 7000, Host: "redis", Port: 6379, Protocol: "tcp"}},
		{arg: "db.other-ns:5432", want: Spec{LocalPort: 5432, Host: "db.other-ns", Port: 5432, Protocol: "tcp"}},
		{arg: "5353:kube-dns.kube-system:53/udp", want: Spec{LocalPort: 5353, Host: "kube-dns.kube-system", Port: 53, Protocol: "udp"}},
		{arg: "10.96.0.10:53/UDP", want: Spec{LocalPort: 53, Host: "10.96.0.10", Port: 53, Protocol: "udp"}},
		{arg: "[fd00::1]:80", want: Spec{LocalPort: 80, Host: "fd00::1", Port: 80, Protocol: "tcp"}},
		{arg: "8000:[fd00::1]:80/tcp", want: Spec{LocalPort: 8000, Host: "fd00::1", Port: 80, Protocol: "tcp"}},
		{arg: "8080/sctp", wantErr: `invalid forward "8080/sctp": protocol "sctp" must be tcp or udp`},
		{arg: "redis:http", wantErr: `remote port "http" must be a number from 1 to 65535`},
		{arg: "70000", wantErr: `remote port "70000" must be a number from 1 to 65535`},
		{arg: "0", wantErr: `remote port "0" must be a number from 1 to 65535`},
		{arg: "x:redis:80", wantErr: `local port "x" must be a number from 1 to 65535`},
		{arg: "1:2:3:4", wantErr: `want [LOCAL_PORT:]HOST:PORT[/udp]`},
		{arg: "8080::80", wantErr: `empty host`},
		{arg: "[fd00::1:80", wantErr: `unbalanced "["`},
		{arg: "[redis]:80", wantErr: `"[redis]" is not an IPv6 address`},
		{arg: "", wantErr: `remote port "" must be a number`},
	}
	for _, tt := range tests {
		t.Run(tt.arg, func(t *testing.T) {
			got, err := ParseSpec(tt.arg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseSpec(%q) error = %v, want it to contain %q", tt.arg, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSpec(%q): %v", tt.arg, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseSpec(%q) mismatch (-want +got):\n%s", tt.arg, diff)
			}
		})
	}
}

func TestSpecString(t *testing.T) {
	s, err := ParseSpec("5353:[fd00::10]:53/udp")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.String(), "[fd00::10]:53/udp"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

// FuzzParseSpec: whatever the user types, parsing never panics, errors stay on one line, and a parsed
// spec prints back to something that parses to the same spec.
func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{"8080", ":80", "redis:6379", "7000:redis:6379/udp", "[::1]:80", "1:[fd00::1]:2/tcp", "[", "a:b:c:d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		s, err := ParseSpec(arg)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error for %q: %q", arg, err)
			}
			return
		}
		if s.Port < 1 || s.Port > 65535 || s.LocalPort < 0 || s.LocalPort > 65535 || s.Host == "" {
			t.Fatalf("ParseSpec(%q) = %+v out of range", arg, s)
		}
		back, err := ParseSpec(strconv.Itoa(s.LocalPort) + ":" + s.String())
		if err != nil {
			t.Fatalf("round trip of %q via %q: %v", arg, s.String(), err)
		}
		if back != s {
			t.Fatalf("round trip of %q: %+v != %+v", arg, back, s)
		}
	})
}
