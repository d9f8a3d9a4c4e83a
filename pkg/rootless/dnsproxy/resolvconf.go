package dnsproxy

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
)

// maxNameservers is glibc's MAXNS (Go's resolver reads as many): later nameserver lines are
// ignored by the pod's own resolver, so they are here too.
const maxNameservers = 3

// ResolvConf is what the resolver needs from the pod's /etc/resolv.conf.
type ResolvConf struct {
	// Nameservers as the pod's resolver would ask them; 127.0.0.1 and ::1 (the pod's loopback) when
	// the file names none, as glibc and Go do.
	Nameservers []netip.Addr
	// Search is the effective search list: the last "search" or "domain" line wins, as in glibc.
	Search []string
	// Options are the words of every "options" line, in order (ndots:5, timeout:2, use-vc, ...).
	Options []string
}

// ParseResolvConf reads a resolv.conf the way glibc does: one keyword per line, "#" or ";" at the
// start of a line for comments, unknown keywords and unparsable addresses skipped. It never fails:
// a libc given the same bytes would not either.
func ParseResolvConf(b []byte) ResolvConf {
	var c ResolvConf
	for line := range bytes.Lines(b) {
		if len(line) > 0 && (line[0] == '#' || line[0] == ';') {
			continue
		}
		f := strings.Fields(string(line))
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "nameserver":
			if len(f) > 1 && len(c.Nameservers) < maxNameservers {
				if a, err := netip.ParseAddr(f[1]); err == nil {
					c.Nameservers = append(c.Nameservers, a.Unmap())
				}
			}
		case "domain":
			c.Search = nil
			if len(f) > 1 {
				c.Search = []string{f[1]}
			}
		case "search":
			c.Search = append([]string(nil), f[1:]...)
		case "options":
			c.Options = append(c.Options, f[1:]...)
		}
	}
	if len(c.Nameservers) == 0 {
		c.Nameservers = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}
	}
	return c
}

// addrs are the nameservers as "host:53" for the Dialer.
func (c ResolvConf) addrs() []string {
	out := make([]string, len(c.Nameservers))
	for i, a := range c.Nameservers {
		out[i] = net.JoinHostPort(a.String(), "53")
	}
	return out
}

// NamespaceResolvConf writes the resolv.conf of the command's namespace from the pod's: the only
// nameserver is ours (nameserver, which must listen on port 53: resolv.conf has no port), and the
// pod's search list and options are kept, so the command's libc or Go resolver expands "redis",
// "redis.other-ns" and FQDNs with the pod's search domains and ndots exactly as the pod would, and
// we see the same questions the pod's nameserver would.
func NamespaceResolvConf(pod []byte, nameserver netip.Addr) []byte {
	c := ParseResolvConf(pod)
	var b bytes.Buffer
	b.WriteString("# Written by kubectl-trafficlab from the pod's resolv.conf: queries go to the plugin,\n")
	b.WriteString("# which asks the pod's nameservers (" + joinAddrs(c.Nameservers) + ").\n")
	b.WriteString("nameserver " + nameserver.String() + "\n")
	if len(c.Search) > 0 {
		b.WriteString("search " + strings.Join(c.Search, " ") + "\n")
	}
	if len(c.Options) > 0 {
		b.WriteString("options " + strings.Join(c.Options, " ") + "\n")
	}
	return b.Bytes()
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, " ")
}
