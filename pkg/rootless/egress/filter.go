package egress

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
)

// Route is where one outgoing connection (or DNS question) goes.
type Route uint8

// The zero Route is Remote: without --local or --remote everything goes through the pod.
const (
	Remote Route = iota // dialed by the agent, from the pod
	Local               // dialed from this machine
)

func (r Route) String() string {
	if r == Local {
		return "local"
	}
	return "remote"
}

// maxLearned bounds the addresses a session remembers for named rules, so a command that resolves
// an endless stream of matching names (a crawler under *.example.com) cannot grow the table forever.
// Past it, the oldest half is forgotten; their next lookup records them again.
const maxLearned = 1 << 14

// Filter routes destinations by the --local or --remote rules. The zero value and a nil *Filter
// send everything through the pod. Its methods are safe for concurrent use: the resolver records
// while connections are routed.
type Filter struct {
	rules []Rule
	// remote: the rules name what goes through the pod (--remote); otherwise what stays local.
	remote bool

	mu sync.RWMutex
	// learned maps an address that a named rule's host resolved to onto the ports of the rules that
	// named it (0: every port); order lists the addresses oldest first, for trimming.
	learned map[netip.Addr][]uint16
	order   []netip.Addr
}

// NewFilter parses the values of --local and --remote; at most one of them may be given.
func NewFilter(local, remote []string) (*Filter, error) {
	if len(local) > 0 && len(remote) > 0 {
		return nil, errors.New("--local and --remote cannot be used together: --local keeps the listed " +
			"destinations on this machine and sends the rest through the pod, --remote sends only the listed " +
			"ones through the pod; pick the shorter list")
	}
	flag, values := "--local", local
	if len(remote) > 0 {
		flag, values = "--remote", remote
	}
	f := &Filter{remote: len(remote) > 0}
	for _, v := range values {
		r, err := ParseRule(v)
		if err != nil {
			return nil, fmt.Errorf("invalid %s %q: %w", flag, v, err)
		}
		f.rules = append(f.rules, r)
	}
	return f, nil
}

// Rules are the parsed destinations, in flag order.
func (f *Filter) Rules() []Rule {
	if f == nil {
		return nil
	}
	return append([]Rule(nil), f.rules...)
}

// Listed is the route of the destinations the rules name (Local for --local, Remote for --remote);
// everything else takes the other one.
func (f *Filter) Listed() Route {
	if f != nil && f.remote {
		return Remote
	}
	return Local
}

func (f *Filter) decide(matched bool) Route {
	if matched == (f.Listed() == Local) {
		return Local
	}
	return Remote
}

// Route decides for a connection to dest: IP and CIDR rules first, then the addresses that named
// rules' hosts resolved to (Record).
func (f *Filter) Route(dest netip.AddrPort) Route {
	if f == nil {
		return Remote
	}
	dest = netip.AddrPortFrom(dest.Addr().Unmap().WithZone(""), dest.Port())
	for _, r := range f.rules {
		if r.matchAddr(dest) {
			return f.decide(true)
		}
	}
	f.mu.RLock()
	ports := f.learned[dest.Addr()]
	f.mu.RUnlock()
	for _, p := range ports {
		if p == 0 || p == dest.Port() {
			return f.decide(true)
		}
	}
	return f.decide(false)
}

// RouteName decides for a connection to host (a name as the program wrote it, or an IP literal) and
// port, as a proxy sees it. Names are matched against named rules only; CIDR rules apply once the
// name is an address, and resolving it here to find out would already pick a resolver.
func (f *Filter) RouteName(host string, port uint16) Route {
	if f == nil {
		return Remote
	}
	if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")); err == nil {
		return f.Route(netip.AddrPortFrom(a, port))
	}
	name := normalize(host)
	for _, r := range f.rules {
		if r.matchName(name, port) {
			return f.decide(true)
		}
	}
	return f.decide(false)
}

// Resolution is the filter's decision for one DNS question.
type Resolution struct {
	// Route Local: answer from this machine's resolver, looking up Name; Remote: ask the pod's
	// nameserver the question unchanged.
	Route Route
	// Name is what to look up on this machine (Route Local): the name as the program wrote it, so the
	// local resolver applies this machine's search domains, or, for a question that already carries
	// one of the pod's search domains and that no rule names, the question itself, absolute.
	Name string
	// Rule is set when a rule names the question: its answers are to be recorded (Record).
	Rule bool
}

// Resolve decides for a DNS question name (qname, as sent: fully qualified, trailing dot optional).
//
// The program's resolver appends the pod's search domains (ndots:5 makes "db" go out first as
// "db.NS.svc.cluster.local."), so the name the program wrote is not on the wire. A named rule
// therefore matches the question itself or the question minus any one of the pod's search domains
// (search): the rule "db" matches "db." and "db.NS.svc.cluster.local.", but not
// "db.example.com.". Every search-domain variant of a --local name is answered on this machine
// with the addresses of the name the program wrote, so the pod's resolver never sees it and cannot
// answer with a same-named cluster service first.
func (f *Filter) Resolve(qname string, search []string) Resolution {
	name := normalize(qname)
	if f != nil {
		for _, cand := range candidates(name, search) {
			for _, r := range f.rules {
				if r.matchName(cand, 0) {
					return Resolution{Route: f.decide(true), Name: cand, Rule: true}
				}
			}
		}
	}
	route := f.decide(false)
	if f == nil || route == Remote {
		return Resolution{Route: Remote, Name: name}
	}
	// --remote and no rule: resolved here, like the connections that follow. A question carrying a
	// pod search domain cannot be told from a program that wrote it in full, so it is looked up as
	// is; the program's resolver goes on to the next search domain and at last to the bare name.
	for _, s := range search {
		if s = normalize(s); s != "" && strings.HasSuffix(name, "."+s) {
			return Resolution{Route: Local, Name: name + "."}
		}
	}
	return Resolution{Route: Local, Name: name}
}

// Record notes that qname resolved to addrs (from the pod or from this machine), so that later
// connections to them follow the rules that name qname, on those rules' ports. Questions no named
// rule matches are ignored, so the resolver may call it for every answer.
func (f *Filter) Record(qname string, search []string, addrs []netip.Addr) {
	if f == nil || len(addrs) == 0 {
		return
	}
	var ports []uint16
	for _, cand := range candidates(normalize(qname), search) {
		for _, r := range f.rules {
			if r.matchName(cand, 0) {
				ports = appendPort(ports, r.Port)
			}
		}
	}
	if len(ports) == 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.learned == nil {
		f.learned = map[netip.Addr][]uint16{}
	}
	for _, a := range addrs {
		a = a.Unmap().WithZone("")
		old, seen := f.learned[a]
		if !seen {
			f.order = append(f.order, a)
		}
		for _, p := range ports {
			old = appendPort(old, p)
		}
		f.learned[a] = old
	}
	if len(f.order) > maxLearned {
		drop := len(f.order) / 2
		for _, a := range f.order[:drop] {
			delete(f.learned, a)
		}
		f.order = append([]netip.Addr(nil), f.order[drop:]...)
	}
}

func appendPort(ports []uint16, p uint16) []uint16 {
	for _, q := range ports {
		if q == p {
			return ports
		}
	}
	return append(ports, p)
}

// candidates are the names the program may have written for the question name: the name itself and
// the name minus each of the pod's search domains it ends with.
func candidates(name string, search []string) []string {
	out := []string{name}
	for _, s := range search {
		if s = normalize(s); s != "" && len(name) > len(s)+1 && strings.HasSuffix(name, "."+s) {
			out = append(out, name[:len(name)-len(s)-1])
		}
	}
	return out
}

func normalize(name string) string { return strings.ToLower(strings.TrimSuffix(name, ".")) }
