package meshrules

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// The meshes and modes Inbound names.
const (
	MeshIstio   = "Istio"
	MeshLinkerd = "Linkerd"

	ModeSidecar = "sidecar"
	ModeTPROXY  = "TPROXY interception"
)

// Inbound is what the pod's rules say about a service mesh: which one captures the pod's TCP,
// how, through which port, and how its proxy reaches the app. The zero Inbound is "no mesh":
// nothing captures the pod's connections.
type Inbound struct {
	// Mesh is MeshIstio, MeshLinkerd, or "" for no mesh.
	Mesh string
	// Mode is ModeSidecar (REDIRECT to the sidecar's port) or ModeTPROXY (Istio's TPROXY
	// interception, which trafficlab refuses); "" for no mesh.
	Mode string
	// Source is the form of the rules that capture: SourceLegacy, SourceIptablesNft or
	// SourceNftables.
	Source string
	// ProxyUID is the uid whose connections the outbound rules leave alone (the sidecar's:
	// 1337 for Istio, 2102 for Linkerd); valid when HasProxyUID.
	ProxyUID    uint32
	HasProxyUID bool
	// InboundPort is where arriving connections are captured to (15006, 4143); 0 when none
	// are. OutboundPort is where the pod's own outgoing connections go (15001, 4140).
	InboundPort, OutboundPort uint16
	// PassSource is the source address the proxy uses to hand a connection to the app, which the
	// mesh's output rules let through: 127.0.0.6 for Istio (PassSource6, ::6, for IPv6). It is
	// the zero Addr when the proxy uses the pod's own address (Linkerd), or when the rules name
	// no such address (Istio before 1.10).
	PassSource, PassSource6 netip.Addr

	rules *Rules
}

// Probe addresses: documentation ranges (RFC 5737, RFC 3849), so that they name no real peer.
var (
	probeRemote4 = netip.MustParseAddr("203.0.113.7")
	probePod4    = netip.MustParseAddr("192.0.2.10")
	probeOut4    = netip.MustParseAddr("198.51.100.7")
	probeRemote6 = netip.MustParseAddr("2001:db8::7")
	probePod6    = netip.MustParseAddr("2001:db8::10")
	probeOut6    = netip.MustParseAddr("2001:db8:1::7")
)

const (
	probeAppPort = 8080
	probeIface   = "eth0"
)

// Inbound classifies the rules. It fails, naming what, when a rule on the path of the
// connections it tries cannot be evaluated, when captures go to more than one proxy port, or
// when something captures the pod's connections but no known mesh's rules do.
func (r *Rules) Inbound() (Inbound, error) {
	in := Inbound{rules: r}
	meshByName := r.meshByChainNames()

	// TPROXY anywhere: Istio's interception mode, recognized by its rules alone.
	for _, t := range r.Tables {
		for _, c := range t.Chains {
			for _, rule := range c.Rules {
				for _, a := range rule.Actions {
					if a.Kind == ActionTPROXY {
						in.Mesh, in.Mode, in.Source, in.InboundPort = meshByName, ModeTPROXY, t.Source, a.Port
						if in.Mesh == "" {
							in.Mesh = meshByPort(a.Port)
						}
						return in, nil
					}
				}
			}
		}
	}

	var captures []Outcome
	for _, fam := range r.families() {
		pod, remote, out := probePod4, probeRemote4, probeOut4
		if fam == FamilyIPv6 {
			pod, remote, out = probePod6, probeRemote6, probeOut6
		}
		// Inbound: the app's port and every port a prerouting rule names, with its neighbours.
		for _, port := range r.probePorts() {
			o, err := r.Evaluate(Conn{Hook: HookPrerouting, Src: netip.AddrPortFrom(remote, 40000),
				Dst: netip.AddrPortFrom(pod, port), InIface: probeIface})
			if err != nil {
				return Inbound{}, fmt.Errorf("read the mesh's inbound rules: %w", err)
			}
			if o.Fate == Captured {
				captures = append(captures, o)
				if in.InboundPort != 0 && in.InboundPort != o.Port {
					return Inbound{}, fmt.Errorf("inbound connections are captured to two ports, %d and %d (%s)", in.InboundPort, o.Port, o)
				}
				in.InboundPort, in.Source = o.Port, o.Table.Source
			}
		}
		// Outbound, as a uid no rule names; then which named uid the rules leave alone.
		plain := r.unnamedID()
		dial := func(uid uint32) (Outcome, error) {
			o, err := r.Evaluate(Conn{Hook: HookOutput, Src: netip.AddrPortFrom(pod, 40000),
				Dst: netip.AddrPortFrom(out, 443), OutIface: probeIface, UID: uid, GID: uid})
			if err != nil {
				return Outcome{}, fmt.Errorf("read the mesh's outbound rules: %w", err)
			}
			return o, nil
		}
		o, err := dial(plain)
		if err != nil {
			return Inbound{}, err
		}
		if o.Fate == Captured {
			captures = append(captures, o)
			in.OutboundPort = o.Port
			if in.Source == "" {
				in.Source = o.Table.Source
			}
			for _, uid := range r.namedIDs() {
				o, err := dial(uid)
				if err != nil {
					return Inbound{}, err
				}
				if o.Fate == Passed {
					in.ProxyUID, in.HasProxyUID = uid, true
					break
				}
			}
		}
	}
	if len(captures) == 0 {
		if meshByName != "" {
			// The mesh's chains are there but capture nothing (Istio with empty -b and -i).
			in.Mesh, in.Mode = meshByName, ModeSidecar
		}
		return in, nil
	}
	in.Mesh, in.Mode = meshByName, ModeSidecar
	if in.Mesh == "" {
		in.Mesh = meshByPort(in.InboundPort)
	}
	if in.Mesh == "" {
		return Inbound{}, fmt.Errorf("connections are %s, by rules of no mesh trafficlab knows", captures[0])
	}
	if in.Mesh == MeshIstio {
		in.PassSource, in.PassSource6 = r.passSource(FamilyIPv4), r.passSource(FamilyIPv6)
	}
	return in, nil
}

// Captured reports whether an inbound connection to port of the pod is captured by the mesh.
func (in Inbound) Captured(port uint16) (bool, error) {
	if in.rules == nil {
		return false, nil
	}
	for _, fam := range in.rules.families() {
		pod, remote := probePod4, probeRemote4
		if fam == FamilyIPv6 {
			pod, remote = probePod6, probeRemote6
		}
		o, err := in.rules.Evaluate(Conn{Hook: HookPrerouting, Src: netip.AddrPortFrom(remote, 40000),
			Dst: netip.AddrPortFrom(pod, port), InIface: probeIface})
		if err != nil {
			return false, err
		}
		if o.Fate == Captured {
			return true, nil
		}
	}
	return false, nil
}

// PassBack is the fate, under the mesh's output rules, of the connection the agent dials to hand
// a connection on to the app the way the sidecar would have: to dst (the pod's address and the
// app's port) over lo, from the mesh's PassSource (Istio), else from src (the pod's address,
// Linkerd), as uid and gid, with mark. Anything but Passed means the mesh would capture (or
// drop) it again, and the agent must not pass connections back this way.
func (in Inbound) PassBack(src netip.Addr, dst netip.AddrPort, uid, gid, mark uint32) (Outcome, error) {
	if in.rules == nil {
		return Outcome{Fate: Passed}, nil
	}
	if ps := in.PassSourceFor(dst.Addr()); ps.IsValid() {
		src = ps
	}
	return in.rules.Evaluate(Conn{Hook: HookOutput, Src: netip.AddrPortFrom(src, 0), Dst: dst,
		OutIface: "lo", UID: uid, GID: gid, Mark: mark})
}

// PassSourceFor is PassSource or PassSource6, by dst's family.
func (in Inbound) PassSourceFor(dst netip.Addr) netip.Addr {
	if dst.Unmap().Is4() {
		return in.PassSource
	}
	return in.PassSource6
}

// Rules are the rules Inbound was read from.
func (in Inbound) Rules() *Rules { return in.rules }

// families are the families the rules have nat tables for.
func (r *Rules) families() []Family {
	var v4, v6 bool
	for _, t := range r.Tables {
		v4 = v4 || t.Family == FamilyIPv4 || t.Family == FamilyINet
		v6 = v6 || t.Family == FamilyIPv6 || t.Family == FamilyINet
	}
	var fams []Family
	if v4 {
		fams = append(fams, FamilyIPv4)
	}
	if v6 {
		fams = append(fams, FamilyIPv6)
	}
	return fams
}

// probePorts are the app's usual port and every destination port a rule names, with the ports
// next to each range, so that every distinct answer of the inbound rules is seen.
func (r *Rules) probePorts() []uint16 {
	ports := []uint16{probeAppPort}
	r.eachMatch(func(m Match) {
		if m.Field != FieldDstPort {
			return
		}
		for _, p := range m.Ports {
			ports = append(ports, p.From, p.To)
			if p.From > 1 {
				ports = append(ports, p.From-1)
			}
			if p.To < 0xffff {
				ports = append(ports, p.To+1)
			}
		}
	})
	slices.Sort(ports)
	return slices.Compact(ports)
}

// namedIDs are the uids the rules name, in order.
func (r *Rules) namedIDs() []uint32 {
	var ids []uint32
	r.eachMatch(func(m Match) {
		if m.Field == FieldUID || m.Field == FieldGID {
			ids = append(ids, m.IDs.From)
		}
	})
	slices.Sort(ids)
	return slices.Compact(ids)
}

// unnamedID is a uid no owner match names: an ordinary process.
func (r *Rules) unnamedID() uint32 {
	named := r.namedIDs()
	id := uint32(1000)
	for slices.Contains(named, id) {
		id++
	}
	return id
}

func (r *Rules) eachMatch(f func(Match)) {
	for _, t := range r.Tables {
		for _, c := range t.Chains {
			for _, rule := range c.Rules {
				for _, m := range rule.Matches {
					f(m)
				}
			}
		}
	}
}

// meshByChainNames recognizes a mesh by the chains and tables its tools create: Istio's ISTIO_*
// chains and istio-proxy-* tables, Linkerd's PROXY_INIT_* chains.
func (r *Rules) meshByChainNames() string {
	for _, t := range r.Tables {
		if strings.HasPrefix(t.Name, "istio-") {
			return MeshIstio
		}
		for _, c := range t.Chains {
			switch {
			case strings.HasPrefix(c.Name, "ISTIO_"):
				return MeshIstio
			case strings.HasPrefix(c.Name, "PROXY_INIT_"):
				return MeshLinkerd
			}
		}
	}
	return ""
}

// meshByPort recognizes a mesh by its default inbound port.
func meshByPort(port uint16) string {
	switch port {
	case 15006:
		return MeshIstio
	case 4143:
		return MeshLinkerd
	}
	return ""
}

// passSource finds Istio's pass-through source: an output nat rule that lets through
// connections on lo from one address (`-o lo -s 127.0.0.6/32 -j RETURN`).
func (r *Rules) passSource(fam Family) netip.Addr {
	for _, t := range r.Tables {
		if t.Family != fam && t.Family != FamilyINet {
			continue
		}
		for _, c := range t.Chains {
			for _, rule := range c.Rules {
				if len(rule.Actions) == 0 || (rule.Actions[0].Kind != ActionReturn && rule.Actions[0].Kind != ActionAccept) {
					continue
				}
				var lo bool
				var src netip.Addr
				for _, m := range rule.Matches {
					switch {
					case m.Field == FieldOutIface && m.Iface == "lo" && !m.Invert && !m.IfacePrefix:
						lo = true
					case m.Field == FieldSrc && !m.Invert && m.Prefix.IsSingleIP():
						src = m.Prefix.Addr()
					}
				}
				if lo && src.IsValid() && (src.Is4() == (fam == FamilyIPv4)) {
					return src
				}
			}
		}
	}
	return netip.Addr{}
}
