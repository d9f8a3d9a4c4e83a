package egress

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// search is a pod in namespace "ns" as the kubelet writes its resolv.conf.
var search = []string{"ns.svc.cluster.local", "svc.cluster.local", "cluster.local"}

func mustFilter(t *testing.T, local, remote []string) *Filter {
	t.Helper()
	f, err := NewFilter(local, remote)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestNewFilterErrors(t *testing.T) {
	tests := []struct {
		local, remote []string
		wantErr       string
	}{
		{local: []string{"db:99999"}, wantErr: `invalid --local "db:99999": port must be 1-65535`},
		{remote: []string{"ok", "[x]"}, wantErr: `invalid --remote "[x]": "x" is not an IP address or CIDR: brackets are for IPv6`},
		{local: []string{"db"}, remote: []string{"redis"}, wantErr: "--local and --remote cannot be used together"},
	}
	for _, tt := range tests {
		_, err := NewFilter(tt.local, tt.remote)
		if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) || strings.Contains(err.Error(), "\n") {
			t.Errorf("NewFilter(%q, %q) error = %v, want one line starting %q", tt.local, tt.remote, err, tt.wantErr)
		}
	}
}

func TestRoute(t *testing.T) {
	local := mustFilter(t, []string{"10.0.0.0/8:5432", "192.168.1.7", "fd00::/8", "*.example.com"}, nil)
	remote := mustFilter(t, nil, []string{"10.96.0.0/12", "[fd00::1]:80"})
	tests := []struct {
		f    *Filter
		dest string
		want Route
	}{
		{f: nil, dest: "10.0.0.1:5432", want: Remote},
		{f: &Filter{}, dest: "10.0.0.1:5432", want: Remote},
		{f: local, dest: "10.0.0.1:5432", want: Local},
		{f: local, dest: "10.0.0.1:5433", want: Remote},
		{f: local, dest: "[::ffff:10.0.0.1]:5432", want: Local},
		{f: local, dest: "192.168.1.7:1", want: Local},
		{f: local, dest: "192.168.1.8:1", want: Remote},
		{f: local, dest: "[fd12::3]:443", want: Local},
		{f: local, dest: "[fe80::1%eth0]:443", want: Remote},
		// A name rule alone matches no address until its host was resolved.
		{f: local, dest: "93.184.215.14:443", want: Remote},
		{f: remote, dest: "10.96.0.10:53", want: Remote},
		{f: remote, dest: "10.112.0.1:53", want: Local},
		{f: remote, dest: "[fd00::1]:80", want: Remote},
		{f: remote, dest: "[fd00::1]:81", want: Local},
	}
	for _, tt := range tests {
		if got := tt.f.Route(netip.MustParseAddrPort(tt.dest)); got != tt.want {
			t.Errorf("Route(%s) with %v = %v, want %v", tt.dest, tt.f.Rules(), got, tt.want)
		}
	}
}

func TestRouteName(t *testing.T) {
	local := mustFilter(t, []string{"db", "cache:6379", "*.example.com", "10.0.0.0/8"}, nil)
	remote := mustFilter(t, nil, []string{"redis.other-ns", "*.cluster.local:443"})
	tests := []struct {
		f    *Filter
		host string
		port uint16
		want Route
	}{
		{f: local, host: "db", port: 5432, want: Local},
		{f: local, host: "DB.", port: 5432, want: Local},
		{f: local, host: "db.ns.svc.cluster.local", port: 5432, want: Remote},
		{f: local, host: "cache", port: 6379, want: Local},
		{f: local, host: "cache", port: 6380, want: Remote},
		{f: local, host: "api.example.com", port: 443, want: Local},
		{f: local, host: "example.com", port: 443, want: Remote},
		{f: local, host: "badexample.com", port: 443, want: Remote},
		{f: local, host: "10.1.2.3", port: 80, want: Local},
		{f: local, host: "[::1]", port: 80, want: Remote},
		{f: local, host: "web", port: 80, want: Remote},
		{f: remote, host: "redis.other-ns", port: 6379, want: Remote},
		{f: remote, host: "redis", port: 6379, want: Local},
		{f: remote, host: "a.svc.cluster.local", port: 443, want: Remote},
		{f: remote, host: "a.svc.cluster.local", port: 80, want: Local},
	}
	for _, tt := range tests {
		if got := tt.f.RouteName(tt.host, tt.port); got != tt.want {
			t.Errorf("RouteName(%q, %d) with %v = %v, want %v", tt.host, tt.port, tt.f.Rules(), got, tt.want)
		}
	}
}

func TestResolve(t *testing.T) {
	local := mustFilter(t, []string{"db", "redis.other-ns:6379", "*.example.com", "10.0.0.0/8"}, nil)
	remote := mustFilter(t, nil, []string{"redis", "*.cluster.local"})
	tests := []struct {
		f     *Filter
		qname string
		want  Resolution
	}{
		{f: nil, qname: "db.", want: Resolution{Route: Remote, Name: "db"}},
		// The program wrote "db"; its resolver asks every search-domain variant, then "db." itself.
		{f: local, qname: "db.ns.svc.cluster.local.", want: Resolution{Route: Local, Name: "db", Rule: true}},
		{f: local, qname: "DB.svc.cluster.local.", want: Resolution{Route: Local, Name: "db", Rule: true}},
		{f: local, qname: "db.cluster.local.", want: Resolution{Route: Local, Name: "db", Rule: true}},
		{f: local, qname: "db.", want: Resolution{Route: Local, Name: "db", Rule: true}},
		{f: local, qname: "db.example.org.", want: Resolution{Route: Remote, Name: "db.example.org"}},
		{f: local, qname: "db.ns.", want: Resolution{Route: Remote, Name: "db.ns"}},
		{f: local, qname: "redis.other-ns.ns.svc.cluster.local.", want: Resolution{Route: Local, Name: "redis.other-ns", Rule: true}},
		{f: local, qname: "redis.other-ns.svc.cluster.local.", want: Resolution{Route: Local, Name: "redis.other-ns", Rule: true}},
		{f: local, qname: "redis.ns.svc.cluster.local.", want: Resolution{Route: Remote, Name: "redis.ns.svc.cluster.local"}},
		{f: local, qname: "api.example.com.ns.svc.cluster.local.", want: Resolution{Route: Local, Name: "api.example.com", Rule: true}},
		{f: local, qname: "api.example.com.", want: Resolution{Route: Local, Name: "api.example.com", Rule: true}},
		{f: local, qname: "svc.cluster.local.", want: Resolution{Route: Remote, Name: "svc.cluster.local"}},
		{f: remote, qname: "redis.ns.svc.cluster.local.", want: Resolution{Route: Remote, Name: "redis.ns.svc.cluster.local", Rule: true}},
		{f: mustFilter(t, nil, []string{"redis"}), qname: "redis.ns.svc.cluster.local.", want: Resolution{Route: Remote, Name: "redis", Rule: true}},
		{f: remote, qname: "postgres.ns.svc.cluster.local.", want: Resolution{Route: Remote, Name: "postgres.ns.svc.cluster.local", Rule: true}},
		{f: remote, qname: "google.com.ns.svc.cluster.local.", want: Resolution{Route: Remote, Name: "google.com.ns.svc.cluster.local", Rule: true}},
		{f: remote, qname: "google.com.", want: Resolution{Route: Local, Name: "google.com"}},
		{f: mustFilter(t, nil, []string{"redis"}), qname: "google.com.ns.svc.cluster.local.", want: Resolution{Route: Local, Name: "google.com.ns.svc.cluster.local."}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, tt.f.Resolve(tt.qname, search)); diff != "" {
			t.Errorf("Resolve(%q) with %v mismatch (-want +got):\n%s", tt.qname, tt.f.Rules(), diff)
		}
	}
}

func TestRecord(t *testing.T) {
	f := mustFilter(t, []string{"db:5432", "db:5433", "cache", "*.example.com:443"}, nil)
	f.Record("db.ns.svc.cluster.local.", search, []netip.Addr{netip.MustParseAddr("192.168.1.7"), netip.MustParseAddr("::ffff:192.168.1.8")})
	f.Record("cache.", search, []netip.Addr{netip.MustParseAddr("fd00::6")})
	f.Record("api.example.com.", search, []netip.Addr{netip.MustParseAddr("93.184.215.14")})
	// Names no rule names are ignored, whatever they resolve to.
	f.Record("web.ns.svc.cluster.local.", search, []netip.Addr{netip.MustParseAddr("10.96.1.1")})

	tests := []struct {
		dest string
		want Route
	}{
		{dest: "192.168.1.7:5432", want: Local},
		{dest: "192.168.1.7:5433", want: Local},
		{dest: "192.168.1.8:5433", want: Local},
		{dest: "192.168.1.7:22", want: Remote},
		{dest: "[fd00::6]:6379", want: Local},
		{dest: "[fd00::6]:1", want: Local},
		{dest: "93.184.215.14:443", want: Local},
		{dest: "93.184.215.14:80", want: Remote},
		{dest: "10.96.1.1:80", want: Remote},
	}
	for _, tt := range tests {
		if got := f.Route(netip.MustParseAddrPort(tt.dest)); got != tt.want {
			t.Errorf("Route(%s) = %v, want %v", tt.dest, got, tt.want)
		}
	}

	// With --remote the recorded names are the ones that go through the pod.
	r := mustFilter(t, nil, []string{"redis"})
	r.Record("redis.ns.svc.cluster.local.", search, []netip.Addr{netip.MustParseAddr("10.96.3.4")})
	if got := r.Route(netip.MustParseAddrPort("10.96.3.4:6379")); got != Remote {
		t.Errorf("--remote redis: Route(redis's address) = %v, want remote", got)
	}
	if got := r.Route(netip.MustParseAddrPort("10.96.3.5:6379")); got != Local {
		t.Errorf("--remote redis: Route(other address) = %v, want local", got)
	}
}

func TestRecordBounded(t *testing.T) {
	f := mustFilter(t, []string{"*.example.com"}, nil)
	first := netip.MustParseAddr("10.0.0.0")
	a := first
	for range maxLearned + 1 {
		f.Record("x.example.com.", nil, []netip.Addr{a})
		a = a.Next()
	}
	f.mu.RLock()
	n, order := len(f.learned), len(f.order)
	f.mu.RUnlock()
	if n != order || n > maxLearned {
		t.Fatalf("learned %d addresses, order %d, want at most %d", n, order, maxLearned)
	}
	if got := f.Route(netip.AddrPortFrom(first, 1)); got != Remote {
		t.Errorf("oldest address still routed %v after trimming", got)
	}
	if got := f.Route(netip.AddrPortFrom(a.Prev(), 1)); got != Local {
		t.Errorf("newest address routed %v, want local", got)
	}
}

// TestConcurrent is for -race: the resolver records while connections are routed.
func TestConcurrent(t *testing.T) {
	f := mustFilter(t, []string{"*.example.com"}, nil)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 200 {
				a := netip.AddrFrom4([4]byte{10, byte(i), byte(j), 1})
				f.Record(fmt.Sprintf("h%d.example.com.", j), nil, []netip.Addr{a})
				if f.Route(netip.AddrPortFrom(a, 80)) != Local {
					t.Errorf("%s not local right after Record", a)
				}
			}
		})
	}
	wg.Wait()
}
