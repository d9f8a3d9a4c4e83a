// Package capture reads packets from the agent's network namespace with AF_PACKET sockets, each
// with a memory-mapped TPACKET_V3 ring, and writes them as pcap or pcapng. It is pure Go
// (gopacket's afpacket and pcapgo, not libpcap), because the agent binary is static, and it needs
// CAP_NET_RAW only.
package capture

import (
	"fmt"

	"github.com/gopacket/gopacket"
)

// DefaultSnapLen is libpcap's maximum: with segmentation offload the kernel hands packet
// sockets merged frames far larger than the MTU.
const DefaultSnapLen = 262144

// queueLen bounds the packets copied out of the rings but not yet taken by the caller. When the
// caller is slower than the traffic the readers block instead of dropping: they stop handing ring
// blocks back, the rings fill and the kernel drops and counts packets (Stats.Dropped), so the
// agent does not grow without bound and every loss shows in one counter.
const queueLen = 256

// DefaultRingSize is the ring a capture gets unless Options.RingSize says otherwise. The ring is
// kernel memory, allocated whole when the capture opens and held until it closes; a capture of
// every interface shares one ring among them (a node's network has one per pod). In return it
// holds 7 MiB or more of TCP payload, in 64 KiB offloaded frames or in MTU-sized ones, with
// nobody reading: seven times the 1 MiB burst that overflowed a plain socket's 208 KiB buffer,
// and about what one connection can send unacknowledged with Linux's default 6 MiB tcp_rmem
// maximum. A reader that keeps pace stretches that further; a larger RingSize costs the same
// again in kernel memory per interface.
const DefaultRingSize = 8 << 20

// The ring's geometry (see ringGeometry).
const (
	// maxRingSize keeps a mistyped size from pinning gigabytes of kernel memory per interface.
	maxRingSize = 1 << 30
	// minRingBlocks: the reader holds one block while the kernel fills the others, and a
	// block is handed over only when full or after blockTimeout, so a ring of very few blocks
	// fills up with a trickle of packets.
	minRingBlocks = 4
	// minBlockSize keeps the blocks of a headers-only capture large enough that the kernel
	// does not retire one every few frames under load.
	minBlockSize = 128 << 10
	// frameOverhead is more than the kernel puts around a frame in a block: the block
	// descriptor (48 bytes), tpacket3_hdr and sockaddr_ll (68), alignment of the network header.
	frameOverhead = 512
)

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
	// loopback interface, those that appear later included, through one socket and ring.
	Interface string
	// Filter selects packets in the kernel; nil captures everything.
	Filter *Filter
	// Expr selects packets in the kernel with a tcpdump-syntax expression; nil captures
	// everything. With Filter too, a packet must match both.
	Expr *Expr
	// SnapLen is how many bytes of each frame to keep; 0 means DefaultSnapLen.
	SnapLen int
	// RingSize is how many bytes of kernel memory the capture's ring takes; 0 means
	// DefaultRingSize. It is rounded down to whole blocks, which are large enough for one
	// frame of SnapLen bytes (512 KiB at DefaultSnapLen), and must hold at least 4 of them.
	RingSize int
}

// Interface is one interface a capture reads from.
type Interface struct {
	Index int
	Name  string
}

// Stats are the kernel's packet counts for a capture, summed over its sockets since it opened.
// The capture itself never drops a frame: a caller that falls behind makes the rings fill, and
// the kernel drops and counts what does not fit (Dropped).
type Stats struct {
	// Received counts frames that passed the filter and were placed in a ring. Those still in
	// a ring or queued when the capture closes are counted but never read.
	Received uint64
	// Dropped counts frames that passed the filter but found their ring full.
	Dropped uint64
	// RingFull counts the times a ring filled up (TPACKET_V3's freeze_q_cnt): the kernel
	// dropped frames from then until the reader handed a block back.
	RingFull uint64
}

// ringGeometry splits a ring of size bytes (0: DefaultRingSize) into blocks that can each hold a
// frame of snapLen bytes. Blocks are powers of two because the kernel allocates them so.
func ringGeometry(snapLen, size int) (blockSize, blocks int, err error) {
	if size == 0 {
		size = DefaultRingSize
	}
	if size < 0 || size > maxRingSize {
		return 0, 0, fmt.Errorf("ring size %d out of range 1-%d", size, maxRingSize)
	}
	blockSize = minBlockSize
	for blockSize < snapLen+frameOverhead {
		blockSize *= 2
	}
	blocks = size / blockSize
	if blocks < minRingBlocks {
		return 0, 0, fmt.Errorf("ring size %d too small for snap length %d: it needs at least %d bytes", size, snapLen, minRingBlocks*blockSize)
	}
	return blockSize, blocks, nil
}
