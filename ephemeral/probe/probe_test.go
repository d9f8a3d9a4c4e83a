package probe

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

var (
	gateway = netip.MustParseAddr("10.88.0.1")
	node    = "10.250.0.1"
)

// testProbes are a pod's probes: an httpGet probe with the kubelet's User-Agent, one with its own,
// a gRPC probe, an HTTPS probe and a tcpSocket probe.
func testProbes() *wire.Probes {
	return &wire.Probes{
		Sources: []string{node},
		Declared: []wire.Probe{
			{Port: 8080, Kind: wire.ProbeHTTP, Path: "/healthz"},
			{Port: 8080, Kind: wire.ProbeHTTP, Path: "/ready?full=1", Headers: []wire.ProbeHeader{{Name: "User-Agent", Value: "my-checker/2"}, {Name: "X-Probe", Value: "yes"}}},
			{Port: 9090, Kind: wire.ProbeGRPC, Path: "/grpc.health.v1.Health/Check"},
			{Port: 8443, Kind: wire.ProbeHTTPS},
			{Port: 6379, Kind: wire.ProbeTCP},
		},
	}
}

func req(source string, port uint16, path string, header ...string) Request {
	return Request{Source: netip.MustParseAddrPort(source), Port: port, Path: path, Header: header}
}

func TestRuleIsProbe(t *testing.T) {
	const kube = "User-Agent: kube-probe/1.33"
	tests := []struct {
		name string
		q    Request
		want bool
	}{
		{"kubelet httpGet from the gateway", req("10.88.0.1:51000", 8080, "/healthz", kube, "Accept: */*"), true},
		{"kubelet httpGet from the node address", req("10.250.0.1:51000", 8080, "/healthz", kube), true},
		{"kubelet User-Agent from elsewhere", req("10.1.2.3:51000", 8080, "/healthz", kube), true},
		{"value and name case", req("10.1.2.3:51000", 8080, "/healthz", "USER-AGENT:Kube-Probe/1.33"), true},
		{"any of two user agents", req("10.1.2.3:51000", 8080, "/healthz", "User-Agent: curl/8.5.0", kube), true},
		{"gateway without a User-Agent", req("10.88.0.1:51000", 8080, "/healthz"), true},
		{"own User-Agent from the gateway", req("10.88.0.1:51000", 8080, "/ready?full=1", "User-Agent: my-checker/2", "x-probe:  yes "), true},
		{"own User-Agent from the node address", req("10.250.0.1:51000", 8080, "/ready?full=1", "User-Agent: my-checker/2", "X-Probe: yes"), true},
		{"own User-Agent, a declared header missing", req("10.88.0.1:51000", 8080, "/ready?full=1", "User-Agent: my-checker/2"), false},
		{"own User-Agent, a declared header's value differs", req("10.88.0.1:51000", 8080, "/ready?full=1", "User-Agent: my-checker/2", "X-Probe: no"), false},
		{"own User-Agent from a client", req("10.88.0.7:51000", 8080, "/ready?full=1", "User-Agent: my-checker/2", "X-Probe: yes"), false},
		{"gRPC probe", req("10.88.0.1:51000", 9090, "/grpc.health.v1.Health/Check", "user-agent: kube-probe/1.33 grpc-go/1.62.1"), true},
		{"gRPC client", req("10.88.0.7:51000", 9090, "/grpc.health.v1.Health/Check", "user-agent: grpc-go/1.62.1"), false},
		{"undeclared path from the gateway", req("10.88.0.1:51000", 8080, "/api", kube), false},
		{"kubelet User-Agent on an undeclared path", req("10.1.2.3:51000", 8080, "/api", kube), false},
		{"declared path on another port", req("10.88.0.1:51000", 8081, "/healthz", kube), false},
		{"query not declared", req("10.88.0.1:51000", 8080, "/healthz?x=1", kube), false},
		{"client on a probe path", req("10.88.0.7:51000", 8080, "/healthz", "User-Agent: curl/8.5.0"), false},
		{"kube-probe in a comment", req("10.88.0.7:51000", 8080, "/healthz", "User-Agent: Mozilla/5.0 (kube-probe/1.33)"), false},
		{"kube-probe without version", req("10.88.0.7:51000", 8080, "/healthz", "User-Agent: kube-probe"), false},
		{"kube-probe in another field", req("10.88.0.7:51000", 8080, "/healthz", "X-User-Agent: kube-probe/1.33"), false},
		{"a Unicode look-alike name", req("10.88.0.7:51000", 8080, "/healthz", "U\u017fer-Agent: kube-probe/1.33"), false},
		{"IPv4-mapped gateway", Request{Source: netip.AddrPortFrom(netip.AddrFrom16(gateway.As16()), 1), Port: 8080, Path: "/healthz"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(testProbes(), []netip.Addr{gateway})
			if got := r.IsProbe(tt.q); got != tt.want {
				t.Errorf("IsProbe(%+v) = %v, want %v", tt.q, got, tt.want)
			}
		})
	}
}

func TestRuleWithoutDeclaredProbes(t *testing.T) {
	q := req("10.88.0.1:51000", 8080, "/healthz", "User-Agent: kube-probe/1.33")
	for name, r := range map[string]*Rule{"nil": nil, "no spec": New(nil, []netip.Addr{gateway}), "zero": {}} {
		if r.IsProbe(q) || r.PassConn(q.Source, 8443) || r.ReadsHTTP(8080) {
			t.Errorf("%s rule: a pod that declares no probes has a probe", name)
		}
	}
}

func TestRulePassConn(t *testing.T) {
	tests := []struct {
		name   string
		source string
		port   uint16
		want   bool
	}{
		{"HTTPS probe from the gateway", "10.88.0.1:40000", 8443, true},
		{"HTTPS probe from the node address", "10.250.0.1:40000", 8443, true},
		{"tcpSocket probe from the gateway", "10.88.0.1:40000", 6379, true},
		{"a client to the HTTPS port", "10.88.0.7:40000", 8443, false},
		{"the gateway to an HTTP probe's port", "10.88.0.1:40000", 8080, false},
		{"the gateway to a port without a probe", "10.88.0.1:40000", 5432, false},
	}
	for _, tt := range tests {
		r := New(testProbes(), []netip.Addr{gateway})
		if got := r.PassConn(netip.MustParseAddrPort(tt.source), tt.port); got != tt.want {
			t.Errorf("%s: PassConn(%s, %d) = %v, want %v", tt.name, tt.source, tt.port, got, tt.want)
		}
	}
}

// TestRuleLearnsKubeletSources: a source seen sending a declared probe with the kubelet's
// User-Agent is the kubelet's (a node whose address the pod sees as neither its gateway nor the
// node address), so its HTTPS and tcpSocket probes pass too; a User-Agent on an undeclared path
// teaches nothing, and the set is bounded.
func TestRuleLearnsKubeletSources(t *testing.T) {
	r := New(testProbes(), nil)
	other := netip.MustParseAddrPort("10.1.2.3:40000")
	if r.PassConn(other, 8443) {
		t.Fatal("an unknown source passes before it sent a probe")
	}
	r.IsProbe(Request{Source: other, Port: 8080, Path: "/api", Header: []string{"User-Agent: kube-probe/1.33"}})
	if r.PassConn(other, 8443) {
		t.Fatal("a kubelet User-Agent on an undeclared path made its source the kubelet's")
	}
	if !r.IsProbe(Request{Source: other, Port: 8080, Path: "/healthz", Header: []string{"User-Agent: kube-probe/1.33"}}) {
		t.Fatal("the kubelet's probe is not a probe")
	}
	if !r.PassConn(other, 8443) || !r.PassConn(other, 6379) {
		t.Error("a source seen sending the kubelet's probe does not pass to the HTTPS and tcpSocket ports")
	}
	if !r.IsProbe(Request{Source: other, Port: 8080, Path: "/ready?full=1", Header: []string{"User-Agent: my-checker/2", "X-Probe: yes"}}) {
		t.Error("a probe with its own User-Agent from a learned source is not a probe")
	}
	for i := range 2 * maxLearned {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 9, 0, byte(i)}), 1)
		r.IsProbe(Request{Source: src, Port: 8080, Path: "/healthz", Header: []string{"User-Agent: kube-probe/1.33"}})
	}
	r.mu.Lock()
	n := len(r.learned)
	r.mu.Unlock()
	if n != maxLearned {
		t.Errorf("learned %d sources, want the bound %d", n, maxLearned)
	}
}

func TestRuleSources(t *testing.T) {
	r := New(&wire.Probes{Sources: []string{"127.0.0.6", "10.250.0.1"}}, []netip.Addr{gateway, netip.MustParseAddr("fd00::1")})
	want := []netip.Addr{netip.MustParseAddr("10.88.0.1"), netip.MustParseAddr("10.250.0.1"), netip.MustParseAddr("127.0.0.6"), netip.MustParseAddr("fd00::1")}
	if d := cmp.Diff(want, r.Sources(), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Errorf("Sources (-want +got):\n%s", d)
	}
}

func TestParseRoutes(t *testing.T) {
	route := "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n" +
		"eth0\t00000000\t0100580A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n" +
		"eth0\t0000580A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n" +
		"eth1\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n" // a default route without a gateway
	got, err := parseRoute(strings.NewReader(route))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]netip.Addr{netip.MustParseAddr("10.88.0.1")}, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Errorf("parseRoute (-want +got):\n%s", d)
	}
	v6 := "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n" +
		"fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000003 00000000 00000001     eth0\n" +
		"00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n"
	got, err = parseIPv6Route(strings.NewReader(v6))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]netip.Addr{netip.MustParseAddr("fe80::1")}, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Errorf("parseIPv6Route (-want +got):\n%s", d)
	}
	if _, err := parseRoute(strings.NewReader("h\neth0\t00000000\tzz\t0003\t0\t0\t0\t00000000\n")); err == nil {
		t.Error("a gateway that is not hex parsed")
	}
}
