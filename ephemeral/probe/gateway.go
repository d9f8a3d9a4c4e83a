package probe

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// Route tables of the calling thread's network namespace: a kernel test runs the steal on a thread
// in a namespace it made, where /proc/self/net would be the process's.
const (
	RouteFile     = "/proc/thread-self/net/route"
	IPv6RouteFile = "/proc/thread-self/net/ipv6_route"
)

// Gateways reads the default routes' gateways from the route tables in the kernel's text form
// (RouteFile, IPv6RouteFile); a table that does not exist (no IPv6) has none.
func Gateways(routeFile, ipv6RouteFile string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, f := range []struct {
		path  string
		parse func(io.Reader) ([]netip.Addr, error)
	}{{routeFile, parseRoute}, {ipv6RouteFile, parseIPv6Route}} {
		file, err := os.Open(f.path)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read the default gateway: %w", err)
		}
		gws, err := f.parse(file)
		file.Close()
		if err != nil {
			return nil, fmt.Errorf("read the default gateway from %s: %w", f.path, err)
		}
		out = append(out, gws...)
	}
	return out, nil
}

// rtfGateway is RTF_GATEWAY: the route goes through a gateway.
const rtfGateway = 0x2

// parseRoute reads /proc/net/route: after a header line, "Iface Destination Gateway Flags RefCnt
// Use Metric Mask ...", addresses in hex in the host's byte order (little-endian on every
// architecture the agent is built for).
func parseRoute(r io.Reader) ([]netip.Addr, error) {
	var out []netip.Addr
	sc := bufio.NewScanner(r)
	for first := true; sc.Scan(); first = false {
		f := strings.Fields(sc.Text())
		if first || len(f) < 8 {
			continue
		}
		flags, err := strconv.ParseUint(f[3], 16, 32)
		if err != nil {
			return nil, fmt.Errorf("route flags %q: %w", f[3], err)
		}
		if f[1] != "00000000" || f[7] != "00000000" || flags&rtfGateway == 0 {
			continue
		}
		gw, err := strconv.ParseUint(f[2], 16, 32)
		if err != nil {
			return nil, fmt.Errorf("route gateway %q: %w", f[2], err)
		}
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], uint32(gw))
		out = appendNew(out, netip.AddrFrom4(b))
	}
	return out, sc.Err()
}

// parseIPv6Route reads /proc/net/ipv6_route: "dest dest_len src src_len nexthop metric refcnt use
// flags iface", addresses as 32 hex digits in network order, no header.
func parseIPv6Route(r io.Reader) ([]netip.Addr, error) {
	var out []netip.Addr
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 || f[1] != "00" || strings.Trim(f[0], "0") != "" {
			continue
		}
		b, err := hex.DecodeString(f[4])
		if err != nil || len(b) != 16 {
			return nil, fmt.Errorf("route next hop %q is not an IPv6 address", f[4])
		}
		if a := netip.AddrFrom16([16]byte(b)); !a.IsUnspecified() {
			out = appendNew(out, a)
		}
	}
	return out, sc.Err()
}

func appendNew(list []netip.Addr, a netip.Addr) []netip.Addr {
	for _, x := range list {
		if x == a {
			return list
		}
	}
	return append(list, a)
}
