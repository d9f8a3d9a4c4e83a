package router

import (
	"context"
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/egress"
	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/sandbox"
)

type recordingDialer struct{ got []string }

func (d *recordingDialer) DialContext(_ context.Context, network, address string) (net.Conn, error) {
	d.got = append(d.got, network+" "+address)
	a, b := net.Pipe()
	go b.Close()
	return a, nil
}

// TestRouter: the resolver's address goes to the resolver, --local destinations to this machine,
// everything else to the pod.
func TestRouter(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	f, err := egress.NewFilter([]string{"127.0.0.0/8"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pod := &recordingDialer{}
	r := &Router{Pod: pod, Filter: f, DNS: Resolver{UDP: pc.LocalAddr().String(), TCP: ln.Addr().String()},
		Gateways: []netip.Addr{netip.MustParseAddr(sandbox.GatewayIPv4), netip.MustParseAddr(sandbox.GatewayIPv6)}}
	ctx := context.Background()
	for _, tc := range []struct{ network, addr, want string }{
		{"tcp", ln.Addr().String(), ln.Addr().String()},
		{"udp", sandbox.GatewayIPv4 + ":53", pc.LocalAddr().String()},
		{"tcp", "[" + sandbox.GatewayIPv6 + "]:53", ln.Addr().String()},
	} {
		c, err := r.DialContext(ctx, tc.network, tc.addr)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.network, tc.addr, err)
		}
		if got := c.RemoteAddr().String(); got != tc.want {
			t.Errorf("%s %s went to %s, want %s", tc.network, tc.addr, got, tc.want)
		}
		c.Close()
	}
	if _, err := r.DialContext(ctx, "tcp", sandbox.GatewayIPv4+":80"); err == nil {
		t.Error("the gateway answered on port 80")
	}
	for _, addr := range []string{"10.96.0.10:53", "[fd00::1]:443"} {
		c, err := r.DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	if d := cmp.Diff([]string{"tcp 10.96.0.10:53", "tcp [fd00::1]:443"}, pod.got); d != "" {
		t.Errorf("dialed through the pod (-want +got):\n%s", d)
	}
}
