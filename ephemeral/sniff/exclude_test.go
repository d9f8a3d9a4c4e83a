package sniff

import (
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// loFrame is a TCP segment between two loopback ports as a capture on lo sees it.
func loFrame(t *testing.T, src, dst net.IP, sport, dport int) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: make(net.HardwareAddr, 6), DstMAC: make(net.HardwareAddr, 6), EthernetType: layers.EthernetTypeIPv4}
	var ip gopacket.NetworkLayer
	var ls []gopacket.SerializableLayer
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), ACK: true, Window: 512}
	if src.To4() != nil {
		v4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src, DstIP: dst}
		ip, ls = v4, []gopacket.SerializableLayer{eth, v4}
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		v6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: src, DstIP: dst}
		ip, ls = v6, []gopacket.SerializableLayer{eth, v6}
	}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, append(ls, tcp, gopacket.Payload("x"))...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestCaptureExcludesDataPorts compiles what Open compiles and runs it on frames: the agent's data
// connections never match, with or without the user's filter, and everything else matches as asked.
func TestCaptureExcludesDataPorts(t *testing.T) {
	lo4, lo6, pod := net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 1, 2, 3)
	data := []int{40000, 40001}
	tests := []struct {
		name  string
		spec  wire.DumpSpec
		frame []byte
		want  bool
	}{
		{"no filter: plugin to data port", wire.DumpSpec{}, loFrame(t, lo4, lo4, 51000, 40000), false},
		{"no filter: data port answers", wire.DumpSpec{}, loFrame(t, lo4, lo4, 40001, 51000), false},
		{"no filter: data port over ::1", wire.DumpSpec{}, loFrame(t, lo6, lo6, 51000, 40000), false},
		{"no filter: the app on lo", wire.DumpSpec{}, loFrame(t, lo4, lo4, 51000, 8080), true},
		// The pod's own traffic that happens to use the number is not the tunnel, which is on lo.
		{"no filter: the pod IP, same port number", wire.DumpSpec{}, loFrame(t, pod, pod, 51000, 40000), true},
		{"port filter naming the data port", wire.DumpSpec{Ports: []int{40000}}, loFrame(t, lo4, lo4, 51000, 40000), false},
		{"or filter", wire.DumpSpec{Filter: "tcp or udp"}, loFrame(t, lo4, lo4, 40000, 51000), false},
		{"or filter: the app", wire.DumpSpec{Filter: "tcp or udp"}, loFrame(t, lo4, lo4, 8080, 51000), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := tt.spec.CaptureExpr(data)
			e, err := capture.ParseExpr(text)
			if err != nil {
				t.Fatalf("%q: %v", text, err)
			}
			if got := e.Match(tt.frame); got != tt.want {
				t.Errorf("%q matched %v, want %v", text, got, tt.want)
			}
		})
	}
}
