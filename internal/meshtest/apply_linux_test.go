//go:build linux && kernel

package meshtest_test

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/trafficlab/kubectl-trafficlab/internal/meshtest"
	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
)

// TestKernelApply applies every rule set in a fresh namespace and checks, with the tool that
// lists that form, that the mesh's capture is there: the proxy's inbound redirect. The namespace
// gets a pod address first, as a pod has when its CNI runs.
func TestKernelApply(t *testing.T) {
	for _, rs := range meshtest.All {
		t.Run(string(rs), func(t *testing.T) {
			ns := testnet.New(t)
			peer := testnet.New(t)
			addrs, peerAddrs := []netip.Prefix{netip.MustParsePrefix("10.44.0.2/24")}, []netip.Prefix{netip.MustParsePrefix("10.44.0.1/24")}
			if rs.DualStack() {
				addrs = append(addrs, netip.MustParsePrefix("fd44::2/64"))
				peerAddrs = append(peerAddrs, netip.MustParsePrefix("fd44::1/64"))
			}
			testnet.Connect(t, ns, addrs, peer, peerAddrs)
			meshtest.Apply(t, ns.Name, rs)
			var list []string
			var want string
			switch {
			case rs.Source() == "nftables":
				list, want = []string{"nft", "list", "ruleset"}, "to :15006"
			case rs.TPROXY():
				list, want = []string{"iptables-" + strings.TrimPrefix(rs.Source(), "iptables-") + "-save", "-t", "mangle"}, "--on-port 15006"
			case rs.DualStack():
				list, want = []string{"ip6tables-legacy-save", "-t", "nat"}, "-s ::6/128"
			case rs.Mesh() == "Istio":
				list, want = []string{"iptables-" + strings.TrimPrefix(rs.Source(), "iptables-") + "-save", "-t", "nat"}, "--to-ports 15006"
			default:
				list, want = []string{"ip6tables-" + strings.TrimPrefix(rs.Source(), "iptables-") + "-save", "-t", "nat"}, "--to-ports 4143"
			}
			out, err := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, list...)...).CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s", strings.Join(list, " "), err, out)
			}
			if !strings.Contains(string(out), want) {
				t.Errorf("%s does not show %q:\n%s", strings.Join(list, " "), want, out)
			}
		})
	}
}
