// Package forward is the local side of port-forwarding: it parses forward specs, listens on local
// addresses and carries each local connection or datagram flow through the tunnel to the pod.
package forward

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Spec is one `[LOCAL_PORT:]HOST:PORT[/udp]` argument.
type Spec struct {
	// LocalPort 0 asks the kernel for a free port, as kubectl's ":PORT" does.
	LocalPort int
	// Host is dialed from the pod: its loopback, an IP, or a name the pod's resolver knows.
	Host     string
	Port     int
	Protocol string // "tcp" or "udp"
}

// Remote is the address the pod dials.
func (s Spec) Remote() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

func (s Spec) String() string {
	r := s.Remote()
	if s.Protocol == "udp" {
		r += "/udp"
	}
	return r
}

// ParseSpec reads one forward argument. Forms, as kubectl users would guess them:
//
//	8080                 pod's localhost:8080 on local 8080
//	9000:8080            pod's localhost:8080 on local 9000
//	:8080                pod's localhost:8080 on a free local port
//	redis:6379           redis:6379 as the pod resolves it, on local 6379
//	7000:redis:6379      the same on local 7000
//	[fd00::1]:53/udp     UDP, IPv6 literal in brackets
func ParseSpec(arg string) (Spec, error) {
	s := Spec{Protocol: "tcp"}
	body := arg
	if i := strings.LastIndex(arg, "/"); i >= 0 {
		switch proto := strings.ToLower(arg[i+1:]); proto {
		case "tcp", "udp":
			s.Protocol = proto
		default:
			return Spec{}, fmt.Errorf("invalid forward %q: protocol %q must be tcp or udp", arg, arg[i+1:])
		}
		body = arg[:i]
	}
	parts, err := splitHostPorts(body)
	if err != nil {
		return Spec{}, fmt.Errorf("invalid forward %q: %w", arg, err)
	}
	local, host, remote := "", "localhost", ""
	switch len(parts) {
	case 1:
		remote = parts[0]
		local = remote
	case 2:
		if isPort(parts[0]) || parts[0] == "" {
			local, remote = parts[0], parts[1]
		} else {
			host, remote = parts[0], parts[1]
			local = remote
		}
	case 3:
		local, host, remote = parts[0], parts[1], parts[2]
	default:
		return Spec{}, fmt.Errorf("invalid forward %q: want [LOCAL_PORT:]HOST:PORT[/udp]", arg)
	}
	if host == "" {
		return Spec{}, fmt.Errorf("invalid forward %q: empty host", arg)
	}
	s.Host = host
	if s.Port, err = parsePort(remote, false); err != nil {
		return Spec{}, fmt.Errorf("invalid forward %q: remote %w", arg, err)
	}
	if s.LocalPort, err = parsePort(local, true); err != nil {
		return Spec{}, fmt.Errorf("invalid forward %q: local %w", arg, err)
	}
	return s, nil
}

// splitHostPorts splits on colons that are not inside an IPv6 literal's brackets.
func splitHostPorts(s string) ([]string, error) {
	var parts []string
	start, depth := 0, 0
	for i, r := range s {
		switch r {
		case '[':
			depth++
		case ']':
			depth--
			if depth < 0 {
				return nil, fmt.Errorf("unbalanced %q", "]")
			}
		case ':':
			if depth == 0 {
				parts = append(parts, s[start:i])
				start = i + 1
			}
		}
	}
	if depth != 0 {
		return nil, fmt.Errorf("unbalanced %q", "[")
	}
	parts = append(parts, s[start:])
	for i, p := range parts {
		if strings.HasPrefix(p, "[") && strings.HasSuffix(p, "]") {
			inner := p[1 : len(p)-1]
			if net.ParseIP(inner) == nil || !strings.Contains(inner, ":") {
				return nil, fmt.Errorf("%q is not an IPv6 address", p)
			}
			parts[i] = inner
		} else if strings.ContainsAny(p, "[]") {
			return nil, fmt.Errorf("misplaced brackets in %q", p)
		}
	}
	return parts, nil
}

func isPort(s string) bool {
	_, err := strconv.Atoi(s)
	return err == nil
}

func parsePort(s string, zeroOK bool) (int, error) {
	if s == "" && zeroOK {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 65535 || (n == 0 && !zeroOK) {
		return 0, fmt.Errorf("port %q must be a number from 1 to 65535", s)
	}
	return n, nil
}
