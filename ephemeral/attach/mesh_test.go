package attach

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/netfilter"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// The mesh a steal or redirect mirror starts with is read from Config.Mesh each time; a mesh mode
// it cannot handle refuses the steal as unsupported, in its own words.
func TestServerMesh(t *testing.T) {
	if m, err := (&server{}).mesh(nil, []int{8080}); m != nil || err != nil {
		t.Errorf("without Config.Mesh: %v, %v; want no mesh", m, err)
	}
	istio := &netfilter.MeshRedirect{ProxyUID: 1337, ProxySources: []netip.Addr{netip.MustParseAddr("127.0.0.6")}}
	reads := 0
	s := &server{cfg: Config{Mesh: func(*wire.Mesh, []int) (*netfilter.MeshRedirect, error) {
		reads++
		return istio, nil
	}}}
	for range 2 {
		m, err := s.mesh(nil, []int{8080})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(istio, m, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
			t.Errorf("mesh (-want +got):\n%s", diff)
		}
	}
	if reads != 2 {
		t.Errorf("Config.Mesh read %d times for 2 steals, want once each", reads)
	}
	ambient := errors.New(`istio ambient mode (namespace label istio.io/dataplane-mode=ambient) cannot be stolen from`)
	s = &server{cfg: Config{Mesh: func(*wire.Mesh, []int) (*netfilter.MeshRedirect, error) { return nil, ambient }}}
	_, err := s.mesh(nil, []int{8080})
	if !errors.Is(err, ambient) || !errors.Is(err, wire.ErrUnsupported) {
		t.Errorf("refused mesh: %v, want the reader's error as unsupported", err)
	}
}
