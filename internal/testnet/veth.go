//go:build linux && kernel

package testnet

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Link is one end of a veth pair.
type Link struct {
	NS    *NS
	Name  string
	Index int
	Addrs []netip.Prefix
}

// Connect joins two namespaces with a veth pair, gives each end the addresses asked for and sets
// both up. The pair disappears with the namespaces.
//
// IPv6 addresses skip duplicate address detection, which would otherwise keep them unusable for
// about a second.
func Connect(t testing.TB, a *NS, aAddrs []netip.Prefix, b *NS, bAddrs []netip.Prefix) (Link, Link) {
	t.Helper()
	aName, bName := a.newIfcName(), b.newIfcName()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(b.handle),
	}
	// Creating the pair inside a with the peer placed straight into b means neither end ever
	// appears in the host namespace, so names cannot clash with the host's links.
	if err := a.nl.LinkAdd(veth); err != nil {
		t.Fatalf("testnet: add veth %q (netns %q) <-> %q (netns %q): %v", aName, a.Name, bName, b.Name, err)
	}
	return setUp(t, a, aName, aAddrs), setUp(t, b, bName, bAddrs)
}

func setUp(t testing.TB, ns *NS, name string, addrs []netip.Prefix) Link {
	t.Helper()
	link, err := ns.nl.LinkByName(name)
	if err != nil {
		t.Fatalf("testnet: find %q in netns %q: %v", name, ns.Name, err)
	}
	for _, p := range addrs {
		addr := &netlink.Addr{IPNet: &net.IPNet{
			IP:   p.Addr().AsSlice(),
			Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
		}}
		if p.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := ns.nl.AddrAdd(link, addr); err != nil {
			t.Fatalf("testnet: add %s to %q in netns %q: %v", p, name, ns.Name, err)
		}
	}
	if err := ns.nl.LinkSetUp(link); err != nil {
		t.Fatalf("testnet: set %q up in netns %q: %v", name, ns.Name, err)
	}
	return Link{NS: ns, Name: name, Index: link.Attrs().Index, Addrs: addrs}
}
