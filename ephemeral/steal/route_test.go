package steal

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/httpx"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/probe"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// dispatcher is a Steal with registrations as the Hub makes them, without a redirect: what pick
// needs. The probes are the pod's HTTP readiness probe on /healthz.
func dispatcher(t testing.TB, specs ...wire.StealSpec) (*Steal, []*Registration) {
	t.Helper()
	s := &Steal{ending: newEnding(), probes: probe.New(&wire.Probes{Declared: []wire.Probe{{Port: 8080, Kind: wire.ProbeHTTP, Path: "/healthz"}}}, nil)}
	var regs []*Registration
	for i, spec := range specs {
		r, err := s.newRegistration(SessionConfig{Session: fmt.Sprintf("s%d", i), Spec: spec})
		if err != nil {
			t.Fatal(err)
		}
		s.add(r)
		regs = append(regs, r)
	}
	return s, regs
}

func header(h string) wire.StealSpec {
	return wire.StealSpec{Ports: []int{8080}, Filter: &wire.HTTPFilter{Headers: []string{h}}}
}

func head(t testing.TB, raw string) *httpx.RequestHead {
	t.Helper()
	h, err := httpx.ParseRequestHead([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	return &h
}

var (
	benchSource = netip.MustParseAddrPort("10.0.0.9:40000")
	benchOrig   = netip.MustParseAddrPort("10.0.0.1:8080")
)

// TestPick: a request goes to the first registered session whose filter matches it, the rest to the
// app; a session that is away or gone takes nothing; a probe goes only to a session that steals
// probes; nothing is stolen once the steal is ending.
func TestPick(t *testing.T) {
	probesToo := header(`^X-Dev: (alice|bob)$`)
	probesToo.StealProbes = true
	s, regs := dispatcher(t,
		header(`^X-Dev: alice$`),
		header(`^X-Dev: (alice|bob)$`), // matches Alice's requests too: she registered first
		wire.StealSpec{Ports: []int{8080}, Filter: &wire.HTTPFilter{Paths: []string{`^/carol`}}},
		probesToo,
	)
	name := func(r *Registration) string {
		if r == nil {
			return "app"
		}
		return r.Session
	}
	req := func(path, dev string) string {
		raw := "GET " + path + " HTTP/1.1\r\nHost: x\r\n"
		if dev != "" {
			raw += "X-Dev: " + dev + "\r\n"
		}
		if path == "/healthz" {
			raw += "User-Agent: kube-probe/1.31\r\n"
		}
		r := s.pick(head(t, raw+"\r\n"), benchSource, benchOrig)
		if r != nil {
			r.answered() // the request's event
		}
		return name(r)
	}
	for _, tc := range []struct{ path, dev, want string }{
		{"/", "alice", "s0"},
		{"/", "bob", "s1"},
		{"/carol/x", "", "s2"},
		{"/carol/x", "bob", "s1"},
		{"/", "dave", "app"},
		{"/", "", "app"},
		{"/healthz", "bob", "s3"}, // a probe: only the session that steals probes
		{"/healthz", "", "app"},
	} {
		if got := req(tc.path, tc.dev); got != tc.want {
			t.Errorf("%s X-Dev %q went to %s, want %s", tc.path, tc.dev, got, tc.want)
		}
	}
	regs[0].Away()
	if got := req("/", "alice"); got != "s1" {
		t.Errorf("alice's request while she is away went to %s, want the next matching session s1", got)
	}
	regs[0].Back()
	if got := req("/", "alice"); got != "s0" {
		t.Errorf("alice's request once back went to %s, want s0", got)
	}
	// A session that leaves while a request of its is in flight returns once it is answered.
	if got := req("/", "bob"); got != "s1" {
		t.Fatalf("bob's request went to %s", got)
	}
	regs[1].picked()
	left := make(chan error)
	go func() { left <- regs[1].leave(false) }()
	regs[1].answered()
	if err := <-left; err != nil {
		t.Fatal(err)
	}
	if got := req("/", "bob"); got != "s3" {
		t.Errorf("bob's request after s1 left went to %s, want s3", got)
	}
	if got := regs[3].Others(); len(got) != 2 || got[0] != regs[0] || got[1] != regs[2] {
		t.Errorf("others of s3: %v", got)
	}
	s.startDrain()
	if got := req("/", "alice"); got != "app" {
		t.Errorf("alice's request while the steal ends went to %s, want app", got)
	}
}

// BenchmarkPick is the agent's routing cost per request among 1 and 10 sessions' header filters
// (the pod's probes declared): for a request the last session's filter matches (every filter
// tried) and one no filter matches (every filter tried, then the app).
func BenchmarkPick(b *testing.B) {
	for _, n := range []int{1, 10} {
		var specs []wire.StealSpec
		for i := range n {
			specs = append(specs, header(fmt.Sprintf(`^X-Dev: dev%d$`, i)))
		}
		s, _ := dispatcher(b, specs...)
		for _, tc := range []struct{ name, dev string }{{"last", fmt.Sprintf("dev%d", n-1)}, {"none", "nobody"}} {
			h := head(b, "GET /api/orders?id=42 HTTP/1.1\r\nHost: orders:8080\r\nUser-Agent: curl/8.5\r\nAccept: */*\r\nX-Dev: "+tc.dev+"\r\n\r\n")
			b.Run(fmt.Sprintf("sessions=%d/%s", n, tc.name), func(b *testing.B) {
				b.ReportAllocs()
				ct := &connTargets{}
				for b.Loop() {
					if r := s.pick(h, benchSource, benchOrig); r != nil {
						ct.target(r)
						r.answered()
					}
				}
			})
		}
	}
}
