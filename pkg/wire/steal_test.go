package wire

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestStealSpecValidate(t *testing.T) {
	tests := []struct {
		name    string
		spec    StealSpec
		wantErr string
	}{
		{name: "whole port", spec: StealSpec{Ports: []int{80}}},
		{name: "filtered", spec: StealSpec{Ports: []int{80, 443}, Filter: &HTTPFilter{Headers: []string{"^User-Agent: (?!kube-probe)"}, Match: MatchAll}}},
		{name: "no ports", spec: StealSpec{}, wantErr: "steal without ports"},
		{name: "port zero", spec: StealSpec{Ports: []int{0}}, wantErr: "port 0 out of range"},
		{name: "port too big", spec: StealSpec{Ports: []int{65536}}, wantErr: "port 65536 out of range"},
		{name: "duplicate", spec: StealSpec{Ports: []int{80, 80}}, wantErr: "port 80 given twice"},
		{name: "bad regex", spec: StealSpec{Ports: []int{80}, Filter: &HTTPFilter{Paths: []string{"(a"}}}, wantErr: `path filter "(a"`},
		{name: "bad match", spec: StealSpec{Ports: []int{80}, Filter: &HTTPFilter{Match: "most"}}, wantErr: `match must be "all" or "any", not "most"`},
		{name: "bad method", spec: StealSpec{Ports: []int{80}, Filter: &HTTPFilter{Methods: []string{"GE T"}}}, wantErr: `method "GE T"`},
		{name: "method not a token", spec: StealSpec{Ports: []int{80}, Filter: &HTTPFilter{Methods: []string{"GET/"}}}, wantErr: `method "GET/"`},
		{name: "probes", spec: StealSpec{Ports: []int{80}, Probes: &Probes{Sources: []string{"10.250.0.1", "fd00::1"}, Declared: []Probe{
			{Port: 80, Kind: ProbeHTTP, Path: "/healthz", Headers: []ProbeHeader{{Name: "User-Agent", Value: "x"}}},
			{Port: 81, Kind: ProbeGRPC, Path: "/grpc.health.v1.Health/Check"}, {Port: 443, Kind: ProbeHTTPS}, {Port: 6379, Kind: ProbeTCP},
		}}}},
		{name: "probe port", spec: StealSpec{Ports: []int{80}, Probes: &Probes{Declared: []Probe{{Port: 0, Kind: ProbeTCP}}}}, wantErr: "probe port 0 out of range"},
		{name: "probe kind", spec: StealSpec{Ports: []int{80}, Probes: &Probes{Declared: []Probe{{Port: 80, Kind: "exec"}}}}, wantErr: `kind "exec"`},
		{name: "probe path", spec: StealSpec{Ports: []int{80}, Probes: &Probes{Declared: []Probe{{Port: 80, Kind: ProbeHTTP, Path: "healthz"}}}}, wantErr: `path "healthz"`},
		{name: "probe header", spec: StealSpec{Ports: []int{80}, Probes: &Probes{Declared: []Probe{{Port: 80, Kind: ProbeHTTP, Path: "/", Headers: []ProbeHeader{{Name: "a b"}}}}}}, wantErr: `header name "a b"`},
		{name: "probe source", spec: StealSpec{Ports: []int{80}, Probes: &Probes{Sources: []string{"node-1"}}}, wantErr: `probe source "node-1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error = %v, want a bad request containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestFilterMatcher(t *testing.T) {
	browser := []string{"Host: web", "User-Agent: curl/8.5.0", "X-Dev: alice"}
	probe := []string{"Host: 10.88.0.5:8080", "User-Agent: kube-probe/1.33", "Accept: */*"}
	tests := []struct {
		name    string
		filter  HTTPFilter
		method  string
		target  string
		headers []string
		want    bool
	}{
		{"look-ahead passes a browser", HTTPFilter{Headers: []string{"^User-Agent: (?!kube-probe)"}}, "GET", "/", browser, true},
		{"look-ahead spares a probe", HTTPFilter{Headers: []string{"^User-Agent: (?!kube-probe)"}}, "GET", "/healthz", probe, false},
		{"header name case-insensitive", HTTPFilter{Headers: []string{"^x-dev: ALICE$"}}, "GET", "/", browser, true},
		{"header absent", HTTPFilter{Headers: []string{"^X-Dev: bob$"}}, "GET", "/", browser, false},
		{"path sees the query", HTTPFilter{Paths: []string{`\?debug=1`}}, "GET", "/api?debug=1", nil, true},
		{"path anchored", HTTPFilter{Paths: []string{"^/api/"}}, "GET", "/web/api/", nil, false},
		{"method list", HTTPFilter{Methods: []string{"post", "PUT"}}, "POST", "/", nil, true},
		{"method not listed", HTTPFilter{Methods: []string{"POST"}}, "GET", "/", nil, false},
		{"all needs every filter", HTTPFilter{Headers: []string{"^X-Dev: alice"}, Paths: []string{"^/admin"}, Match: MatchAll}, "GET", "/api", browser, false},
		{"any needs one", HTTPFilter{Headers: []string{"^X-Dev: alice"}, Paths: []string{"^/admin"}, Match: MatchAny}, "GET", "/api", browser, true},
		{"all of two headers", HTTPFilter{Headers: []string{"^X-Dev: alice", "^Host: web$"}}, "GET", "/", browser, true},
		{"a header pattern sees one line at a time", HTTPFilter{Headers: []string{`^X-A: 1.*X-B`}}, "GET", "/", []string{"X-A: 1", "X-B: 2"}, false},
		{"value with a colon", HTTPFilter{Headers: []string{`^Host: example\.com:8080$`}}, "GET", "/", []string{"Host: example.com:8080"}, true},
		{"path ignores case", HTTPFilter{Paths: []string{`^/API`}}, "GET", "/api", nil, true},
		{"methods are one filter", HTTPFilter{Methods: []string{"GET", "POST"}, Match: MatchAll}, "POST", "/", nil, true},
		{"any: none", HTTPFilter{Headers: []string{`^X-A: 2`}, Paths: []string{`^/nope`}, Methods: []string{"PUT"}, Match: MatchAny}, "GET", "/", []string{"X-A: 1"}, false},
		{"all: method missing", HTTPFilter{Paths: []string{`^/api`}, Methods: []string{"POST"}}, "GET", "/api", nil, false},
		{"no headers at all", HTTPFilter{Headers: []string{`.*`}}, "GET", "/", nil, false},
		{"negative look-behind", HTTPFilter{Paths: []string{`(?<!/internal)/admin`}}, "GET", "/internal/admin", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := tt.filter.Compile()
			if err != nil {
				t.Fatal(err)
			}
			if got := m.Match(tt.method, tt.target, tt.headers); got != tt.want {
				t.Errorf("Match = %v, want %v", got, tt.want)
			}
		})
	}
	if m, err := (&HTTPFilter{}).Compile(); m != nil || err != nil {
		t.Errorf("empty filter compiled to %v, %v; want nil, nil", m, err)
	}
}

func TestIncomingValidate(t *testing.T) {
	for _, req := range []OpenRequest{
		{Kind: KindIncoming, Port: 0},
		{Kind: KindIncoming, Port: 80, Peer: "no-port"},
		{Kind: KindSteal},
	} {
		if err := req.Validate(); !errors.Is(err, ErrBadRequest) {
			t.Errorf("Validate(%+v) = %v, want a bad request", req, err)
		}
	}
}

func TestFilterMatchTimeout(t *testing.T) {
	// Catastrophic backtracking: without the timeout this takes far longer than the test.
	m, err := (&HTTPFilter{Paths: []string{`^(a+)+$`}}).compile(10 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	// Without the timeout, 2^64 steps: the wait below would run out long before.
	matched := make(chan bool, 1)
	go func() { matched <- m.Match("GET", strings.Repeat("a", 64)+"!", nil) }()
	select {
	case ok := <-matched:
		if ok {
			t.Error("a timed-out pattern matched")
		}
	case <-time.After(time.Minute):
		t.Fatal("the match is still running despite its 10ms timeout")
	}
}

func BenchmarkFilterMatch(b *testing.B) {
	m, err := (&HTTPFilter{Headers: []string{`^User-Agent: (?!kube-probe)`, `^x-steal: yes$`}}).Compile()
	if err != nil {
		b.Fatal(err)
	}
	headers := []string{"Host: api", "User-Agent: curl/8.5.0", "Accept: */*", "X-Steal: yes"}
	b.ReportAllocs()
	for b.Loop() {
		if !m.Match("GET", "/api/users?id=1", headers) {
			b.Fatal("no match")
		}
	}
}

func TestHTTPFilterDescribe(t *testing.T) {
	for _, tc := range []struct {
		f    *HTTPFilter
		want string
	}{
		{nil, ""},
		{&HTTPFilter{}, ""},
		{&HTTPFilter{Headers: []string{`^X-Dev: alice$`}}, `header "^X-Dev: alice$"`},
		{&HTTPFilter{Headers: []string{`a`}, Paths: []string{`^/api`}, Methods: []string{"GET", "POST"}}, `header "a" and path "^/api" and method GET|POST`},
		{&HTTPFilter{Headers: []string{`a`}, Paths: []string{`b`}, Match: MatchAny}, `any of header "a", path "b"`},
		{&HTTPFilter{Headers: []string{"\x1b[2J"}}, `header "\x1b[2J"`},
	} {
		if got := tc.f.Describe(); got != tc.want {
			t.Errorf("%+v: got %q, want %q", tc.f, got, tc.want)
		}
	}
}
