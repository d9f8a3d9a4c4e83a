package mirror

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/httpx"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/probe"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// testProbes are the pod's probes on port 8080: an httpGet probe, one with its own User-Agent, and
// a gRPC probe; the node's address is testNode.
func testProbes() *wire.Probes {
	return &wire.Probes{Sources: []string{testNode.Addr().String()}, Declared: []wire.Probe{
		{Port: 8080, Kind: wire.ProbeHTTP, Path: "/healthz"},
		{Port: 8080, Kind: wire.ProbeHTTP, Path: "/own", Headers: []wire.ProbeHeader{{Name: "User-Agent", Value: "checker/1"}}},
		{Port: 8080, Kind: wire.ProbeGRPC, Path: "/grpc.health.v1.Health/Check"},
		{Port: 8443, Kind: wire.ProbeHTTPS},
	}}
}

var testNode = netip.MustParseAddrPort("10.250.0.1:51000")

// TestProbeStealAndMirrorAgree: the same request is a kubelet probe to both the steal and the
// mirror, or to neither. Each side reads it its own way (the steal's Peek and HTTP engine, the
// mirror's capture decoder) and the one rule decides. Before, the mirror took the first
// User-Agent field only and compared "kube-probe/" with case, so "Kube-Probe/1.33" and a second
// User-Agent field were probes to the steal and copies to the mirror.
func TestProbeStealAndMirrorAgree(t *testing.T) {
	h1 := func(target, fields string) []byte {
		return []byte("GET " + target + " HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n" + fields + "Accept: */*\r\nConnection: close\r\n\r\n")
	}
	tests := []struct {
		name string
		req  []byte
		want bool
	}{
		{"kubelet httpGet", h1("/healthz", "User-Agent: kube-probe/1.33\r\n"), true},
		{"value case", h1("/healthz", "User-Agent: Kube-Probe/1.33\r\n"), true},
		{"name case", h1("/healthz", "user-agent:kube-probe/1.33\r\n"), true},
		{"second of two user agents", h1("/healthz", "User-Agent: curl/8.5.0\r\nUser-Agent: kube-probe/1.33\r\n"), true},
		{"first of two user agents", h1("/healthz", "User-Agent: kube-probe/1.33\r\nUser-Agent: curl/8.5.0\r\n"), true},
		{"absolute form", h1("http://10.0.0.1:8080/healthz", "User-Agent: kube-probe/1.33\r\n"), true},
		{"curl", h1("/healthz", "User-Agent: curl/8.5.0\r\n"), false},
		{"no user agent", h1("/healthz", ""), false},
		{"kube-probe in a comment", h1("/healthz", "User-Agent: Mozilla/5.0 (kube-probe/1.33)\r\n"), false},
		{"kube-probe without version", h1("/healthz", "User-Agent: kube-probe\r\n"), false},
		{"another field", h1("/healthz", "X-User-Agent: kube-probe/1.33\r\n"), false},
		{"kubelet gRPC", h2cHead(t, "user-agent", "kube-probe/1.33 grpc-go/1.62.1"), true},
		{"gRPC client", h2cHead(t, "user-agent", "grpc-go/1.62.1"), false},
		{"undeclared path", h1("/api", "User-Agent: kube-probe/1.33\r\n"), false},
		{"own User-Agent from a client", h1("/own", "User-Agent: checker/1\r\n"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			steal, stealReq := stealSaysProbe(t, tt.req, testFlow)
			mirror := mirrorSaysProbe(t, tt.req, testFlow)
			if steal != tt.want || mirror != tt.want {
				t.Errorf("probe: steal says %v, mirror %v; want %v", steal, mirror, tt.want)
			}
			// What a richer rule will read is the same on both sides too.
			mirrorReq := decoded(t, tt.req)
			if stealReq.Source != mirrorReq.Source || stealReq.Port != mirrorReq.Port || stealReq.Path != mirrorReq.Path {
				t.Errorf("steal reads %+v, mirror %+v", stealReq, mirrorReq)
			}
		})
	}
}

// TestProbeFromTheNode: a probe with its own User-Agent from the node's address is a probe to both
// sides, and an HTTPS probe's connection (source and port) is not copied.
func TestProbeFromTheNode(t *testing.T) {
	fromNode := capture.Flow{Client: testNode, Server: testFlow.Server}
	req := []byte("GET /own HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nUser-Agent: checker/1\r\nAccept: */*\r\n\r\n")
	steal, _ := stealSaysProbe(t, req, fromNode)
	mirror := mirrorSaysProbe(t, req, fromNode)
	if !steal || !mirror {
		t.Errorf("a probe with its own User-Agent from the node: steal says %v, mirror %v; want probes", steal, mirror)
	}
	m, err := New(context.Background(), Config{Session: testSession, Spec: wire.MirrorSpec{Ports: []int{8443}, Probes: testProbes()}, Open: sinkOpener{}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if h := m.Handler(capture.Flow{Client: testNode, Server: netip.MustParseAddrPort("10.0.0.1:8443")}); h != nil {
		t.Error("the mirror copies the HTTPS probe's connection from the node")
	}
	if h := m.Handler(capture.Flow{Client: testFlow.Client, Server: netip.MustParseAddrPort("10.0.0.1:8443")}); h == nil {
		t.Error("the mirror does not copy a client's connection to the HTTPS probe's port")
	}
	if s := m.Stats(); s.Probes != 1 {
		t.Errorf("mirror stats %+v, want 1 probe", s)
	}
}

// stealSaysProbe decides as the steal does: the request's head as Peek reads it from the
// connection, with the connection's addresses.
func stealSaysProbe(t *testing.T, req []byte, flow capture.Flow) (bool, probe.Request) {
	t.Helper()
	client, agent := net.Pipe()
	defer client.Close()
	defer agent.Close()
	go func() { _, _ = client.Write(req) }()
	pk, err := httpx.Peek(agent, 10*time.Second)
	if err != nil || pk.First == nil {
		t.Fatalf("Peek = %+v, %v", pk, err)
	}
	q := pk.First.ProbeRequest(flow.Client, flow.Server)
	return probe.New(testProbes(), nil).IsProbe(q), q
}

// mirrorSaysProbe runs the request through a mirror and reads its probe count.
func mirrorSaysProbe(t *testing.T, req []byte, flow capture.Flow) bool {
	t.Helper()
	m, err := New(context.Background(), Config{Session: testSession, Spec: wire.MirrorSpec{Ports: []int{8080}, Probes: testProbes()}, Open: sinkOpener{}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	h := m.Handler(flow)
	now := time.Now()
	h.Data(capture.ClientToServer, bytes.Clone(req), now)
	h.End(capture.ClientToServer, capture.EndFIN, now)
	h.End(capture.ServerToClient, capture.EndFIN, now)
	s := m.Stats()
	if s.Requests != 1 {
		t.Fatalf("mirror stats %+v: the request was not decoded", s)
	}
	return s.Probes == 1
}

// decoded is the request the mirror's rule reads.
func decoded(t *testing.T, req []byte) probe.Request {
	t.Helper()
	var got []probe.Request
	f := capture.NewHTTPFlow(testFlow, capture.HTTPOptions{OnRequest: func(r *capture.Request) { got = append(got, probeRequest(r)) }})
	now := time.Now()
	f.Data(capture.ClientToServer, bytes.Clone(req), now)
	f.End(capture.ClientToServer, capture.EndFIN, now)
	f.End(capture.ServerToClient, capture.EndFIN, now)
	if len(got) != 1 {
		t.Fatalf("%d requests decoded", len(got))
	}
	return got[0]
}

// h2cHead is a prior-knowledge h2c connection's first bytes: a gRPC health check with one more field.
func h2cHead(t *testing.T, name, value string) []byte {
	t.Helper()
	var out, hb bytes.Buffer
	out.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&out, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":authority", "10.0.0.1:8080"}, {":path", "/grpc.health.v1.Health/Check"},
		{"content-type", "application/grpc"}, {"te", "trailers"}, {name, value},
	} {
		if err := enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// TestSidecarSourceIsNoProbe: in an Istio pod the app's tcpSocket probe is run by pilot-agent from
// 127.0.0.6, the source of every meshed connection too. A sniff mirror reading lo behind the sidecar
// copies connections from there; without a mesh (a capture of eth0, where 127.0.0.6 is no client)
// such a connection stays the probe it is.
func TestSidecarSourceIsNoProbe(t *testing.T) {
	probes := &wire.Probes{Sources: []string{"127.0.0.6"}, Declared: []wire.Probe{{Port: 8080, Kind: wire.ProbeTCP}}}
	f := capture.Flow{Client: netip.MustParseAddrPort("127.0.0.6:40001"), Server: netip.MustParseAddrPort("10.0.0.1:8080"), Handshake: true}
	for _, tt := range []struct {
		name string
		spec wire.MirrorSpec
		copy bool
	}{
		{name: "Istio sidecar, sniff", spec: wire.MirrorSpec{Ports: []int{8080}, Probes: probes, Mesh: &wire.Mesh{Name: wire.MeshIstio, Mode: wire.MeshSidecar, ProxyUID: wire.IstioProxyUID}}, copy: true},
		{name: "Istio sidecar, redirect", spec: wire.MirrorSpec{Ports: []int{8080}, Mode: wire.MirrorRedirect, Probes: probes, Mesh: &wire.Mesh{Name: wire.MeshIstio, Mode: wire.MeshSidecar, ProxyUID: wire.IstioProxyUID}}, copy: true},
		{name: "no mesh", spec: wire.MirrorSpec{Ports: []int{8080}, Probes: probes}},
		{name: "no mesh, redirect", spec: wire.MirrorSpec{Ports: []int{8080}, Mode: wire.MirrorRedirect, Probes: probes}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New(context.Background(), Config{Session: "s", Spec: tt.spec})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if got := m.Handler(f) != nil; got != tt.copy {
				t.Errorf("copied %t, want %t", got, tt.copy)
			}
			if s := m.Stats(); (s.Probes == 1) == tt.copy {
				t.Errorf("probes counted %d", s.Probes)
			}
		})
	}
}
