//go:build linux && kernel

package main

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/netfilter"
	"github.com/trafficlab/kubectl-trafficlab/internal/meshtest"
	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// TestKernelMeshRedirect runs the agent's decision, before a steal of 8080, on the real rules of
// every mesh rule set applied in a pod-like namespace: how the redirect comes after the sidecar, or
// the one-line refusal that names the mode.
func TestKernelMeshRedirect(t *testing.T) {
	istio := &netfilter.MeshRedirect{ProxyUID: meshtest.IstioProxyUID,
		ProxySources: []netip.Addr{netip.MustParseAddr("127.0.0.6")}, PassSources: []netip.Addr{netip.MustParseAddr("127.0.0.6")}}
	istioDual := &netfilter.MeshRedirect{ProxyUID: meshtest.IstioProxyUID,
		ProxySources: []netip.Addr{netip.MustParseAddr("127.0.0.6"), netip.MustParseAddr("::6")},
		PassSources:  []netip.Addr{netip.MustParseAddr("127.0.0.6"), netip.MustParseAddr("::6")}}
	linkerd := &netfilter.MeshRedirect{ProxyUID: meshtest.LinkerdProxyUID}
	for _, rs := range meshtest.All {
		t.Run(string(rs), func(t *testing.T) {
			ns := podNS(t, rs.DualStack())
			meshtest.Apply(t, ns.Name, rs)
			var got *netfilter.MeshRedirect
			var err error
			if derr := ns.Do(func() error {
				got, err = processMeshReader().redirect(nil, []int{8080})
				return nil
			}); derr != nil {
				t.Fatal(derr)
			}
			switch {
			case rs.TPROXY():
				if err == nil || !strings.Contains(err.Error(), "TPROXY interception mode") {
					t.Fatalf("TPROXY rules: %v, %v; want the mode refused by name", got, err)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			want := linkerd
			if rs.Mesh() == "Istio" {
				want = istio
				if rs.DualStack() {
					want = istioDual
				}
			}
			if diff := cmp.Diff(want, got, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
				t.Errorf("mesh redirect (-want +got):\n%s", diff)
			}
		})
	}
}

// TestKernelMeshRedirectRefusals: rules that would send the agent's pass-back into the sidecar; a
// spec that shows a sidecar whose rules are not there; no mesh at all.
func TestKernelMeshRedirectRefusals(t *testing.T) {
	t.Run("rules that take the pass-back", func(t *testing.T) {
		ns := podNS(t, false)
		meshtest.Apply(t, ns.Name, meshtest.IstioLegacy)
		// A rule ahead of Istio's that sends every lo connection to the app's port to the proxy,
		// whatever its source: the agent's pass-back would loop into the sidecar.
		out, err := exec.Command("ip", "netns", "exec", ns.Name, "iptables-legacy", "-w", "-t", "nat", "-I", "OUTPUT", "1",
			"-o", "lo", "-p", "tcp", "--dport", "8080", "-j", "REDIRECT", "--to-ports", "15001").CombinedOutput()
		if err != nil {
			t.Fatalf("add a capturing rule: %v: %s", err, out)
		}
		_ = ns.Do(func() error {
			_, err = processMeshReader().redirect(nil, []int{8080})
			return nil
		})
		if err == nil || !strings.Contains(err.Error(), "would take the agent's pass-back") {
			t.Fatalf("pass-back captured: %v; want the steal refused", err)
		}
	})
	t.Run("spec shows a sidecar, no rules", func(t *testing.T) {
		ns := podNS(t, false)
		var got *netfilter.MeshRedirect
		var err error
		_ = ns.Do(func() error {
			got, err = processMeshReader().redirect(&wire.Mesh{Name: wire.MeshIstio, Mode: wire.MeshSidecar, ProxyUID: 1337}, []int{8080})
			return nil
		})
		if err == nil || !strings.Contains(err.Error(), "no capture rules of that mesh") {
			t.Fatalf("hinted mesh without rules: %v, %v; want a refusal", got, err)
		}
	})
	t.Run("no mesh", func(t *testing.T) {
		ns := podNS(t, false)
		var got *netfilter.MeshRedirect
		var err error
		_ = ns.Do(func() error {
			got, err = processMeshReader().redirect(nil, []int{8080})
			return nil
		})
		if got != nil || err != nil {
			t.Fatalf("no mesh: %v, %v; want the plain redirect", got, err)
		}
	})
}

// podNS is a namespace with a pod-like address (istio-iptables wants one besides lo).
func podNS(t *testing.T, dualStack bool) *testnet.NS {
	t.Helper()
	ns, peer := testnet.New(t), testnet.New(t)
	addrs, peerAddrs := []netip.Prefix{netip.MustParsePrefix("10.45.0.2/24")}, []netip.Prefix{netip.MustParsePrefix("10.45.0.1/24")}
	if dualStack {
		addrs = append(addrs, netip.MustParsePrefix("fd45::2/64"))
		peerAddrs = append(peerAddrs, netip.MustParsePrefix("fd45::1/64"))
	}
	testnet.Connect(t, ns, addrs, peer, peerAddrs)
	return ns
}
