package capture

import (
	"encoding/binary"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/net/bpf"
)

var (
	mac1 = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	mac2 = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
	ip4a = net.IPv4(10, 0, 0, 1)
	ip4b = net.IPv4(10, 0, 0, 2)
	ip6a = net.ParseIP("fd00::1")
	ip6b = net.ParseIP("fd00::2")
)

// frame serializes an Ethernet frame around the given IP header and transport layer.
func frame(t testing.TB, ip gopacket.NetworkLayer, transport gopacket.SerializableLayer, payload []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: mac1, DstMAC: mac2}
	var ipLayer gopacket.SerializableLayer
	switch ip := ip.(type) {
	case *layers.IPv4:
		eth.EthernetType = layers.EthernetTypeIPv4
		ipLayer = ip
	case *layers.IPv6:
		eth.EthernetType = layers.EthernetTypeIPv6
		ipLayer = ip
	}
	if tl, ok := transport.(interface {
		SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
	}); ok {
		if err := tl.SetNetworkLayerForChecksum(ip); err != nil {
			t.Fatal(err)
		}
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	ls := []gopacket.SerializableLayer{eth, ipLayer}
	if transport != nil {
		ls = append(ls, transport)
	}
	ls = append(ls, gopacket.Payload(payload))
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func v4(proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: proto, SrcIP: ip4a, DstIP: ip4b}
}

func v6(next layers.IPProtocol) *layers.IPv6 {
	return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: next, SrcIP: ip6a, DstIP: ip6b}
}

func tcp(src, dst uint16) *layers.TCP {
	return &layers.TCP{SrcPort: layers.TCPPort(src), DstPort: layers.TCPPort(dst), SYN: true, Window: 1024}
}

func udp(src, dst uint16) *layers.UDP {
	return &layers.UDP{SrcPort: layers.UDPPort(src), DstPort: layers.UDPPort(dst)}
}

func runFilter(t testing.TB, f Filter, snapLen uint32, pkt []byte) int {
	t.Helper()
	prog, err := f.Program(snapLen)
	if err != nil {
		t.Fatalf("Program(%v): %v", f, err)
	}
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatalf("NewVM(%v): %v", f, err)
	}
	n, err := vm.Run(pkt)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return n
}

func TestFilterProgram(t *testing.T) {
	tcp8080 := Filter{Proto: TCP, Port: 8080}
	udp53 := Filter{Proto: UDP, Port: 53}
	payload := []byte("GET / HTTP/1.1\r\n\r\n")

	// An IPv4 header with 4 bytes of options moves the ports by 4: the filter must use the
	// header length, not assume 20 bytes.
	withOptions := v4(layers.IPProtocolTCP)
	withOptions.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}

	firstFragment := v4(layers.IPProtocolTCP)
	firstFragment.Flags = layers.IPv4MoreFragments
	dontFragment := v4(layers.IPProtocolTCP)
	dontFragment.Flags = layers.IPv4DontFragment

	// A later fragment: its first bytes are payload, here crafted to look like port 8080.
	laterFragment := v4(layers.IPProtocolTCP)
	laterFragment.FragOffset = 185
	fakePorts := make([]byte, 20)
	binary.BigEndian.PutUint16(fakePorts[0:], 8080)
	binary.BigEndian.PutUint16(fakePorts[2:], 8080)

	hopByHop := v6(layers.IPProtocolIPv6HopByHop)

	tests := []struct {
		name   string
		filter Filter
		pkt    []byte
		want   bool
	}{
		{"tcp v4 dst port", tcp8080, frame(t, v4(layers.IPProtocolTCP), tcp(40000, 8080), payload), true},
		{"tcp v4 src port", tcp8080, frame(t, v4(layers.IPProtocolTCP), tcp(8080, 40000), payload), true},
		{"tcp v4 other port", tcp8080, frame(t, v4(layers.IPProtocolTCP), tcp(40000, 8081), payload), false},
		{"tcp v4 port in payload only", tcp8080, frame(t, v4(layers.IPProtocolTCP), tcp(40000, 9090), fakePorts), false},
		{"tcp v6 dst port", tcp8080, frame(t, v6(layers.IPProtocolTCP), tcp(40000, 8080), payload), true},
		{"tcp v6 src port", tcp8080, frame(t, v6(layers.IPProtocolTCP), tcp(8080, 40000), payload), true},
		{"tcp v6 other port", tcp8080, frame(t, v6(layers.IPProtocolTCP), tcp(40000, 80), payload), false},
		{"udp v4 to tcp filter", tcp8080, frame(t, v4(layers.IPProtocolUDP), udp(40000, 8080), payload), false},
		{"udp v6 to tcp filter", tcp8080, frame(t, v6(layers.IPProtocolUDP), udp(8080, 40000), payload), false},
		{"udp v4 dst port", udp53, frame(t, v4(layers.IPProtocolUDP), udp(40000, 53), payload), true},
		{"udp v4 src port", udp53, frame(t, v4(layers.IPProtocolUDP), udp(53, 40000), payload), true},
		{"udp v6 dst port", udp53, frame(t, v6(layers.IPProtocolUDP), udp(40000, 53), payload), true},
		{"udp v6 other port", udp53, frame(t, v6(layers.IPProtocolUDP), udp(40000, 54), payload), false},
		{"tcp v4 to udp filter", udp53, frame(t, v4(layers.IPProtocolTCP), tcp(53, 53), payload), false},
		{"tcp v6 to udp filter", udp53, frame(t, v6(layers.IPProtocolTCP), tcp(53, 53), payload), false},
		{"v4 with options, dst port", tcp8080, frame(t, withOptions, tcp(40000, 8080), payload), true},
		{"v4 with options, other port", tcp8080, frame(t, withOptions, tcp(40000, 8081), payload), false},
		{"v4 first fragment (MF, offset 0)", tcp8080, frame(t, firstFragment, tcp(40000, 8080), payload), true},
		{"v4 don't-fragment flag", tcp8080, frame(t, dontFragment, tcp(40000, 8080), payload), true},
		{"v4 later fragment", tcp8080, frame(t, laterFragment, nil, fakePorts), false},
		{"v6 extension header", tcp8080, frame(t, hopByHop, nil, fakePorts), false},
		{"arp", tcp8080, arpFrame(t), false},
		{"truncated v4", tcp8080, frame(t, v4(layers.IPProtocolTCP), tcp(40000, 8080), payload)[:35], false},
		{"truncated v6 before dst port", tcp8080, frame(t, v6(layers.IPProtocolTCP), tcp(40000, 8080), payload)[:57], false},
		{"truncated v6 after src port match", tcp8080, frame(t, v6(layers.IPProtocolTCP), tcp(8080, 40000), payload)[:57], true},
		{"empty", tcp8080, nil, false},
	}
	const snapLen = 96
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := runFilter(t, tt.filter, snapLen, tt.pkt)
			want := 0
			if tt.want {
				want = snapLen
			}
			if n != want {
				t.Errorf("filter %q kept %d bytes, want %d", tt.filter, n, want)
			}
			// The reference matcher used by the fuzz target must agree on every case.
			if got := referenceMatch(tt.pkt, tt.filter); got != tt.want {
				t.Errorf("referenceMatch = %v, want %v", got, tt.want)
			}
		})
	}
}

func arpFrame(t testing.TB) []byte {
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true},
		&layers.Ethernet{SrcMAC: mac1, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: mac1, SourceProtAddress: ip4a.To4(),
			DstHwAddress: make([]byte, 6), DstProtAddress: ip4b.To4()})
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestFilterValidate(t *testing.T) {
	for _, f := range []Filter{{Proto: TCP}, {Proto: 1, Port: 80}, {}} {
		if _, err := f.Program(100); err == nil {
			t.Errorf("Program(%+v) succeeded, want an error", f)
		}
	}
}

func TestProgramAssembles(t *testing.T) {
	f := &Filter{Proto: TCP, Port: 80}
	for _, tt := range []struct {
		f        *Filter
		loopback bool
		want     int
	}{
		{nil, false, 1},
		{nil, true, 4},
		{f, false, 20},
		{f, true, 23},
	} {
		raw, err := program(tt.f, 100, tt.loopback)
		if err != nil {
			t.Fatalf("program(%v, loopback=%v): %v", tt.f, tt.loopback, err)
		}
		if len(raw) != tt.want {
			t.Errorf("program(%v, loopback=%v) has %d instructions, want %d", tt.f, tt.loopback, len(raw), tt.want)
		}
		// The kernel refuses programs that jump out of bounds; the VM checks the same.
		insts, ok := bpf.Disassemble(raw)
		if !ok {
			t.Errorf("program(%v, loopback=%v) does not disassemble", tt.f, tt.loopback)
		}
		if tt.loopback {
			continue // the VM does not implement the packet-type extension
		}
		if _, err := bpf.NewVM(insts); err != nil {
			t.Errorf("program(%v): %v", tt.f, err)
		}
	}
}

// referenceMatch is the filter written as plain Go, as an oracle for the fuzz target. Like the
// BPF program, it drops a frame as soon as a field it needs lies beyond the frame's end.
func referenceMatch(pkt []byte, f Filter) bool {
	u16 := func(off int) (uint16, bool) {
		if off < 0 || off+2 > len(pkt) {
			return 0, false
		}
		return binary.BigEndian.Uint16(pkt[off:]), true
	}
	u8 := func(off int) (byte, bool) {
		if off >= len(pkt) {
			return 0, false
		}
		return pkt[off], true
	}
	portsMatch := func(srcOff int) bool {
		src, ok := u16(srcOff)
		if !ok {
			return false
		}
		if src == f.Port {
			return true
		}
		dst, ok := u16(srcOff + 2)
		return ok && dst == f.Port
	}
	etherType, ok := u16(12)
	if !ok {
		return false
	}
	switch etherType {
	case 0x86dd:
		next, ok := u8(20)
		return ok && next == byte(f.Proto) && portsMatch(54)
	case 0x0800:
		proto, ok := u8(23)
		if !ok || proto != byte(f.Proto) {
			return false
		}
		frag, ok := u16(20)
		if !ok || frag&0x1fff != 0 {
			return false
		}
		vihl, ok := u8(14)
		return ok && portsMatch(14+int(vihl&0xf)*4)
	default:
		return false
	}
}

// FuzzFilter compares the BPF program, as the kernel would run it, with referenceMatch on
// arbitrary frames.
func FuzzFilter(f *testing.F) {
	f.Add(frame(f, v4(layers.IPProtocolTCP), tcp(40000, 8080), nil), uint16(8080), true)
	f.Add(frame(f, v6(layers.IPProtocolTCP), tcp(8080, 1), nil), uint16(8080), true)
	f.Add(frame(f, v4(layers.IPProtocolUDP), udp(53, 1), nil), uint16(53), false)
	f.Add(frame(f, v6(layers.IPProtocolUDP), udp(1, 53), nil), uint16(53), false)
	f.Add(arpFrame(f), uint16(1), true)
	f.Fuzz(func(t *testing.T, pkt []byte, port uint16, isTCP bool) {
		if port == 0 {
			port = 1
		}
		filter := Filter{Proto: UDP, Port: port}
		if isTCP {
			filter.Proto = TCP
		}
		got := runFilter(t, filter, 0xffff, pkt) > 0
		if want := referenceMatch(pkt, filter); got != want {
			t.Errorf("filter %q on % x: BPF %v, reference %v", filter, pkt, got, want)
		}
	})
}
