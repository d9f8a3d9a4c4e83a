package capture

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/net/bpf"
)

func TestParseExprCanonical(t *testing.T) {
	tests := []struct{ in, want string }{
		{"tcp port 80", "tcp port 80"},
		{"  tcp   port\t80 ", "tcp port 80"},
		{"udp dst port 53", "udp dst port 53"},
		{"ip6 host ::1", "ip6 host ::1"},
		{"host 2001:DB8:0:0::1", "host 2001:db8::1"},
		{"host ::ffff:1.2.3.4", "host ::ffff:1.2.3.4"},
		{"src host 10.0.0.1", "src host 10.0.0.1"},
		{"net 10.0.0.0/8", "net 10.0.0.0/8"},
		{"net 10.0.0.1", "net 10.0.0.1/32"},
		{"dst net fd00::/16", "dst net fd00::/16"},
		{"sctp src portrange 90-80", "sctp src portrange 80-90"},
		{"ip proto 6", "ip proto 6"},
		{"less 100 and greater 10", "less 100 and greater 10"},
		{"icmp or icmp6 or arp or rarp", "icmp or icmp6 or arp or rarp"},
		{"!tcp && (udp || icmp)", "not tcp and (udp or icmp)"},
		// not binds tighter than and, and than or.
		{"not tcp and udp", "not tcp and udp"},
		{"not (tcp and udp)", "not (tcp and udp)"},
		{"not not tcp", "not not tcp"},
		{"tcp and udp or icmp", "(tcp and udp) or icmp"},
		{"not tcp or udp", "not tcp or udp"},
		{"tcp and not udp or not icmp", "(tcp and not udp) or not icmp"},
		// Parentheses group; redundant ones vanish and chains flatten.
		{"tcp or (udp and icmp)", "tcp or (udp and icmp)"},
		{"(tcp or udp) and icmp", "(tcp or udp) and icmp"},
		{"((tcp))", "tcp"},
		{"tcp and (udp and (icmp and arp))", "tcp and udp and icmp and arp"},
		{"(tcp or udp) or (icmp or arp)", "tcp or udp or icmp or arp"},
		{"port 80 || port 443 || port 8080", "port 80 or port 443 or port 8080"},
		{"(tcp and port 80) or (udp and port 53)", "(tcp and port 80) or (udp and port 53)"},
		{"not (tcp port 80 or tcp port 443)", "not (tcp port 80 or tcp port 443)"},
		{"(host 10.0.0.1)and(port 80)", "host 10.0.0.1 and port 80"},
	}
	for _, tt := range tests {
		e, err := ParseExpr(tt.in)
		if err != nil {
			t.Errorf("ParseExpr(%q): %v", tt.in, err)
			continue
		}
		if got := e.String(); got != tt.want {
			t.Errorf("ParseExpr(%q).String() = %q, want %q", tt.in, got, tt.want)
		}
		again, err := ParseExpr(e.String())
		if err != nil || !reflect.DeepEqual(again.root, e.root) {
			t.Errorf("ParseExpr(%q) = %#v, %v; want the tree of %q", e, again.root, err, tt.in)
		}
	}
}

func TestParseExprErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{"tcp prot 80", `unknown word "prot" at 5`},
		{"port 80 or 443", `value "443" at 12 needs its own qualifiers (tcpdump's carry-over is not supported): write "port 80 or port 443"`},
		{"tcp dst port 80 and not 443", `value "443" at 25 needs its own qualifiers (tcpdump's carry-over is not supported): write "tcp dst port 80 and not tcp dst port 443"`},
		{"10.0.0.1", `value "10.0.0.1" at 1 needs a qualifier: write "host 10.0.0.1"`},
		{"tcp 80", `value "80" at 5 needs a qualifier: write "tcp port 80"`},
		{"src 10.0.0.0/8", `value "10.0.0.0/8" at 5 needs a qualifier: write "src net 10.0.0.0/8"`},
		{"tcp or udp and port 53", `ambiguous "and" at 12 after "or" at 5: add parentheses (tcpdump reads "a or b and c" as "(a or b) and c")`},
		{"tcp || udp && icmp", `ambiguous "&&" at 12 after "||" at 5: add parentheses (tcpdump reads "a or b and c" as "(a or b) and c")`},
		{"", "empty expression"},
		{"   ", "empty expression"},
		{"tcp and", `missing a primitive after "and" at 5`},
		{"not", `missing a primitive after "not" at 1`},
		{"tcp and or udp", `expected a primitive, found "or" at 9`},
		{"()", `expected a primitive, found ")" at 2`},
		{"(tcp", `missing ")" for "(" at 1`},
		{"(tcp udp)", `expected "and", "or" or ")" before "udp" at 6`},
		{"tcp)", `unexpected ")" at 4`},
		{"tcp udp", `expected "and" or "or" before "udp" at 5`},
		{"port 80 443", `expected "and" or "or" before "443" at 9`},
		{"TCP port 80", `unknown word "TCP" at 1 (keywords are lowercase)`},
		{"vlan and tcp", `"vlan" at 1 is a tcpdump keyword this filter subset does not support`},
		{"tcp[13] & 2 != 0", `unsupported "[" at 4: arithmetic, packet data accessors such as tcp[13] and escapes are not in this filter subset`},
		{"tcp port 80 ; rm", `unexpected character ";" at 13`},
		{"hôst 1.2.3.4", `unexpected character "ô" at 2`},
		{"port", `missing value after "port" at 1`},
		{"port and tcp", `missing value after "port" at 1`},
		{"src", `missing host, net, port or portrange after "src" at 1`},
		{"src tcp", `expected host, net, port or portrange after "src", found "tcp" at 5`},
		{"port 65536", `"65536" at 6 is not a port number: out of range 0-65535`},
		{"port 080", `"080" at 6 is not a port number: leading zero (tcpdump would read it as octal)`},
		{"port http", `"http" at 6 is not a port number: want a decimal number`},
		{"port 80-90", `"80-90" at 6 is not a port number: for a range write "portrange 80-90"`},
		{"portrange 80", `"80" at 11 is not a port range such as 8000-8080`},
		{"host 10.0.0", `"10.0.0" at 6 is not an IPv4 or IPv6 address`},
		{"host 10.0.0.0/8", `"10.0.0.0/8" at 6 is not an address: for a prefix write "net 10.0.0.0/8"`},
		{"net 10.0.0.1/8", `"10.0.0.1/8" at 5 has bits set beyond the prefix length: write "10.0.0.0/8"`},
		{"net 10/8", `"10/8" at 5 is not a prefix such as 10.0.0.0/8 or fd00::/16`},
		{"net 10.0.0.0 mask 255.0.0.0", `"mask" at 14 is not supported: write "net 10.0.0.0/8"`},
		{"net 10.0.0.0 mask 255.0.255.0", `"mask" at 14 is not supported: write the network as a prefix, such as "net 10.0.0.0/8"`},
		{"ip and mask", `"mask" at 8 is a tcpdump keyword this filter subset does not support`},
		{"tcp and vlan", `"vlan" at 9 is a tcpdump keyword this filter subset does not support`},
		{"tcp vlan", `"vlan" at 5 is a tcpdump keyword this filter subset does not support`},
		{"tcp host 10.0.0.1", `"tcp" at 1 does not go with "host": write "tcp and host 10.0.0.1"`},
		{"ip src port 80", `"ip" at 1 does not go with "port": write "ip and src port 80"`},
		{"tcp less 100", `"tcp" at 1 does not go with "less": write "tcp and less 100"`},
		{"src proto 6", `"src" at 1 does not go with "proto"`},
		{"ip6 host 10.0.0.1", `"10.0.0.1" at 10 is an IPv4 address, but "ip6" asks for IPv6`},
		{"arp net fd00::/8", `"fd00::/8" at 9 is an IPv6 address, but "arp" asks for IPv4`},
		{"ip proto 256", `"256" at 10 is not a protocol number: out of range 0-255`},
		{"less -1", `"-1" at 6 is not a length: want a decimal number`},
		{"greater 4294967296", `"4294967296" at 9 is not a length: out of range 0-4294967295`},
		{strings.Repeat("(", maxDepth+1) + "tcp" + strings.Repeat(")", maxDepth+1), fmt.Sprintf(`"(" at %d nests deeper than %d levels`, maxDepth+1, maxDepth)},
	}
	for _, tt := range tests {
		_, err := ParseExpr(tt.in)
		var ee *ExprError
		if !errors.As(err, &ee) {
			t.Errorf("ParseExpr(%q) = %v, want an *ExprError", tt.in, err)
			continue
		}
		want := fmt.Sprintf("filter %q: %s", tt.in, tt.want)
		if err.Error() != want {
			t.Errorf("ParseExpr(%q):\n got %s\nwant %s", tt.in, err, want)
		}
		if strings.ContainsAny(err.Error(), "\n\r") {
			t.Errorf("ParseExpr(%q): error spans lines: %q", tt.in, err)
		}
	}
}

// A long expression is refused when parsed, not when the kernel gets it.
func TestParseExprTooLong(t *testing.T) {
	var hosts []string
	for i := range 300 {
		hosts = append(hosts, fmt.Sprintf("host fd00::%x", i))
	}
	_, err := ParseExpr(strings.Join(hosts, " or "))
	if err == nil || !strings.Contains(err.Error(), "more than the 4093 the kernel takes") {
		t.Errorf("ParseExpr(300 IPv6 hosts) = %v, want a too-long error", err)
	}
}

func TestExprZero(t *testing.T) {
	var e Expr
	if _, err := e.Program(100); err == nil {
		t.Error("zero Expr compiled")
	}
	if e.Match(make([]byte, 100)) {
		t.Error("zero Expr matched")
	}
	if e.String() != "" {
		t.Errorf("zero Expr is %q", e)
	}
	e = mustParse(t, "tcp")
	if _, err := e.Program(0); err == nil {
		t.Error("Program(0) succeeded")
	}
}

func mustParse(t testing.TB, s string) Expr {
	t.Helper()
	e, err := ParseExpr(s)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// ---------------------------------------------------------------------------------------------
// Frames.

type testFrame struct {
	name string
	data []byte
}

var (
	xmac1 = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	xmac2 = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
)

// build serializes an Ethernet frame; ip is *layers.IPv4 or *layers.IPv6, or nil for ARP or
// (EtherType 0, to be patched) anything else.
func build(t testing.TB, ip gopacket.NetworkLayer, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: xmac1, DstMAC: xmac2}
	all := []gopacket.SerializableLayer{eth}
	switch ip := ip.(type) {
	case *layers.IPv4:
		eth.EthernetType = layers.EthernetTypeIPv4
		all = append(all, ip)
	case *layers.IPv6:
		eth.EthernetType = layers.EthernetTypeIPv6
		all = append(all, ip)
	default:
		if _, ok := ls[0].(*layers.ARP); ok {
			eth.EthernetType = layers.EthernetTypeARP
		}
	}
	for _, l := range ls {
		if c, ok := l.(interface {
			SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
		}); ok && ip != nil {
			if err := c.SetNetworkLayerForChecksum(ip); err != nil {
				t.Fatal(err)
			}
		}
	}
	all = append(all, ls...)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, all...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func ip4(src, dst string, proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: proto, SrcIP: net.ParseIP(src), DstIP: net.ParseIP(dst)}
}

func ip6(src, dst string, next layers.IPProtocol) *layers.IPv6 {
	return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: next, SrcIP: net.ParseIP(src), DstIP: net.ParseIP(dst)}
}

func tcpL(src, dst uint16) *layers.TCP {
	return &layers.TCP{SrcPort: layers.TCPPort(src), DstPort: layers.TCPPort(dst), ACK: true, Window: 1024}
}

func udpL(src, dst uint16) *layers.UDP {
	return &layers.UDP{SrcPort: layers.UDPPort(src), DstPort: layers.UDPPort(dst)}
}

func arpL(op uint16, spa, tpa string) *layers.ARP {
	return &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: op, SourceHwAddress: xmac1, SourceProtAddress: net.ParseIP(spa).To4(),
		DstHwAddress: make([]byte, 6), DstProtAddress: net.ParseIP(tpa).To4()}
}

// exprFrames is the corpus the semantic and oracle tests run every expression on. Every
// frame is complete: a field a program reads is there whenever the frame's headers say so.
func exprFrames(t testing.TB) []testFrame {
	pl := gopacket.Payload("GET / HTTP/1.1\r\n\r\n")

	withOptions := ip4("10.0.0.1", "10.0.0.2", layers.IPProtocolTCP)
	withOptions.IHL = 6
	withOptions.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}

	first := ip4("10.0.0.1", "10.0.0.2", layers.IPProtocolTCP)
	first.Flags = layers.IPv4MoreFragments
	later := ip4("10.0.0.1", "10.0.0.2", layers.IPProtocolTCP)
	later.FragOffset = 185
	// A later fragment's first bytes are payload, here crafted to look like port 80.
	fakePorts := make([]byte, 24)
	binary.BigEndian.PutUint16(fakePorts[0:], 80)
	binary.BigEndian.PutUint16(fakePorts[2:], 80)

	// Extension headers as raw bytes: hop-by-hop (next TCP, PadN to 8 bytes) and fragment
	// (next TCP or ICMPv6, offset 0, more fragments).
	hopByHop := gopacket.Payload{byte(layers.IPProtocolTCP), 0, 1, 4, 0, 0, 0, 0}
	fragTCP := gopacket.Payload{byte(layers.IPProtocolTCP), 0, 0, 1, 0, 0, 0, 7}
	fragICMP := gopacket.Payload{byte(layers.IPProtocolICMPv6), 0, 0, 1, 0, 0, 0, 8}

	rarp := arpL(3, "10.0.0.3", "10.0.0.4")
	echo4 := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 1, Seq: 1}
	echo6 := func() *layers.ICMPv6 {
		return &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeEchoRequest, 0)}
	}
	lldp := func() []byte {
		b := build(t, nil, gopacket.Payload(make([]byte, 16)))
		binary.BigEndian.PutUint16(b[12:], 0x88cc)
		return b
	}
	rarpFrame := func() []byte {
		b := build(t, nil, rarp)
		binary.BigEndian.PutUint16(b[12:], etherRARP)
		return b
	}

	return []testFrame{
		{"t4", build(t, ip4("10.0.0.1", "10.0.0.2", layers.IPProtocolTCP), tcpL(40000, 80), pl)},
		{"t4opt", build(t, withOptions, tcpL(40000, 8080), pl)},
		{"u4", build(t, ip4("10.0.0.2", "10.0.0.1", layers.IPProtocolUDP), udpL(53, 33000), pl)},
		{"s4", build(t, ip4("10.0.0.1", "192.168.1.10", layers.IPProtocolSCTP), &layers.SCTP{SrcPort: 5000, DstPort: 80}, pl)},
		{"i4", build(t, ip4("10.0.0.1", "192.168.1.10", layers.IPProtocolICMPv4), echo4, pl)},
		{"f4a", build(t, first, tcpL(40000, 80), pl)},
		{"f4b", build(t, later, gopacket.Payload(fakePorts))},
		{"t4far", build(t, ip4("192.168.1.10", "172.16.5.4", layers.IPProtocolTCP), tcpL(443, 50000), gopacket.Payload(make([]byte, 1400)))},
		{"t6", build(t, ip6("fd00::1", "fd00::2", layers.IPProtocolTCP), tcpL(40000, 80), pl)},
		{"u6", build(t, ip6("fd00::2", "fd00::1", layers.IPProtocolUDP), udpL(53, 33000), pl)},
		{"i6", build(t, ip6("fd00::1", "2001:db8::1", layers.IPProtocolICMPv6), echo6(), pl)},
		{"h6", build(t, ip6("fd00::1", "fd00::2", layers.IPProtocolIPv6HopByHop), hopByHop, tcpL(40000, 80), pl)},
		{"g6", build(t, ip6("fd00::1", "fd00::2", layers.IPProtocolIPv6Fragment), fragTCP, tcpL(40000, 80), pl)},
		{"g6i", build(t, ip6("::1", "::1", layers.IPProtocolIPv6Fragment), fragICMP, echo6(), pl)},
		{"lo6", build(t, ip6("::1", "::1", layers.IPProtocolUDP), udpL(8080, 8080), pl)},
		{"arp", build(t, nil, arpL(layers.ARPRequest, "10.0.0.1", "10.0.0.2"))},
		{"rarp", rarpFrame()},
		{"lldp", lldp()},
	}
}

// TestExprMatch checks, for each expression, exactly which frames of the corpus it selects.
func TestExprMatch(t *testing.T) {
	frames := exprFrames(t)
	tests := []struct {
		expr string
		want []string
	}{
		{"ip", []string{"t4", "t4opt", "u4", "s4", "i4", "f4a", "f4b", "t4far"}},
		{"ip6", []string{"t6", "u6", "i6", "h6", "g6", "g6i", "lo6"}},
		{"arp", []string{"arp"}},
		{"rarp", []string{"rarp"}},
		// The bare protocols look behind an IPv6 fragment header, not other extension headers.
		{"tcp", []string{"t4", "t4opt", "f4a", "f4b", "t4far", "t6", "g6"}},
		{"udp", []string{"u4", "u6", "lo6"}},
		{"sctp", []string{"s4"}},
		{"icmp", []string{"i4"}},
		{"icmp6", []string{"i6", "g6i"}},
		// Ports: IPv4 first fragments only, IPv6 without extension headers.
		{"tcp port 80", []string{"t4", "f4a", "t6"}},
		{"port 80", []string{"t4", "f4a", "t6", "s4"}},
		{"sctp port 80", []string{"s4"}},
		{"udp port 53", []string{"u4", "u6"}},
		{"src port 53", []string{"u4", "u6"}},
		{"dst port 53", nil},
		{"tcp dst port 8080", []string{"t4opt"}},
		{"udp port 8080", []string{"lo6"}},
		{"portrange 440-450", []string{"t4far"}},
		{"portrange 8080-8079", []string{"t4opt", "lo6"}},
		{"tcp src portrange 40000-40000", []string{"t4", "t4opt", "f4a", "t6"}},
		{"dst portrange 33000-50000", []string{"u4", "t4far", "u6"}},
		// Addresses: IPv4 ones also in ARP and RARP.
		{"host 10.0.0.2", []string{"t4", "t4opt", "u4", "f4a", "f4b", "arp"}},
		{"src host 10.0.0.2", []string{"u4"}},
		{"dst host 10.0.0.2", []string{"t4", "t4opt", "f4a", "f4b", "arp"}},
		{"ip host 10.0.0.2", []string{"t4", "t4opt", "u4", "f4a", "f4b"}},
		{"arp host 10.0.0.2", []string{"arp"}},
		{"host 10.0.0.3", []string{"rarp"}},
		{"rarp src host 10.0.0.3", []string{"rarp"}},
		{"arp host 10.0.0.3", nil},
		{"net 10.0.0.0/8", []string{"t4", "t4opt", "u4", "s4", "i4", "f4a", "f4b", "arp", "rarp"}},
		{"net 192.168.0.0/16", []string{"s4", "i4", "t4far"}},
		{"src net 172.16.0.0/12", nil},
		{"dst net 172.16.0.0/12", []string{"t4far"}},
		{"net 0.0.0.0/0", []string{"t4", "t4opt", "u4", "s4", "i4", "f4a", "f4b", "t4far", "arp", "rarp"}},
		{"host fd00::2", []string{"t6", "u6", "h6", "g6"}},
		{"ip6 src host fd00::2", []string{"u6"}},
		{"ip6 host ::1", []string{"g6i", "lo6"}},
		{"net fd00::/16", []string{"t6", "u6", "i6", "h6", "g6"}},
		{"dst net 2001:db8::/32", []string{"i6"}},
		{"net fd00::/127", []string{"t6", "u6", "i6", "h6", "g6"}},
		{"net ::/0", []string{"t6", "u6", "i6", "h6", "g6", "g6i", "lo6"}},
		{"ip proto 6", []string{"t4", "t4opt", "f4a", "f4b", "t4far"}},
		{"ip6 proto 6", []string{"t6", "g6"}},
		{"proto 58", []string{"i6", "g6i"}},
		{"ip6 proto 0", []string{"h6"}},
		{"ip6 proto 44", []string{"g6", "g6i"}},
		{"greater 1000", []string{"t4far"}},
		{"less 60", []string{"u4", "i4", "f4b", "arp", "rarp", "lldp"}},
		// Operators.
		{"not ip and not ip6", []string{"arp", "rarp", "lldp"}},
		{"tcp and not port 80", []string{"t4opt", "f4b", "t4far", "g6"}},
		{"udp or icmp", []string{"u4", "u6", "lo6", "i4"}},
		{"(udp or icmp) and host 10.0.0.1", []string{"u4", "i4"}},
		{"tcp and port 80 or udp", []string{"t4", "f4a", "t6", "u4", "u6", "lo6"}},
		{"!(tcp || udp) && ip", []string{"s4", "i4"}},
		{"tcp port 80 and not host 10.0.0.1", []string{"t6"}},
		{"not not arp", []string{"arp"}},
	}
	for _, tt := range tests {
		e := mustParse(t, tt.expr)
		var got, ref []string
		for _, f := range frames {
			if e.Match(f.data) {
				got = append(got, f.name)
			}
			if refMatch(e.root, f.data) {
				ref = append(ref, f.name)
			}
		}
		want := slices.Clone(tt.want)
		sort.Strings(got)
		sort.Strings(ref)
		sort.Strings(want)
		if !slices.Equal(got, want) {
			t.Errorf("%q matches %v, want %v", tt.expr, got, want)
		}
		if !slices.Equal(ref, want) {
			t.Errorf("%q: reference matcher says %v, want %v", tt.expr, ref, want)
		}
	}
}

// TestExprLength checks less and greater at the boundary: both include the length itself.
func TestExprLength(t *testing.T) {
	f := exprFrames(t)[0].data
	n := len(f)
	for expr, want := range map[string]bool{
		fmt.Sprintf("less %d", n):      true,
		fmt.Sprintf("less %d", n-1):    false,
		fmt.Sprintf("greater %d", n):   true,
		fmt.Sprintf("greater %d", n+1): false,
		"less 4294967295":              true,
		"greater 0":                    true,
	} {
		if got := mustParse(t, expr).Match(f); got != want {
			t.Errorf("%q on a %d-byte frame = %v, want %v", expr, n, got, want)
		}
	}
}

// TestExprTruncated checks that frames too short for a field the program needs are dropped.
func TestExprTruncated(t *testing.T) {
	frames := exprFrames(t)
	t4 := frames[0].data
	for _, tt := range []struct {
		expr string
		n    int
	}{
		{"tcp port 80", 35},       // before the ports
		{"tcp port 80", 12},       // before the EtherType
		{"not tcp port 80", 35},   // negation does not turn the abort into a match
		{"host 10.0.0.9", 29},     // in the source address
		{"ip6 host ::1", 0},       // empty
		{"not ip6 host ::1", 0},   // empty
		{"greater 0 and tcp", 10}, // the length is always there, the EtherType is not
	} {
		if mustParse(t, tt.expr).Match(t4[:tt.n]) {
			t.Errorf("%q matched a frame cut to %d bytes", tt.expr, tt.n)
		}
	}
}

// TestExprLongJumps checks expressions whose programs need jumps beyond a conditional jump's
// 255 instructions, against the reference matcher.
func TestExprLongJumps(t *testing.T) {
	frames := exprFrames(t)
	var hosts []string
	for i := range 40 {
		hosts = append(hosts, fmt.Sprintf("host 2001:db8::%x", i+10))
	}
	for _, expr := range []string{
		"(" + strings.Join(hosts, " or ") + ") or tcp port 80",
		"tcp port 80 and not (" + strings.Join(hosts, " or ") + ")",
		"not (" + strings.Join(hosts, " or ") + ") and (icmp6 or net 10.0.0.0/8)",
		"(" + strings.Join(hosts, " or ") + " or host fd00::2) and tcp",
	} {
		e := mustParse(t, expr)
		prog, err := e.Program(DefaultSnapLen)
		if err != nil {
			t.Fatal(err)
		}
		far := 0
		for _, ins := range prog {
			if j, ok := ins.(bpf.Jump); ok && j.Skip > 0xff {
				far++
			}
		}
		if far == 0 {
			t.Errorf("%d-instruction program for %.40q... has no long jump", len(prog), expr)
		}
		for _, f := range frames {
			if got, want := e.Match(f.data), refMatch(e.root, f.data); got != want {
				t.Errorf("%.40q... on %s = %v, reference %v", expr, f.name, got, want)
			}
		}
	}
}

// TestExprLoadsShared checks that the compiler does not reload a field that A already holds,
// so that "port 80" costs what libpcap's does.
func TestExprLoadsShared(t *testing.T) {
	for expr, want := range map[string]int{"tcp port 80": 20, "port 80": 24, "host 10.0.0.1": 14, "tcp": 12} {
		prog, err := mustParse(t, expr).Program(100)
		if err != nil {
			t.Fatal(err)
		}
		if len(prog) != want {
			t.Errorf("%q compiles to %d instructions, want %d:\n%s", expr, len(prog), want, listing(prog))
		}
	}
}

func listing(prog []bpf.Instruction) string {
	var b strings.Builder
	for i, ins := range prog {
		fmt.Fprintf(&b, "(%03d) %v\n", i, ins)
	}
	return b.String()
}

// TestProgramWithExpr checks the socket filter for Options with both Filter and Expr.
func TestProgramWithExpr(t *testing.T) {
	frames := exprFrames(t)
	byName := map[string][]byte{}
	for _, f := range frames {
		byName[f.name] = f.data
	}
	notHost := mustParse(t, "not host 10.0.0.1")
	for _, tt := range []struct {
		f    *Filter
		e    *Expr
		want []string
	}{
		{&Filter{Proto: TCP, Port: 80}, &notHost, []string{"t6"}},
		{nil, &notHost, []string{"t4far", "t6", "u6", "i6", "h6", "g6", "g6i", "lo6", "rarp", "lldp"}},
	} {
		raw, err := programWith(tt.f, tt.e, 100, false)
		if err != nil {
			t.Fatal(err)
		}
		insts, ok := bpf.Disassemble(raw)
		if !ok {
			t.Fatalf("program for %v and %q does not disassemble", tt.f, tt.e)
		}
		vm, err := bpf.NewVM(insts)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, f := range frames {
			if n, err := vm.Run(f.data); err != nil || n > 0 {
				got = append(got, f.name)
			}
		}
		want := slices.Clone(tt.want)
		sort.Strings(got)
		sort.Strings(want)
		if !slices.Equal(got, want) {
			t.Errorf("filter %v and %q match %v, want %v", tt.f, tt.e, got, want)
		}
		// The loopback prefix goes in front of the combined program.
		lo, err := programWith(tt.f, tt.e, 100, true)
		if err != nil || len(lo) != len(raw)+3 {
			t.Errorf("loopback program: %d instructions, %v; want %d", len(lo), err, len(raw)+3)
		}
	}
	if _, err := programWith(&Filter{Proto: TCP}, &notHost, 100, false); err == nil {
		t.Error("invalid Filter with an Expr assembled")
	}
	if _, err := Open(Options{Interface: "lo", Expr: &Expr{}}); err == nil || !strings.Contains(err.Error(), "empty filter expression") {
		t.Errorf("Open with a zero Expr: %v", err)
	}
}

// ---------------------------------------------------------------------------------------------
// Reference matcher.

// refMatch evaluates a syntax tree on a complete frame in plain Go, from the semantics
// documented on Expr rather than from the compiler's lowering: an independent oracle for the
// code generator (jumps, shared loads, long jumps). It assumes every field the headers promise
// is present; on truncated frames the BPF program drops the frame instead.
func refMatch(n node, f []byte) bool {
	switch n := n.(type) {
	case andExpr:
		for _, x := range n {
			if !refMatch(x, f) {
				return false
			}
		}
		return true
	case orExpr:
		for _, x := range n {
			if refMatch(x, f) {
				return true
			}
		}
		return false
	case notExpr:
		return !refMatch(n.x, f)
	case prim:
		return refPrim(n, f)
	}
	panic(fmt.Sprintf("unknown node %T", n))
}

func refPrim(p prim, f []byte) bool {
	u8 := func(off int) int {
		if off >= len(f) {
			return -1
		}
		return int(f[off])
	}
	u16 := func(off int) int {
		if off+2 > len(f) {
			return -1
		}
		return int(binary.BigEndian.Uint16(f[off:]))
	}
	addr := func(off, n int) netip.Addr {
		if off+n > len(f) {
			return netip.Addr{}
		}
		a, _ := netip.AddrFromSlice(f[off : off+n])
		return a
	}
	et := u16(12)
	isIP, isIP6, isARP, isRARP := et == 0x0800, et == 0x86dd, et == 0x0806, et == 0x8035
	// libpcap's IPv6 protocol: next header, or the one behind a fragment header.
	proto6 := func(n int) bool { return isIP6 && (u8(20) == n || u8(20) == 44 && u8(54) == n) }
	proto4 := func(n int) bool { return isIP && u8(23) == n }
	dir := func(src, dst bool) bool {
		switch p.dir {
		case dirSrc:
			return src
		case dirDst:
			return dst
		}
		return src || dst
	}
	protoNum := map[protoQual]int{pqTCP: 6, pqUDP: 17, pqSCTP: 132}

	switch p.kind {
	case kindProto:
		switch p.proto {
		case pqIP:
			return isIP
		case pqIP6:
			return isIP6
		case pqARP:
			return isARP
		case pqRARP:
			return isRARP
		case pqICMP:
			return proto4(1)
		case pqICMP6:
			return proto6(58)
		}
		n := protoNum[p.proto]
		return proto4(n) || proto6(n)
	case kindProtoNum:
		n := int(p.lo)
		return p.proto != pqIP6 && proto4(n) || p.proto != pqIP && proto6(n)
	case kindHost, kindNet:
		in := func(srcOff, dstOff, n int) bool {
			return dir(p.net.Contains(addr(srcOff, n)), p.net.Contains(addr(dstOff, n)))
		}
		if !p.net.Addr().Is4() {
			return isIP6 && in(22, 38, 16)
		}
		ip := (p.proto == pqNone || p.proto == pqIP) && isIP && in(26, 30, 4)
		arp := (p.proto == pqNone || p.proto == pqARP) && isARP && in(28, 38, 4)
		rarp := (p.proto == pqNone || p.proto == pqRARP) && isRARP && in(28, 38, 4)
		return ip || arp || rarp
	case kindPort, kindPortRange:
		inRange := func(port int) bool { return port >= int(p.lo) && port <= int(p.hi) }
		want := []int{6, 17, 132}
		if n, ok := protoNum[p.proto]; ok {
			want = []int{n}
		}
		var hdr int
		switch {
		case isIP6 && slices.Contains(want, u8(20)):
			hdr = 54
		case isIP && slices.Contains(want, u8(23)) && u16(20)&0x1fff == 0:
			hdr = 14 + (u8(14)&0xf)*4
		default:
			return false
		}
		return dir(inRange(u16(hdr)), inRange(u16(hdr+2)))
	case kindLess:
		return len(f) <= int(p.lo)
	case kindGreater:
		return len(f) >= int(p.lo)
	}
	panic(fmt.Sprintf("unknown primitive %v", p))
}

// ---------------------------------------------------------------------------------------------
// libpcap as the oracle.

// TestExprLibpcapOracle compiles expressions with libpcap too, through `dumpcap -d`, runs
// both programs in the BPF VM on the frame corpus and wants the same verdict on every frame.
// For the hand-picked expressions that includes the frames cut short at many lengths: the
// compiler reads fields in libpcap's order, so a frame too short for some field is dropped in
// the same cases. In random expressions libpcap's optimizer proves some loads unnecessary and
// so accepts some cut frames that the subset's program drops; those differences are only
// counted (frames that short are malformed, and the kernel filters whole frames, before the
// snap length cuts them). Expressions the subset refuses must be refused by libpcap too,
// unless listed as a deliberate difference.
func TestExprLibpcapOracle(t *testing.T) {
	dumpcap := libpcapOracle(t)
	complete := exprFrames(t)
	var cut []testFrame
	for _, f := range complete {
		for _, n := range []int{0, 13, 14, 21, 24, 30, 34, 36, 38, 42, 50, 54, 55, 56, 57, 58} {
			if n < len(f.data) {
				cut = append(cut, testFrame{fmt.Sprintf("%s[:%d]", f.name, n), f.data[:n]})
			}
		}
	}
	picked, random := oracleExprs()
	exprs := append(slices.Clone(picked), random...)

	type result struct {
		expr string
		prog []bpf.Instruction
		err  error
	}
	results := make([]result, len(exprs))
	sem := make(chan struct{}, 8)
	done := make(chan int)
	for i, expr := range exprs {
		go func() {
			sem <- struct{}{}
			defer func() { <-sem; done <- i }()
			prog, err := dumpcap(expr)
			results[i] = result{expr, prog, err}
		}()
	}
	for range exprs {
		<-done
	}

	compared, selective, cutDiffer, cutCompared := 0, 0, 0, 0
	for i, r := range results {
		ours, err := ParseExpr(r.expr)
		if err != nil {
			t.Errorf("ParseExpr(%q): %v", r.expr, err)
			continue
		}
		if r.err != nil {
			t.Errorf("libpcap refuses %q, which the subset takes: %v", r.expr, r.err)
			continue
		}
		vm, err := bpf.NewVM(r.prog)
		if err != nil {
			t.Errorf("libpcap's program for %q: %v", r.expr, err)
			continue
		}
		libpcap := func(f testFrame) bool {
			n, err := vm.Run(f.data)
			if err != nil {
				t.Fatalf("libpcap's program for %q on %s: %v", r.expr, f.name, err)
			}
			return n > 0
		}
		matched := 0
		for _, f := range complete {
			got, want := ours.Match(f.data), libpcap(f)
			if got != want {
				t.Errorf("%q on %s: %v, libpcap %v", r.expr, f.name, got, want)
			}
			if got {
				matched++
			}
			compared++
		}
		if matched > 0 && matched < len(complete) {
			selective++
		}
		for _, f := range cut {
			got, want := ours.Match(f.data), libpcap(f)
			switch {
			case got == want:
			case i < len(picked):
				t.Errorf("%q on %s: %v, libpcap %v", r.expr, f.name, got, want)
			case got:
				// libpcap's optimizer only removes loads, so it never drops a cut frame
				// that the subset's program accepts.
				t.Errorf("%q on %s: true, libpcap false", r.expr, f.name)
			default:
				cutDiffer++
			}
			cutCompared++
		}
	}
	// An expression that matches all or nothing says little; most should be selective.
	t.Logf("%d expressions (%d selective), %d verdicts on complete frames compared with libpcap", len(exprs), selective, compared)
	t.Logf("%d verdicts on cut frames, of which %d differ (random expressions, libpcap accepts)", cutCompared, cutDiffer)

	// Refused by both.
	for _, expr := range []string{
		"ip6 host 10.0.0.1", "arp host ::1", "tcp host 10.0.0.1", "udp net 10.0.0.0/8", "ip port 80",
		"ip6 portrange 1-2", "icmp port 80", "net 10.0.0.1/8", "TCP port 80", "port 65536", "tcp port",
		"src tcp", "(tcp", "tcp)", "tcp and", "tcp udp", "10.0.0.1",
	} {
		if _, err := ParseExpr(expr); err == nil {
			t.Errorf("ParseExpr(%q) succeeded", expr)
		}
		if _, err := dumpcap(expr); !errors.Is(err, errLibpcapRefuses) {
			t.Errorf("libpcap takes %q: %v", expr, err)
		}
	}
	// The deliberate differences: libpcap takes these, the subset refuses them.
	for _, expr := range []string{
		"port 80 or 443",         // qualifier carry-over
		"tcp or udp and port 53", // and after or
		"src 10.0.0.1",           // a value without type means host
		"port 010",               // octal
		"net 10",                 // classful network
		"port http",              // service names
		"ether host 02:00:00:00:00:01", "vlan", "tcp[13] & 2 != 0", "net 10.0.0.0 mask 255.0.0.0",
	} {
		if _, err := ParseExpr(expr); err == nil {
			t.Errorf("ParseExpr(%q) succeeded", expr)
		}
		if _, err := dumpcap(expr); errors.Is(err, errLibpcapRefuses) {
			t.Errorf("libpcap refuses %q: %v", expr, err)
		}
	}
}

// libpcapOracle returns a function that compiles an expression with libpcap. Without dumpcap the
// test fails rather than skips: the oracle is what the test is about (.ci/run installs tshark). The function fails with errLibpcapRefuses when libpcap refuses the
// expression, and with another error when its program is beyond the listing parser.
func libpcapOracle(t *testing.T) func(expr string) ([]bpf.Instruction, error) {
	t.Helper()
	path, err := exec.LookPath("dumpcap")
	if err != nil {
		t.Fatal("dumpcap (wireshark's, libpcap-based; Debian package tshark) is not installed; it is the oracle")
	}
	compile := func(expr string) ([]bpf.Instruction, error) {
		var stdout, stderr bytes.Buffer
		cmd := exec.Command(path, "-d", "-f", expr, "-i", "lo")
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		// dumpcap exits 0 after printing that a filter is invalid.
		if _, reason, ok := strings.Cut(stderr.String(), "That string isn't a valid capture filter ("); ok {
			reason, _, _ = strings.Cut(reason, ").\n")
			if reason == "expression rejects all packets" {
				// libpcap refuses what its optimizer proves false; as an oracle that is
				// a program that rejects everything.
				return []bpf.Instruction{bpf.RetConstant{}}, nil
			}
			return nil, fmt.Errorf("%w: %s", errLibpcapRefuses, reason)
		}
		if err != nil {
			return nil, fmt.Errorf("dumpcap: %w: %s", err, strings.TrimSpace(stderr.String()))
		}
		return parseLibpcapListing(stdout.String())
	}
	if _, err := compile("ip"); err != nil {
		t.Fatalf("dumpcap cannot compile filters here: %v", err)
	}
	return compile
}

var errLibpcapRefuses = errors.New("libpcap refuses the expression")

// parseLibpcapListing reads libpcap's bpf_dump listing ("(001) jeq #0x86dd jt 2 jf 8"), whose
// jump targets are absolute.
func parseLibpcapListing(s string) ([]bpf.Instruction, error) {
	var prog []bpf.Instruction
	for line := range strings.Lines(s) {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		var idx int
		if _, err := fmt.Sscanf(line, "(%d)", &idx); err != nil || idx != len(prog) {
			return nil, fmt.Errorf("line %q: want instruction %d", line, len(prog))
		}
		f := strings.Fields(line[strings.Index(line, ")")+1:])
		ins, err := parseLibpcapInsn(idx, f)
		if err != nil {
			return nil, fmt.Errorf("line %q: %w", line, err)
		}
		prog = append(prog, ins)
	}
	if len(prog) == 0 {
		return nil, errors.New("empty listing")
	}
	return prog, nil
}

func parseLibpcapInsn(idx int, f []string) (bpf.Instruction, error) {
	num := func(s string) (uint32, error) {
		n, err := strconv.ParseUint(strings.TrimPrefix(s, "#"), 0, 32)
		return uint32(n), err
	}
	bracket := func(s string) (uint32, error) { // "[12]" or "M[3]"
		return num(strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(s, "M"), "["), "]"))
	}
	sizes := map[string]int{"ld": 4, "ldh": 2, "ldb": 1}
	jumps := map[string]bpf.JumpTest{"jeq": bpf.JumpEqual, "jgt": bpf.JumpGreaterThan, "jge": bpf.JumpGreaterOrEqual, "jset": bpf.JumpBitsSet}
	alu := map[string]bpf.ALUOp{"add": bpf.ALUOpAdd, "sub": bpf.ALUOpSub, "mul": bpf.ALUOpMul, "div": bpf.ALUOpDiv,
		"mod": bpf.ALUOpMod, "and": bpf.ALUOpAnd, "or": bpf.ALUOpOr, "xor": bpf.ALUOpXor, "lsh": bpf.ALUOpShiftLeft, "rsh": bpf.ALUOpShiftRight}
	if len(f) == 0 {
		return nil, errors.New("no opcode")
	}
	op, args := f[0], f[1:]
	arg := strings.Join(args, " ")
	switch {
	case op == "ret" && (arg == "" || arg == "a"):
		return bpf.RetA{}, nil
	case op == "ret":
		n, err := num(arg)
		return bpf.RetConstant{Val: n}, err
	case op == "tax":
		return bpf.TAX{}, nil
	case op == "txa":
		return bpf.TXA{}, nil
	case op == "ld" && arg == "#pktlen":
		return bpf.LoadExtension{Num: bpf.ExtLen}, nil
	case op == "ldxb" && strings.HasPrefix(arg, "4*(["):
		n, err := num(strings.TrimSuffix(strings.TrimPrefix(arg, "4*(["), "]&0xf)"))
		return bpf.LoadMemShift{Off: n}, err
	case (op == "ld" || op == "ldx") && strings.HasPrefix(arg, "#"):
		n, err := num(arg)
		dst := bpf.RegA
		if op == "ldx" {
			dst = bpf.RegX
		}
		return bpf.LoadConstant{Dst: dst, Val: n}, err
	case (op == "ld" || op == "ldx") && strings.HasPrefix(arg, "M["):
		n, err := bracket(arg)
		dst := bpf.RegA
		if op == "ldx" {
			dst = bpf.RegX
		}
		return bpf.LoadScratch{Dst: dst, N: int(n)}, err
	case op == "st" || op == "stx":
		n, err := bracket(arg)
		src := bpf.RegA
		if op == "stx" {
			src = bpf.RegX
		}
		return bpf.StoreScratch{Src: src, N: int(n)}, err
	case sizes[op] != 0 && strings.HasPrefix(arg, "[x + "):
		n, err := num(strings.TrimSuffix(strings.TrimPrefix(arg, "[x + "), "]"))
		return bpf.LoadIndirect{Off: n, Size: sizes[op]}, err
	case sizes[op] != 0 && strings.HasPrefix(arg, "["):
		n, err := bracket(arg)
		return bpf.LoadAbsolute{Off: n, Size: sizes[op]}, err
	case op == "ja":
		n, err := num(arg)
		return bpf.Jump{Skip: n - uint32(idx) - 1}, err
	case jumps[op] != 0 || op == "jeq":
		if len(args) != 5 || args[1] != "jt" || args[3] != "jf" {
			return nil, errors.New("malformed jump")
		}
		jt, err1 := num(args[2])
		jf, err2 := num(args[4])
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		st, sf := uint8(jt-uint32(idx)-1), uint8(jf-uint32(idx)-1)
		if args[0] == "x" {
			return bpf.JumpIfX{Cond: jumps[op], SkipTrue: st, SkipFalse: sf}, nil
		}
		v, err := num(args[0])
		return bpf.JumpIf{Cond: jumps[op], Val: v, SkipTrue: st, SkipFalse: sf}, err
	case op == "neg":
		return nil, errors.New("neg: the VM lacks it")
	}
	if a, ok := alu[op]; ok {
		if arg == "x" {
			return bpf.ALUOpX{Op: a}, nil
		}
		n, err := num(arg)
		return bpf.ALUOpConstant{Op: a, Val: n}, err
	}
	return nil, fmt.Errorf("unknown opcode %q", op)
}

// oracleExprs returns hand-picked expressions and random ones built from primitives that hit
// and miss the corpus.
func oracleExprs() (picked, random []string) {
	picked = []string{
		"ip", "ip6", "arp", "rarp", "tcp", "udp", "sctp", "icmp", "icmp6",
		"tcp port 80", "port 80", "udp port 53", "src port 53", "dst port 53", "tcp dst port 8080",
		"sctp src port 5000", "udp src port 8080", "port 0",
		"portrange 440-450", "portrange 8080-8079", "tcp src portrange 40000-40000", "dst portrange 33000-50000",
		"udp portrange 0-65535", "sctp dst portrange 79-81",
		"host 10.0.0.2", "src host 10.0.0.2", "dst host 10.0.0.2", "ip host 10.0.0.2", "arp host 10.0.0.2",
		"host 10.0.0.3", "rarp src host 10.0.0.3", "arp dst host 10.0.0.4", "rarp host 10.0.0.4",
		"net 10.0.0.0/8", "net 192.168.0.0/16", "src net 172.16.0.0/12", "dst net 172.16.0.0/12",
		"net 0.0.0.0/0", "ip src net 0.0.0.0/0", "arp net 10.0.0.0/30", "net 10.0.0.1", "net 192.168.1.0/25",
		"host fd00::2", "ip6 src host fd00::2", "ip6 host ::1", "host ::ffff:1.2.3.4", "net fd00::/16",
		"dst net 2001:db8::/32", "net fd00::/127", "net fd00::/33", "net ::/0", "src net ::/1", "net fd00::/8",
		"net fd00::/64", "ip6 dst net fd00::2/128", "net 8000::/1",
		"ip proto 6", "ip6 proto 6", "proto 58", "ip6 proto 0", "ip6 proto 44", "proto 17", "ip proto 1",
		"greater 1000", "less 60", "less 59", "greater 60", "greater 61", "less 0", "greater 0",
		"not ip and not ip6", "tcp and not port 80", "udp or icmp", "(udp or icmp) and host 10.0.0.1",
		"tcp and port 80 or udp", "!(tcp || udp) && ip", "tcp port 80 and not host 10.0.0.1", "not not arp",
		"not (tcp port 80 or udp port 53) and (ip or ip6)", "not tcp port 80", "not ip6 host ::1",
		"icmp6 or (arp and host 10.0.0.1) or (sctp and dst host 192.168.1.10)",
	}
	var hosts []string
	for i := range 40 {
		hosts = append(hosts, fmt.Sprintf("host 2001:db8::%x", i+10))
	}
	picked = append(picked,
		"("+strings.Join(hosts, " or ")+") or tcp port 80",
		"tcp port 80 and not ("+strings.Join(hosts, " or ")+")",
		"("+strings.Join(hosts, " or ")+" or host fd00::2) and tcp",
	)

	leaves := []string{
		"tcp", "udp", "icmp", "icmp6", "ip", "ip6", "arp", "sctp", "port 80", "tcp port 80", "udp port 53",
		"src port 40000", "dst port 33000", "portrange 50-100", "udp dst portrange 8000-9000",
		"host 10.0.0.1", "src host 10.0.0.2", "dst host 192.168.1.10", "net 10.0.0.0/8",
		"dst net 172.16.0.0/12", "host fd00::1", "src net fd00::/16", "ip6 host ::1", "dst host 2001:db8::1",
		"ip proto 6", "proto 58", "less 60", "greater 100", "arp host 10.0.0.2", "rarp",
	}
	rng := rand.New(rand.NewPCG(1, 2))
	// gen returns an expression and whether its top is a binary operator, which an operand of
	// another one must parenthesize: the random expressions never mix and and or.
	var gen func(depth int) (string, bool)
	wrapped := func(depth int) string {
		s, binary := gen(depth)
		if binary {
			return "(" + s + ")"
		}
		return s
	}
	gen = func(depth int) (string, bool) {
		switch r := rng.IntN(10); {
		case depth == 0 || r < 4:
			return leaves[rng.IntN(len(leaves))], false
		case r < 6:
			return "not " + wrapped(depth-1), false
		default:
			op := []string{" and ", " or ", " && ", " || "}[rng.IntN(4)]
			return wrapped(depth-1) + op + wrapped(depth-1), true
		}
	}
	for range 200 {
		s, _ := gen(4)
		random = append(random, s)
	}
	return picked, random
}
