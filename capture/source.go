// Package capture reads packets from the agent's network namespace with AF_PACKET sockets and
// writes them as pcap or pcapng. It is pure Go (gopacket's pcapgo, not libpcap), because the
// agent binary is static, and it needs CAP_NET_RAW only.
package capture

import "github.com/gopacket/gopacket"

// DefaultSnapLen is libpcap's maximum: with segmentation offload the kernel hands packet
// sockets merged frames far larger than the MTU.
const DefaultSnapLen = 262144

// queueLen bounds the packets read from the sockets but not yet taken by the caller. When the
// caller is slower than the traffic the readers block, the socket buffers fill and the kernel
// drops and counts packets (Stats), instead of the agent growing without bound.
const queueLen = 256

// PacketSource yields captured frames. It is the one place where captured bytes leave this
// package; *Capture and pcapgo's file readers implement it.
type PacketSource interface {
	// ReadPacketData returns the next frame, which the caller may keep, and io.EOF when
	// there are no more.
	ReadPacketData() ([]byte, gopacket.CaptureInfo, error)
}

// Options say what to capture.
type Options struct {
	// Interface is the name of the interface to capture on; empty means every Ethernet and
	// loopback interface present when the capture opens.
	Interface string
	// Filter selects packets in the kernel; nil captures everything.
	Filter *Filter
	// Expr selects packets in the kernel with a tcpdump-syntax expression; nil captures
	// everything. With Filter too, a packet must match both.
	Expr *Expr
	// SnapLen is how many bytes of each frame to keep; 0 means DefaultSnapLen.
	SnapLen int
}

// Interface is one interface a capture reads from.
type Interface struct {
	Index int
	Name  string
}

// Stats are the kernel's packet counts for a capture, summed over its sockets since it opened.
type Stats struct {
	// Received counts frames that passed the filter and were queued to the capture.
	Received uint64
	// Dropped counts frames that passed the filter but found the socket buffer full.
	Dropped uint64
}
