// Package egress decides where the outgoing connections of `kubectl trafficlab exec -- COMMAND` go:
// through the pod (the default), or from this machine for the destinations named with --local
// (with --remote, the other way round: only the named destinations go through the pod).
//
// Destinations are host names, IP addresses or CIDRs, each with an optional port. Connections carry
// IP addresses only, so host names are matched when they are resolved, as mirrord's outgoing filter
// does: the resolver tells the Filter which addresses a named host resolved to (Record), and later
// connections to those addresses follow that host's rule.
package egress

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Rule is one --local or --remote destination.
type Rule struct {
	// Name is a lower-case host name without the trailing dot, or "*.example.com" for every name
	// under example.com (not example.com itself, as NO_PROXY's ".example.com"). Empty for IP rules.
	Name string
	// Prefix holds IP rules; a single address is a /32 or /128.
	Prefix netip.Prefix
	// Port 0 matches every port.
	Port uint16
}

// IsName tells a host name rule from an IP rule.
func (r Rule) IsName() bool { return r.Name != "" }

// String prints the rule back in the form ParseRule reads.
func (r Rule) String() string {
	var host string
	switch {
	case r.IsName():
		host = r.Name
	case r.Prefix.IsSingleIP():
		host = r.Prefix.Addr().String()
	default:
		host = r.Prefix.String()
	}
	if r.Port == 0 {
		return host
	}
	if !r.IsName() && r.Prefix.Addr().Is6() {
		host = "[" + host + "]"
	}
	return host + ":" + strconv.Itoa(int(r.Port))
}

// matchName matches one host name (lower case, no trailing dot) and port (0: any).
func (r Rule) matchName(name string, port uint16) bool {
	if !r.IsName() || (port != 0 && r.Port != 0 && r.Port != port) {
		return false
	}
	if suffix, ok := strings.CutPrefix(r.Name, "*"); ok {
		return len(name) > len(suffix) && strings.HasSuffix(name, suffix)
	}
	return name == r.Name
}

func (r Rule) matchAddr(dest netip.AddrPort) bool {
	return !r.IsName() && r.Prefix.Contains(dest.Addr()) && (r.Port == 0 || r.Port == dest.Port())
}

// ParseRule reads one destination:
//
//	db                 the host name db, every port
//	db:5432            db, port 5432
//	*.example.com:443  every name under example.com, port 443
//	10.0.0.7           one address; 10.0.0.7:80 with a port
//	10.0.0.0/8         a CIDR; 10.0.0.0/8:5432 with a port
//	fd00::/8           IPv6 without a port; [fd00::1]:5432 and [fd00::/8]:5432 with one
//
// Names are matched case-insensitively; a trailing dot is dropped.
func ParseRule(value string) (Rule, error) {
	if value == "" {
		return Rule{}, errors.New("empty destination: want HOST, IP or CIDR, with an optional :PORT")
	}
	if strings.ContainsFunc(value, func(c rune) bool { return c <= ' ' || c == 0x7f }) {
		return Rule{}, errors.New("must not contain spaces or control characters")
	}
	host, port, bracketed := value, "", false
	switch colons := strings.Count(value, ":"); {
	case strings.HasPrefix(value, "["):
		end := strings.IndexByte(value, ']')
		if end < 0 {
			return Rule{}, errors.New(`unbalanced "["`)
		}
		host, bracketed = value[1:end], true
		switch rest := value[end+1:]; {
		case rest == "":
		case rest[0] != ':':
			return Rule{}, errors.New("want [ADDR]:PORT")
		default:
			port = rest[1:]
			if port == "" {
				return Rule{}, errors.New(`missing port after ":"`)
			}
		}
	case colons > 1:
		// A bare IPv6 address or CIDR: its last group cannot be told from a port, so ports need brackets.
		r, err := parseIP(value)
		if err == nil || strings.Contains(value, "%") {
			return r, err
		}
		return Rule{}, errors.New("not an IPv6 address or CIDR (with a port, write [ADDR]:PORT)")
	case colons == 1:
		host, port, _ = strings.Cut(value, ":")
		if port == "" {
			return Rule{}, errors.New(`missing port after ":"`)
		}
	}
	var r Rule
	var err error
	switch {
	case bracketed:
		if r, err = parseIP(host); err != nil {
			return Rule{}, fmt.Errorf("%q is not an IP address or CIDR: brackets are for IPv6", host)
		}
	case strings.Contains(host, "/"):
		if r, err = parseIP(host); err != nil {
			return Rule{}, err
		}
	default:
		if a, perr := netip.ParseAddr(host); perr == nil {
			r, err = parseIP(a.String())
		} else {
			r.Name, err = parseName(host)
		}
		if err != nil {
			return Rule{}, err
		}
	}
	if port != "" {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return Rule{}, errors.New("port must be 1-65535")
		}
		r.Port = uint16(n)
	}
	return r, nil
}

func parseIP(s string) (Rule, error) {
	if strings.Contains(s, "%") {
		return Rule{}, errors.New("IPv6 zones are not supported")
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return Rule{}, errors.New("not a valid CIDR (want ADDR/BITS, as in 10.0.0.0/8 or fd00::/8)")
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		// 10.1.2.3/8 means 10.0.0.0/8, as `ip route` reads it.
		return Rule{Prefix: p.Masked()}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return Rule{}, errors.New("not a valid IP address")
	}
	a = a.Unmap()
	return Rule{Prefix: netip.PrefixFrom(a, a.BitLen())}, nil
}

// parseName accepts what resolvers accept (letters, digits, "-", "_" for service labels), plus one
// leading "*." wildcard label.
func parseName(s string) (string, error) {
	name := strings.ToLower(strings.TrimSuffix(s, "."))
	if name == "*" {
		return "", errors.New("a wildcard needs a domain, as in *.example.com")
	}
	body := strings.TrimPrefix(name, "*.")
	if body == "" {
		return "", errors.New("empty host name")
	}
	if len(body) > 253 {
		return "", errors.New("host name longer than 253 characters")
	}
	labels := strings.Split(body, ".")
	for _, l := range labels {
		if l == "" {
			return "", errors.New(`empty label (two dots in a row, or a leading ".")`)
		}
		if len(l) > 63 {
			return "", fmt.Errorf("label %q longer than 63 characters", l)
		}
		for _, c := range l {
			switch {
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
			case c == '*':
				return "", errors.New("a wildcard may only be the first label, as in *.example.com")
			default:
				return "", fmt.Errorf("label %q: a host name has letters, digits, \"-\" and \"_\" only", l)
			}
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		// 10.0.0.300 and the like: a mistyped address, not a name (no top-level domain is numeric).
		return "", errors.New("not a valid IP address")
	}
	return name, nil
}
