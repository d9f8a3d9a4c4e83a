package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/meshrules"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/netfilter"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Loopback sources of a proxy that calls the app at localhost (Istio before 1.10, or a Sidecar
// resource with a localhost default endpoint): the rules then name no pass source, and the proxy's
// connections to the app are the ones to 127.0.0.1 or ::1 from there.
var (
	loopback4 = netip.MustParseAddr("127.0.0.1")
	loopback6 = netip.IPv6Loopback()
)

// meshReader is what the agent reads before each steal or redirect mirror: the rules of its
// network namespace (meshrules.Read), the namespace's own addresses, and the agent's uid and gid.
// Tests give their own.
type meshReader struct {
	read  func() (*meshrules.Rules, error)
	addrs func() ([]netip.Addr, error)
	uid   uint32
	gid   uint32
}

func processMeshReader() meshReader {
	return meshReader{read: meshrules.Read, addrs: podAddrs, uid: uint32(os.Getuid()), gid: uint32(os.Getgid())}
}

// redirect decides, from the pod's nat rules, how a steal or redirect mirror of ports comes after
// the mesh's sidecar (nil: no mesh captures the pod's connections, the plain redirect is right), or
// refuses in one line naming the mesh mode. The rules decide, not the pod's spec (hint): they are
// what the kernel will do. A spec that shows a sidecar whose rules cannot be found is refused too,
// since the redirect could then land in front of a capture trafficlab does not see.
func (m meshReader) redirect(hint *wire.Mesh, ports []int) (*netfilter.MeshRedirect, error) {
	rules, err := m.read()
	if err != nil {
		return nil, fmt.Errorf("the pod's nat rules cannot be read, so a redirect could land in front of a mesh's capture: %w", err)
	}
	in, err := rules.Inbound()
	if err != nil {
		return nil, fmt.Errorf("the pod's nat rules capture its connections in a way trafficlab cannot follow: %w", err)
	}
	if in.Mesh == "" {
		if hint != nil {
			return nil, fmt.Errorf("the pod's spec shows %s's %s mode, but its network namespace has no capture rules of that mesh that trafficlab can read (iptables-legacy, iptables-nft, nftables)", hint.Name, hint.Mode)
		}
		return nil, nil
	}
	if in.Mode != meshrules.ModeSidecar {
		return nil, fmt.Errorf("the pod is in %s's %s mode (%s rules): the sidecar takes the pod's traffic with TPROXY, which a redirect in the pod cannot come after", in.Mesh, in.Mode, in.Source)
	}
	if !in.HasProxyUID {
		return nil, fmt.Errorf("the pod's %s rules (%s) exempt no proxy uid, so the sidecar's connections to the app cannot be told from the app's own", in.Mesh, in.Source)
	}
	mr := &netfilter.MeshRedirect{ProxyUID: in.ProxyUID}
	if in.Mesh == meshrules.MeshIstio {
		for _, a := range []netip.Addr{in.PassSource, in.PassSource6} {
			if a.IsValid() {
				mr.ProxySources = append(mr.ProxySources, a)
				mr.PassSources = append(mr.PassSources, a)
			}
		}
		if len(mr.ProxySources) == 0 {
			mr.ProxySources = []netip.Addr{loopback4, loopback6}
		}
	}
	if err := m.checkPassBack(in, mr, ports); err != nil {
		return nil, err
	}
	return mr, nil
}

// checkPassBack makes sure the connections the agent passes back to the app are not captured
// again by the mesh: with the agent's uid and gid (a pod-level runAsGroup of the proxy's gid would
// put the agent's dials in the proxy's hands), the pass mark and the pass source, to every address
// of the pod and every stolen port.
func (m meshReader) checkPassBack(in meshrules.Inbound, mr *netfilter.MeshRedirect, ports []int) error {
	addrs, err := m.addrs()
	if err != nil {
		return fmt.Errorf("list the pod's addresses: %w", err)
	}
	if len(mr.PassSources) == 0 && len(mr.ProxySources) > 0 {
		// The proxy called the app at localhost: that is where the pass-back goes too.
		addrs = mr.ProxySources
	}
	for _, a := range addrs {
		for _, p := range ports {
			dst := netip.AddrPortFrom(a, uint16(p))
			o, err := in.PassBack(a, dst, m.uid, m.gid, netfilter.PassMark)
			if err != nil {
				return fmt.Errorf("the pod's %s rules (%s) cannot be followed for the agent's pass-back to %s: %w", in.Mesh, in.Source, dst, err)
			}
			if o.Fate != meshrules.Passed {
				return fmt.Errorf("the pod's %s rules (%s) would take the agent's pass-back to %s (uid %d, gid %d): %s; requests passed to the app would loop into the sidecar", in.Mesh, in.Source, dst, m.uid, m.gid, o)
			}
		}
	}
	return nil
}

// podAddrs are the network namespace's own global addresses: those the sidecar calls the app at.
func podAddrs() ([]netip.Addr, error) {
	all, err := netfilter.LocalAddrs()
	if err != nil {
		return nil, err
	}
	out := slices.DeleteFunc(all, func(a netip.Addr) bool { return !a.IsGlobalUnicast() })
	if len(out) == 0 {
		return nil, errors.New("the pod has no global address")
	}
	return out, nil
}
