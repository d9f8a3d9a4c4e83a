// Package probe decides, in one place for steal and mirror, whether a connection or a request is
// one of the kubelet's probes: those are the pod's business (a probe answered by a laptop, or not at
// all, restarts or unreadies the pod), so a steal passes them to the app unless told otherwise and a
// mirror never copies them.
//
// A probe comes from the kubelet's address as the pod sees it and matches a probe the pod declares
// (wire.Probes). The User-Agent alone cannot tell: an httpGet probe may set its own, and an HTTPS or
// tcpSocket probe sends nothing the agent can read. So:
//   - a connection from a kubelet source to a port with a tcpSocket or HTTPS probe is a probe, by
//     (source, port), before anything is read (PassConn);
//   - an HTTP or gRPC request is a probe when its source is a kubelet source, or it carries the
//     kubelet's User-Agent, and its port, target and declared headers match a declared probe
//     (IsProbe); its source is then a kubelet source from there on.
//
// The kubelet sources are the pod's default gateways (with a bridge CNI, the node's end of the
// pod's route, which is where the kubelet's connections come from), the addresses the plugin sends
// (the node's; 127.0.0.6 in an Istio pod, where pilot-agent sends the rewritten probes), and those
// learned from the User-Agent.
package probe

import (
	"net/netip"
	"sort"
	"strings"
	"sync"

	"github.com/trafficlab/kubectl-trafficlab/internal/httpsyntax"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Request is what is known of a request when it is classified. The steal builds it with
// httpx.RequestHead.ProbeRequest, the mirror from the capture's Request.
type Request struct {
	// Source is the address the connection came from: the node's, for the kubelet.
	Source netip.AddrPort
	// Port is the pod port the connection was sent to.
	Port uint16
	// Path is the request's path and query.
	Path string
	// Header are the request's header fields as "Name: value" lines, in the order sent (the form
	// the capture keeps and the steal filters match).
	Header []string
}

// maxLearned bounds the sources learned from the User-Agent: a kubelet has a few addresses, and a
// client that fakes the User-Agent on a probe's path must not grow the set without end.
const maxLearned = 16

// Rule decides which connections and requests are the kubelet's probes; it is safe for concurrent
// use. The zero Rule (a pod that declares no probes) takes nothing for a probe.
type Rule struct {
	// http are the declared HTTP and gRPC probes, by port.
	http map[uint16][]wire.Probe
	// opaque are the ports with a tcpSocket or HTTPS probe.
	opaque map[uint16]bool
	// sources are the kubelet sources given at New.
	sources map[netip.Addr]bool

	mu      sync.Mutex
	learned map[netip.Addr]bool
}

// New is the rule for the pod's declared probes p (nil: none) and its default gateways. p must
// have passed Validate.
func New(p *wire.Probes, gateways []netip.Addr) *Rule {
	r := &Rule{http: map[uint16][]wire.Probe{}, opaque: map[uint16]bool{}, sources: map[netip.Addr]bool{}, learned: map[netip.Addr]bool{}}
	for _, g := range gateways {
		r.sources[g.Unmap()] = true
	}
	if p == nil {
		return r
	}
	for _, s := range p.Sources {
		if a, err := netip.ParseAddr(s); err == nil {
			r.sources[a.Unmap()] = true
		}
	}
	for _, d := range p.Declared {
		port := uint16(d.Port)
		switch d.Kind {
		case wire.ProbeHTTP, wire.ProbeGRPC:
			r.http[port] = append(r.http[port], d)
		case wire.ProbeHTTPS, wire.ProbeTCP:
			r.opaque[port] = true
		}
	}
	return r
}

// Sources are the kubelet sources given at New, sorted.
func (r *Rule) Sources() []netip.Addr {
	if r == nil {
		return nil
	}
	var out []netip.Addr
	for a := range r.sources {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out
}

// PassConn reports whether a connection from source to port is a probe before a byte is read: the
// port has a tcpSocket or HTTPS probe and source is a kubelet source.
func (r *Rule) PassConn(source netip.AddrPort, port uint16) bool {
	return r != nil && r.opaque[port] && r.isKubelet(source.Addr().Unmap())
}

// ReadsHTTP reports whether a request on port can be a probe: the port has an HTTP or gRPC probe.
// Elsewhere a whole-port steal need not wait for the client's first bytes.
func (r *Rule) ReadsHTTP(port uint16) bool {
	return r != nil && len(r.http[port]) > 0
}

// IsProbe reports whether q is one of the kubelet's HTTP or gRPC probes: it matches a declared
// probe of its port (target and headers) and comes from a kubelet source or carries the kubelet's
// User-Agent, whose source is then learned as a kubelet source (for the tcpSocket and HTTPS probes
// that cannot say so).
func (r *Rule) IsProbe(q Request) bool {
	if r == nil {
		return false
	}
	matched := false
	for _, d := range r.http[q.Port] {
		if matches(d, q) {
			matched = true
			break
		}
	}
	if !matched {
		return false
	}
	src := q.Source.Addr().Unmap()
	if r.isKubelet(src) {
		return true
	}
	if !KubeletAgent(q.Header) {
		return false
	}
	r.mu.Lock()
	if len(r.learned) < maxLearned {
		r.learned[src] = true
	}
	r.mu.Unlock()
	return true
}

func (r *Rule) isKubelet(a netip.Addr) bool {
	if r.sources[a] {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.learned[a]
}

// matches reports whether q is the request the kubelet sends for d: the same target and every
// declared header (name without case, value as given, each field line on its own).
func matches(d wire.Probe, q Request) bool {
	if q.Path != d.Path {
		return false
	}
	for _, h := range d.Headers {
		if !hasField(q.Header, h.Name, strings.TrimSpace(h.Value)) {
			return false
		}
	}
	return true
}

func hasField(lines []string, name, value string) bool {
	for _, line := range lines {
		if v, ok := httpsyntax.FieldLineValue(line, name); ok && v == value {
			return true
		}
	}
	return false
}

// kubeletUA starts the User-Agent of the kubelet's HTTP and gRPC probes: "kube-probe/1.33"
// (gRPC probes add " grpc-go/...").
const kubeletUA = "kube-probe/"

// KubeletAgent reports whether any User-Agent field starts with "kube-probe/", field name and value
// compared case-insensitively. Any field rather than the first: User-Agent is a singleton field
// (RFC 9110 10.1.5), so a request with two is malformed and the app may read either; the kubelet
// sends one, so the two readings agree on every real probe, and where they differ "any" errs on the
// side that cannot restart the pod (the request goes to the app rather than to the developer).
func KubeletAgent(header []string) bool {
	for _, line := range header {
		if v, ok := httpsyntax.FieldLineValue(line, "User-Agent"); ok && httpsyntax.HasPrefixFold(v, kubeletUA) {
			return true
		}
	}
	return false
}
