// Package router sends each flow of exec's command (handed over by the netstack) where it belongs:
// DNS to the gateway to the command's resolver on this machine, --local destinations to this
// machine, everything else through the pod.
package router

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/dnsproxy"
	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/egress"
	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/netstack"
)

// Router is the netstack's Dialer for the command's flows.
type Router struct {
	// Pod dials through the pod.
	Pod netstack.Dialer
	// Filter holds the --local/--remote rules.
	Filter *egress.Filter
	// DNS is where the gateways' port 53 goes.
	DNS Resolver
	// Gateways are the namespace's default gateways, which answer DNS only.
	Gateways []netip.Addr

	local net.Dialer
}

// DialContext dials address for one of the command's flows.
func (r *Router) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("destination %q: %w", address, err)
	}
	for _, gw := range r.Gateways {
		if ap.Addr() != gw {
			continue
		}
		if ap.Port() != 53 {
			return nil, fmt.Errorf("nothing listens on %s: the gateway only answers DNS", address)
		}
		if network == "udp" {
			return r.local.DialContext(ctx, "udp", r.DNS.UDP)
		}
		return r.local.DialContext(ctx, "tcp", r.DNS.TCP)
	}
	if r.Filter.Route(ap) == egress.Local {
		return r.local.DialContext(ctx, network, address)
	}
	return r.Pod.DialContext(ctx, network, address)
}

// Resolver is the command's nameserver on this machine's loopback: its UDP and TCP addresses.
type Resolver struct{ UDP, TCP string }

// StartResolver serves srv on loopback until ctx ends.
func StartResolver(ctx context.Context, srv *dnsproxy.Server) (Resolver, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return Resolver{}, fmt.Errorf("listen for the command's DNS: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		pc.Close()
		return Resolver{}, fmt.Errorf("listen for the command's DNS: %w", err)
	}
	go func() { _ = srv.ServePacket(ctx, pc) }()
	go func() { _ = srv.ServeStream(ctx, ln) }()
	return Resolver{UDP: pc.LocalAddr().String(), TCP: ln.Addr().String()}, nil
}
