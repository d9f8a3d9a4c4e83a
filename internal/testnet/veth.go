//go:build linux && kernel

package testnet

import (
	"maps"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

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
// about a second, and Connect returns only once each namespace routes its own addresses to itself.
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
	la, lb := setUp(t, a, aName, aAddrs), setUp(t, b, bName, bAddrs)
	waitLocalRoutes(t, la)
	waitLocalRoutes(t, lb)
	return la, lb
}

// waitLocalRoutes waits until the namespace routes each IPv6 address of l to itself. The address is
// listed as soon as it is added, but the kernel installs its local route later, from a work queue,
// once the link has carrier (even with duplicate address detection skipped). A dial from the
// namespace to its own address in between is routed out of the link, finds no neighbour and fails
// with EHOSTUNREACH three seconds later: seen in about a third of runs on a busy machine. IPv4
// local routes come with the address.
func waitLocalRoutes(t testing.TB, l Link) {
	t.Helper()
	missing := map[netip.Addr]bool{}
	for _, p := range l.Addrs {
		if p.Addr().Is6() {
			missing[p.Addr()] = true
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(missing) > 0 {
		routes, err := l.NS.nl.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{Table: unix.RT_TABLE_LOCAL}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatalf("testnet: list local routes in netns %q: %v", l.NS.Name, err)
		}
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			if a, ok := netip.AddrFromSlice(r.Dst.IP); ok {
				delete(missing, a)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("testnet: %v on %q in netns %q got no local route within 10s", slices.Collect(maps.Keys(missing)), l.Name, l.NS.Name)
		}
		time.Sleep(time.Millisecond)
	}
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
