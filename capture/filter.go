package capture

import (
	"fmt"
	"slices"

	"golang.org/x/net/bpf"
)

// Proto is an IP protocol number a Filter can select.
type Proto uint8

// The protocols a Filter can select.
const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	default:
		return fmt.Sprintf("proto %d", uint8(p))
	}
}

// Filter selects packets of one protocol, over IPv4 or IPv6, to or from one port, like
// tcpdump's "tcp port N". It runs in the kernel as classic BPF, so packets it rejects are
// never copied to the agent.
type Filter struct {
	Proto Proto
	Port  uint16
}

func (f Filter) String() string { return fmt.Sprintf("%s port %d", f.Proto, f.Port) }

// Validate checks that the filter can be assembled.
func (f Filter) Validate() error {
	if f.Proto != TCP && f.Proto != UDP {
		return fmt.Errorf("unsupported protocol %d: want tcp (6) or udp (17)", uint8(f.Proto))
	}
	if f.Port == 0 {
		return fmt.Errorf("filter %q: port must be 1-65535", f)
	}
	return nil
}

// Offsets into an Ethernet frame. The kernel hands VLAN tags to packet sockets out of band
// (auxdata) on the interfaces pods have, so the EtherType is always at 12.
const (
	ethTypeOff = 12
	ethHdrLen  = 14
	etherIPv4  = 0x0800
	etherIPv6  = 0x86dd

	ipv4ProtoOff   = ethHdrLen + 9
	ipv4FragOff    = ethHdrLen + 6
	ipv4FragOffset = 0x1fff // fragment offset bits; the flags (DF, MF) are not part of it

	// IPv6 extension headers are not followed (neither does tcpdump's "tcp port"): a
	// packet whose first next-header is not TCP or UDP is not matched.
	ipv6NextHdrOff = ethHdrLen + 6
	ipv6HdrLen     = 40

	// packetOutgoing is PACKET_OUTGOING, the skb->pkt_type of a frame the host sends.
	packetOutgoing = 4

	// ARPHRD_ETHER and ARPHRD_LOOPBACK, the interface types (dev->type) of Ethernet and lo.
	arphrdEther    = 1
	arphrdLoopback = 772
)

// Program returns the filter as classic BPF for Ethernet frames. Matching frames are accepted
// with snapLen, which the kernel uses to cut them before they are queued; others are dropped.
func (f Filter) Program(snapLen uint32) ([]bpf.Instruction, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	port, proto := uint32(f.Port), uint32(f.Proto)
	// The skips are relative to the next instruction; the table test in filter_test.go runs
	// every branch in the BPF VM.
	return []bpf.Instruction{
		/* 0 */ bpf.LoadAbsolute{Off: ethTypeOff, Size: 2},
		/* 1 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: etherIPv6, SkipFalse: 6}, // else → 8
		/* 2 */ bpf.LoadAbsolute{Off: ipv6NextHdrOff, Size: 1},
		/* 3 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: proto, SkipFalse: 15}, // else → drop
		/* 4 */ bpf.LoadAbsolute{Off: ethHdrLen + ipv6HdrLen, Size: 2}, // source port
		/* 5 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: port, SkipTrue: 12}, // → accept
		/* 6 */ bpf.LoadAbsolute{Off: ethHdrLen + ipv6HdrLen + 2, Size: 2}, // destination port
		/* 7 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: port, SkipTrue: 10, SkipFalse: 11},
		/* 8 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: etherIPv4, SkipFalse: 10}, // else → drop
		/* 9 */ bpf.LoadAbsolute{Off: ipv4ProtoOff, Size: 1},
		/* 10 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: proto, SkipFalse: 8}, // else → drop
		// Only the first fragment carries the ports; later ones would be read as garbage.
		/* 11 */ bpf.LoadAbsolute{Off: ipv4FragOff, Size: 2},
		/* 12 */ bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: ipv4FragOffset, SkipTrue: 6}, // → drop
		/* 13 */ bpf.LoadMemShift{Off: ethHdrLen}, // X = IPv4 header length (IHL*4)
		/* 14 */ bpf.LoadIndirect{Off: ethHdrLen, Size: 2}, // source port
		/* 15 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: port, SkipTrue: 2}, // → accept
		/* 16 */ bpf.LoadIndirect{Off: ethHdrLen + 2, Size: 2}, // destination port
		/* 17 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: port, SkipFalse: 1}, // else → drop
		/* 18 */ bpf.RetConstant{Val: snapLen},
		/* 19 */ bpf.RetConstant{Val: 0},
	}, nil
}

// program is the whole socket filter for one interface: f, or every frame if f is nil, cut to
// snapLen. On loopback it first drops the host's outgoing copy of each frame, because lo hands
// every frame to packet sockets twice, once leaving and once arriving (libpcap does the same,
// in user space).
func program(f *Filter, snapLen uint32, loopback bool) ([]bpf.RawInstruction, error) {
	return programWith(f, nil, snapLen, loopback)
}

// programWith is program for a frame that must match both f and e; either may be nil.
func programWith(f *Filter, e *Expr, snapLen uint32, loopback bool) ([]bpf.RawInstruction, error) {
	var prologue []bpf.Instruction
	if loopback {
		prologue = []bpf.Instruction{
			bpf.LoadExtension{Num: bpf.ExtType},
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: packetOutgoing, SkipTrue: 1},
			bpf.RetConstant{Val: 0},
		}
	}
	return programFrom(prologue, f, e, snapLen)
}

// programAny is programWith for one socket on every interface: the kernel tells the frame's
// interface type (SKF_AD_HATYPE), and the program keeps Ethernet frames, and loopback frames
// arriving, and drops the rest, frames without an Ethernet header among them (a tunnel's bare IP
// packets), which the filter's offsets and the file's link type do not fit.
func programAny(f *Filter, e *Expr, snapLen uint32) ([]bpf.RawInstruction, error) {
	return programFrom([]bpf.Instruction{
		/* 0 */ bpf.LoadExtension{Num: bpf.ExtLinkLayerType},
		/* 1 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: arphrdEther, SkipTrue: 4}, // → the filter
		/* 2 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: arphrdLoopback, SkipFalse: 2}, // else → drop
		/* 3 */ bpf.LoadExtension{Num: bpf.ExtType},
		/* 4 */ bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: packetOutgoing, SkipTrue: 1}, // → the filter
		/* 5 */ bpf.RetConstant{Val: 0},
	}, f, e, snapLen)
}

func programFrom(prologue []bpf.Instruction, f *Filter, e *Expr, snapLen uint32) ([]bpf.RawInstruction, error) {
	prog := slices.Clone(prologue)
	switch {
	case e != nil:
		x := *e
		if f != nil {
			if err := f.Validate(); err != nil {
				return nil, err
			}
			// One program for both, so the port test and the expression share loads.
			x = Expr{root: join[andExpr](filterNode(*f), e.root)}
		}
		xp, err := x.Program(snapLen)
		if err != nil {
			return nil, err
		}
		prog = append(prog, xp...)
	case f != nil:
		fp, err := f.Program(snapLen)
		if err != nil {
			return nil, err
		}
		prog = append(prog, fp...)
	default:
		prog = append(prog, bpf.RetConstant{Val: snapLen})
	}
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, fmt.Errorf("assemble filter: %w", err)
	}
	return raw, nil
}
