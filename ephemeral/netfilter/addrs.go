package netfilter

import (
	"fmt"
	"net"
	"net/netip"
)

// LocalAddrs are the addresses of the calling thread's network namespace (the pod's, in the
// agent), loopback included, IPv4-mapped ones unmapped: what the redirect's "local" means, for the
// callers that need the list itself.
func LocalAddrs() ([]netip.Addr, error) {
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("list the pod's addresses: %w", err)
	}
	out := make([]netip.Addr, 0, len(ifAddrs))
	for _, ia := range ifAddrs {
		if n, ok := ia.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}
