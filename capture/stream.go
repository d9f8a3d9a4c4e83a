package capture

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/reassembly"
)

// Direction is the way bytes flow in a connection.
type Direction uint8

// The two directions of a connection.
const (
	ClientToServer Direction = iota
	ServerToClient
)

func (d Direction) String() string {
	if d == ClientToServer {
		return "client->server"
	}
	return "server->client"
}

// Reverse is the other direction.
func (d Direction) Reverse() Direction { return 1 - d }

// Flow is one TCP connection as the Assembler sees it.
type Flow struct {
	// Client opened the connection; Server accepted it. Without the handshake in the capture
	// the roles are inferred (see AssemblerOptions.ServerPorts).
	Client, Server netip.AddrPort
	// Start is the capture time of the connection's first packet.
	Start time.Time
	// Handshake reports that the first packet was the client's SYN: the capture saw the
	// connection open, so the roles are certain.
	Handshake bool
}

func (f Flow) String() string { return f.Client.String() + " -> " + f.Server.String() }

// EndReason says why a direction of a connection ended.
type EndReason uint8

// The reasons a direction ends.
const (
	// EndFIN: the sender closed its side; every byte before the FIN was delivered or
	// reported as a gap.
	EndFIN EndReason = iota + 1
	// EndRST: either side reset the connection, which ends both directions.
	EndRST
	// EndIdle: no packet for the idle timeout (Flush, FlushOlderThan).
	EndIdle
	// EndFlush: the Assembler was closed with the connection still open.
	EndFlush
)

func (r EndReason) String() string {
	switch r {
	case EndFIN:
		return "fin"
	case EndRST:
		return "rst"
	case EndIdle:
		return "idle"
	case EndFlush:
		return "flush"
	default:
		return fmt.Sprintf("end(%d)", uint8(r))
	}
}

// GapUnknown is the size of the gap a direction starts with when the capture began after the
// connection did: bytes were probably missed, but how many is not known.
const GapUnknown = -1

// StreamHandler receives one connection's reassembled byte streams. For each direction the
// calls come in stream order: zero or more Data and Gap calls, then exactly one End; after
// the End of both directions there are no more calls. A direction that starts mid-stream
// (no SYN seen) begins with Gap(dir, GapUnknown, t). Calls for one connection never overlap.
type StreamHandler interface {
	// Data delivers the next bytes of dir, captured at t. data is only valid during the
	// call: it may alias the captured frame or the Assembler's buffers.
	Data(dir Direction, data []byte, t time.Time)
	// Gap says that missing bytes of dir were never captured: the next Data continues after
	// them. t is the capture time of what follows the gap.
	Gap(dir Direction, missing int, t time.Time)
	// End says that dir is over.
	End(dir Direction, why EndReason, t time.Time)
}

// StreamFactory returns the handler for a new connection, or nil to ignore the connection.
type StreamFactory func(Flow) StreamHandler

// AssemblerOptions tune an Assembler. The zero value gives the defaults.
type AssemblerOptions struct {
	// ServerPorts decide the roles of a connection whose handshake the capture missed: the
	// side using one of these ports is the server. When neither or both sides do, the side
	// with the lower port is (ephemeral ports are high).
	ServerPorts []uint16
	// MaxWait is how long out-of-order data waits for a missing segment (a retransmission,
	// a reordered frame) before the hole is reported as a gap; default 1s. Linux
	// retransmits after at least 200ms, so much less than that turns late segments into gaps.
	MaxWait time.Duration
	// IdleTimeout ends a connection with no packets for this long; default 2m, negative
	// never.
	IdleTimeout time.Duration
	// FlushInterval is how often, in capture time, Feed enforces MaxWait and IdleTimeout;
	// default 100ms. A live capture should also call Flush on a timer, since Feed only runs
	// when packets arrive.
	FlushInterval time.Duration
	// MaxBufferedPagesPerConnection bounds the out-of-order data kept for one connection,
	// in pages of up to 1900 bytes; default 1024 (about 2 MB). At the limit the oldest hole
	// is reported as a gap at once. reassembly checks after queueing a segment, so many
	// small holes followed by large frames can overshoot by a frame per hole (a 64 KiB
	// frame is 35 pages).
	MaxBufferedPagesPerConnection int
	// MaxBufferedPagesTotal bounds the out-of-order data kept for all connections; default
	// 8192 (about 16 MB). Over it, every segment that queues gives up its connection's
	// oldest hole.
	MaxBufferedPagesTotal int
	// MaxConnections bounds the connections tracked at once; packets of further new
	// connections are ignored (and counted in AssemblerStats.Refused). Default 4096.
	MaxConnections int
}

func (o AssemblerOptions) withDefaults() AssemblerOptions {
	if o.MaxWait <= 0 {
		o.MaxWait = time.Second
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = 2 * time.Minute
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = 100 * time.Millisecond
	}
	if o.MaxBufferedPagesPerConnection <= 0 {
		o.MaxBufferedPagesPerConnection = 1024
	}
	if o.MaxBufferedPagesTotal <= 0 {
		o.MaxBufferedPagesTotal = 8192
	}
	if o.MaxConnections <= 0 {
		o.MaxConnections = 4096
	}
	return o
}

// AssemblerStats count what an Assembler did.
type AssemblerStats struct {
	// Frames counts the frames fed.
	Frames uint64
	// Segments counts the TCP segments among them.
	Segments uint64
	// Ignored counts frames that are not TCP over IPv4 or IPv6 (or not whole enough to
	// tell), and IPv4 fragments, which are not reassembled.
	Ignored uint64
	// Connections counts the connections tracked so far; Open those tracked now.
	Connections uint64
	Open        int
	// Refused counts packets dropped because MaxConnections connections were open.
	Refused uint64
}

// Assembler turns captured Ethernet frames into the ordered byte streams of the TCP
// connections in them, with gopacket's reassembly. It does not verify checksums: frames
// captured on the sending side of a veth carry partial ones, and segmentation offload hands
// the capture frames far larger than the MTU. Its memory is bounded by the options.
//
// An Assembler is safe for concurrent use, so Flush can run on a timer while another
// goroutine feeds it; the handlers are called with its lock held and must not call back
// into it.
type Assembler struct {
	mu      sync.Mutex
	opts    AssemblerOptions
	factory StreamFactory
	asm     *reassembly.Assembler

	parser  *gopacket.DecodingLayerParser
	eth     layers.Ethernet
	vlan    layers.Dot1Q
	ip4     layers.IPv4
	ip6     layers.IPv6
	tcp     layers.TCP
	decoded []gopacket.LayerType

	now, lastFlush time.Time // capture time of the newest frame, of the last periodic flush
	closing        bool      // Close is ending the connections
	stats          AssemblerStats
}

// NewAssembler returns an Assembler that calls factory for each new connection.
func NewAssembler(factory StreamFactory, opts AssemblerOptions) *Assembler {
	a := &Assembler{opts: opts.withDefaults(), factory: factory}
	a.asm = reassembly.NewAssembler(reassembly.NewStreamPool(reassemblyFactory{a}))
	a.asm.MaxBufferedPagesPerConnection = a.opts.MaxBufferedPagesPerConnection
	a.asm.MaxBufferedPagesTotal = a.opts.MaxBufferedPagesTotal
	a.parser = gopacket.NewDecodingLayerParser(layers.LayerTypeEthernet, &a.eth, &a.vlan, &a.ip4, &a.ip6, &a.tcp)
	// Stop quietly at the TCP payload, or at any layer that is not on the way to TCP.
	a.parser.IgnoreUnsupported = true
	a.decoded = make([]gopacket.LayerType, 0, 8)
	return a
}

// Feed passes one captured Ethernet frame. Frames that are not TCP are ignored. data may be
// reused once Feed returns.
func (a *Assembler) Feed(data []byte, ci gopacket.CaptureInfo) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stats.Frames++
	netFlow, ok := a.decode(data)
	if !ok {
		a.stats.Ignored++
	} else {
		a.stats.Segments++
		// A fresh context per segment: out-of-order segments keep theirs until delivered.
		a.asm.AssembleWithContext(netFlow, &a.tcp, &segmentContext{ci: ci})
	}
	if ci.Timestamp.After(a.now) {
		a.now = ci.Timestamp
	}
	if a.now.Sub(a.lastFlush) >= a.opts.FlushInterval {
		a.flush(a.now)
	}
}

// decode finds the TCP segment in a frame and its addresses.
func (a *Assembler) decode(data []byte) (gopacket.Flow, bool) {
	// Decoding errors leave the layers decoded before them in a.decoded; only a whole TCP
	// header counts.
	_ = a.parser.DecodeLayers(data, &a.decoded)
	var netFlow gopacket.Flow
	ip, tcp := false, false
	for _, t := range a.decoded {
		switch t {
		case layers.LayerTypeIPv4:
			// Only the first fragment has the TCP header, and fragments are not put back
			// together: TCP segments are not fragmented in practice (PMTU discovery).
			if a.ip4.Flags&layers.IPv4MoreFragments != 0 || a.ip4.FragOffset != 0 {
				return netFlow, false
			}
			// A total length of 0 stands for "the rest of the frame" only in BIG TCP frames,
			// which are over 64 KiB; in a small frame the rest includes the Ethernet padding.
			if binary.BigEndian.Uint16(a.ip4.Contents[2:4]) == 0 && len(a.ip4.Contents)+len(a.ip4.Payload) <= 0xffff {
				return netFlow, false
			}
			netFlow, ip = a.ip4.NetworkFlow(), true
		case layers.LayerTypeIPv6:
			if a.ip6.Length == 0 && a.ip6.HopByHop == nil && len(a.ip6.Payload) <= 0xffff {
				return netFlow, false
			}
			netFlow, ip = a.ip6.NetworkFlow(), true
		case layers.LayerTypeTCP:
			tcp = true
		}
	}
	return netFlow, ip && tcp
}

// Flush does what Feed does every FlushInterval, at capture time now: holes older than
// MaxWait are reported as gaps and connections idle for IdleTimeout end. Call it on a timer
// in a live capture, so that gaps and ends are reported when the traffic stops.
func (a *Assembler) Flush(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.flush(now)
}

func (a *Assembler) flush(now time.Time) {
	a.lastFlush = now
	opt := reassembly.FlushOptions{T: now.Add(-a.opts.MaxWait)}
	if a.opts.IdleTimeout > 0 {
		opt.TC = now.Add(-a.opts.IdleTimeout)
	}
	a.asm.FlushWithOptions(opt)
}

// FlushOlderThan reports the holes queued before t as gaps and ends the connections that
// have had no packet since t (EndIdle).
func (a *Assembler) FlushOlderThan(t time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.asm.FlushCloseOlderThan(t)
}

// Close delivers everything still buffered, reporting the holes as gaps, and ends every
// connection (EndFlush). The Assembler can be fed again afterwards.
func (a *Assembler) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closing = true
	defer func() { a.closing = false }()
	a.asm.FlushAll()
}

// Stats returns the counts so far.
func (a *Assembler) Stats() AssemblerStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stats
}

func (a *Assembler) isServerPort(p uint16) bool { return slices.Contains(a.opts.ServerPorts, p) }

// segmentContext carries a segment's CaptureInfo through the reassembly.
type segmentContext struct{ ci gopacket.CaptureInfo }

func (c *segmentContext) GetCaptureInfo() gopacket.CaptureInfo { return c.ci }

// reassemblyFactory adapts the Assembler to reassembly.StreamFactory.
type reassemblyFactory struct{ a *Assembler }

func (f reassemblyFactory) New(netFlow, tcpFlow gopacket.Flow, tcp *layers.TCP, ac reassembly.AssemblerContext) reassembly.Stream {
	a := f.a
	// Neither a lone ACK nor the FIN or RST of a connection already gone starts one: they
	// carry nothing, and the last ACK after both FINs would otherwise open a new, empty
	// connection. Returning nil keeps the pool from tracking it.
	if !tcp.SYN && len(tcp.Payload) == 0 {
		return nil
	}
	if a.stats.Open >= a.opts.MaxConnections {
		a.stats.Refused++
		return nil
	}
	src, dst := flowAddrPort(netFlow.Src(), tcpFlow.Src()), flowAddrPort(netFlow.Dst(), tcpFlow.Dst())
	firstIsClient := true
	switch {
	case tcp.SYN && !tcp.ACK:
	case tcp.SYN: // SYN-ACK: the server answering
		firstIsClient = false
	case a.isServerPort(dst.Port()) != a.isServerPort(src.Port()):
		firstIsClient = a.isServerPort(dst.Port())
	case src.Port() != dst.Port():
		firstIsClient = src.Port() > dst.Port()
	}
	flow := Flow{Client: src, Server: dst, Start: ac.GetCaptureInfo().Timestamp, Handshake: tcp.SYN && !tcp.ACK}
	if !firstIsClient {
		flow.Client, flow.Server = dst, src
	}
	a.stats.Connections++
	a.stats.Open++
	c := &asmConn{a: a, flow: flow, firstIsClient: firstIsClient, last: flow.Start}
	c.h = a.factory(flow)
	if c.h == nil {
		// Keep tracking the connection so the factory is asked once, not for every packet.
		c.done = true
	}
	return c
}

func flowAddrPort(ip, port gopacket.Endpoint) netip.AddrPort {
	addr, _ := netip.AddrFromSlice(ip.Raw())
	var p uint16
	if raw := port.Raw(); len(raw) == 2 {
		p = uint16(raw[0])<<8 | uint16(raw[1])
	}
	return netip.AddrPortFrom(addr, p)
}

// invalidSeq is reassembly's sequence of a half connection that has not started yet.
const invalidSeq = reassembly.Sequence(-1)

// asmConn is one connection: it adapts reassembly.Stream to a StreamHandler.
type asmConn struct {
	a             *Assembler
	flow          Flow
	h             StreamHandler
	firstIsClient bool // the first packet went from client to server

	started [2]bool                // the direction has had its first packet
	midway  [2]bool                // ... and it was not a SYN: its Data starts mid-stream
	told    [2]bool                // the GapUnknown of a midway direction was delivered
	next    [2]reassembly.Sequence // sequence of the next byte to deliver
	maxEnd  [2]reassembly.Sequence // end of the furthest segment seen
	ended   [2]bool
	done    bool // both directions ended (or the connection is ignored)
	closed  bool // ReassemblyComplete ran
	last    time.Time
}

func (c *asmConn) dir(d reassembly.TCPFlowDirection) Direction {
	if (d == reassembly.TCPDirClientToServer) == c.firstIsClient {
		return ClientToServer
	}
	return ServerToClient
}

func (c *asmConn) Accept(tcp *layers.TCP, ci gopacket.CaptureInfo, rdir reassembly.TCPFlowDirection, nextSeq reassembly.Sequence, start *bool, _ reassembly.AssemblerContext) bool {
	if c.done {
		return false
	}
	d := c.dir(rdir)
	if ci.Timestamp.After(c.last) {
		c.last = ci.Timestamp
	}
	seq := reassembly.Sequence(tcp.Seq)
	if nextSeq == invalidSeq && !c.started[d] {
		c.started[d] = true
		// A capture that starts mid-connection sees no SYN: start at the first segment seen
		// instead of waiting forever for one. Whatever came before it is lost. A direction
		// that starts with a reset (a refused connection) has nothing to miss.
		c.midway[d] = !tcp.SYN && !tcp.RST
		*start = true
		c.next[d], c.maxEnd[d] = seq, seq
		if tcp.SYN {
			c.next[d], c.maxEnd[d] = seq.Add(1), seq.Add(1)
		}
	}
	if end := seq.Add(len(tcp.Payload)); c.maxEnd[d].Difference(end) > 0 {
		c.maxEnd[d] = end
	}
	if tcp.RST && (c.ended[d] || c.next[d].Difference(seq) >= 0) {
		// A reset ends both directions at once. reassembly only takes one at exactly the
		// next sequence and only closes its sender's half; one after a hole, or from a side
		// that already sent its FIN, would leave the other half open until it idles out.
		// What was not delivered by now never will be: report it as gaps.
		c.reset(ci.Timestamp, d, seq)
	}
	return true
}

func (c *asmConn) reset(t time.Time, from Direction, seq reassembly.Sequence) {
	if !c.ended[from] && c.maxEnd[from].Difference(seq) > 0 {
		c.maxEnd[from] = seq
	}
	for _, d := range []Direction{ClientToServer, ServerToClient} {
		if c.ended[d] {
			continue
		}
		c.tell(d, t)
		if missing := c.next[d].Difference(c.maxEnd[d]); missing > 0 && c.started[d] {
			c.h.Gap(d, missing, t)
		}
		c.end(d, EndRST, t)
	}
}

// tell delivers the GapUnknown a midway direction starts with, before anything else.
func (c *asmConn) tell(d Direction, t time.Time) {
	if c.midway[d] && !c.told[d] {
		c.told[d] = true
		c.h.Gap(d, GapUnknown, t)
	}
}

func (c *asmConn) end(d Direction, why EndReason, t time.Time) {
	c.ended[d] = true
	c.h.End(d, why, t)
	if c.ended[d.Reverse()] {
		c.done = true
	}
}

func (c *asmConn) ReassembledSG(sg reassembly.ScatterGather, ac reassembly.AssemblerContext) {
	rdir, _, end, skip := sg.Info()
	d := c.dir(rdir)
	if c.done || c.ended[d] {
		return
	}
	length, _ := sg.Lengths()
	t := c.last
	if ac != nil {
		t = ac.GetCaptureInfo().Timestamp
	}
	if length > 0 {
		t = sg.CaptureInfo(0).Timestamp
	}
	c.tell(d, t)
	if skip > 0 {
		c.h.Gap(d, skip, t)
		c.next[d] = c.next[d].Add(skip)
	}
	if length > 0 {
		data := sg.Fetch(length)
		// Deliver each run of bytes with its own capture time: after a hole is filled, one
		// call carries segments captured at different times.
		for off := 0; off < length; {
			ts := sg.CaptureInfo(off).Timestamp
			n := runEnd(sg, off, length, ts)
			c.h.Data(d, data[off:n], ts)
			off = n
		}
		c.next[d] = c.next[d].Add(length)
		t = sg.CaptureInfo(length - 1).Timestamp
	}
	if end {
		c.end(d, EndFIN, t)
	}
}

// runEnd returns the end of the run of bytes from off that share the capture time ts. The
// containers of a ScatterGather are in sequence order, so a bisection finds the run's end
// when capture times do not repeat across runs (when they do, the bytes get a neighbouring
// run's time, which is harmless).
func runEnd(sg reassembly.ScatterGather, off, length int, ts time.Time) int {
	if sg.CaptureInfo(length - 1).Timestamp.Equal(ts) {
		return length
	}
	lo, hi := off, length-1 // ts at lo, another time at hi
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		if sg.CaptureInfo(mid).Timestamp.Equal(ts) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi
}

func (c *asmConn) ReassemblyComplete(_ reassembly.AssemblerContext) bool {
	if !c.closed {
		c.closed = true
		c.a.stats.Open--
	}
	why := EndIdle
	if c.a.closing {
		why = EndFlush
	}
	for _, d := range []Direction{ClientToServer, ServerToClient} {
		if !c.done && !c.ended[d] {
			c.tell(d, c.last)
			c.end(d, why, c.last)
		}
	}
	// Remove the connection from the pool: packets that still come (the last ACK) do not
	// start a new one, see reassemblyFactory.New.
	return true
}
