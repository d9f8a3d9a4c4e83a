package attach

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/netfilter"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

func TestMeshFromHint(t *testing.T) {
	istio := []netip.Addr{netip.MustParseAddr("127.0.0.6"), netip.MustParseAddr("::6")}
	for _, tt := range []struct {
		hint *wire.Mesh
		want *netfilter.MeshRedirect
	}{
		{hint: nil, want: nil},
		{hint: &wire.Mesh{Name: wire.MeshIstio, Mode: wire.MeshSidecar, ProxyUID: 1337}, want: &netfilter.MeshRedirect{ProxyUID: 1337, ProxySources: istio, PassSources: istio}},
		{hint: &wire.Mesh{Name: wire.MeshLinkerd, Mode: wire.MeshSidecar, ProxyUID: 2102}, want: &netfilter.MeshRedirect{ProxyUID: 2102}},
	} {
		got := meshFromHint(tt.hint)
		if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
			t.Errorf("meshFromHint(%+v) (-want +got):\n%s", tt.hint, diff)
		}
		if got != nil {
			if err := got.Validate(); err != nil {
				t.Errorf("meshFromHint(%+v) does not validate: %v", tt.hint, err)
			}
		}
	}
}
