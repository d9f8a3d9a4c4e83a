package capture

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
)

func netipMust(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// fuzzConns are the connections FuzzAssemblerFeed's segments belong to; the second one's
// sequence numbers wrap.
var fuzzConns = []struct {
	client, server netip.AddrPort
	isn            [2]uint32 // client's, server's
}{
	{netipMust("10.1.0.2:40000"), netipMust("10.1.0.1:80"), [2]uint32{1000, 5000}},
	{netipMust("10.1.0.3:40001"), netipMust("10.1.0.1:80"), [2]uint32{0xffffff00, 0xfffffff0}},
	{netipMust("[fd01::2]:40002"), netipMust("[fd01::1]:443"), [2]uint32{7, 9}},
}

// Segment flags in FuzzAssemblerFeed's encoding.
const (
	fzSYN = 1 << iota
	fzACK
	fzFIN
	fzRST
	fzServer // sent by the server
	fzBadChecksum
	fzZeroLength
	fzBig // a 64 KiB payload
)

// fuzzSeg encodes a segment: header byte (bits 0-1 op 0, bits 2-3 connection, bits 4-7
// milliseconds to advance), flags, sequence offset from the ISN (2 bytes), payload length
// in units of 8 bytes.
func fuzzSeg(conn int, flags byte, off uint16, n8 byte) []byte {
	return []byte{byte(conn)<<2 | 1<<4, flags, byte(off >> 8), byte(off), n8}
}

// fuzzRaw encodes a raw frame (op 1) and fuzzFlush a Flush (op 2) that far ahead, in 100ms.
func fuzzRaw(b []byte) []byte       { return append([]byte{1, byte(len(b))}, b...) }
func fuzzFlush(in100ms byte) []byte { return []byte{2, in100ms} }

func FuzzAssemblerFeed(f *testing.F) {
	cat := func(parts ...[]byte) (out []byte) {
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	handshake := cat(fuzzSeg(0, fzSYN, 0, 0), fuzzSeg(0, fzSYN|fzACK|fzServer, 0, 0), fuzzSeg(0, fzACK, 1, 0))
	f.Add(cat(handshake, fuzzSeg(0, fzACK, 1, 4), fuzzSeg(0, fzACK|fzServer, 1, 2),
		fuzzSeg(0, fzACK|fzFIN, 33, 0), fuzzSeg(0, fzACK|fzFIN|fzServer, 17, 0)))
	f.Add(cat(handshake, fuzzSeg(0, fzACK, 17, 2), fuzzSeg(0, fzACK, 1, 2), fuzzSeg(0, fzACK, 1, 4),
		fuzzFlush(20), fuzzSeg(0, fzACK|fzRST|fzServer, 1, 0)))
	f.Add(cat(fuzzSeg(1, fzACK|fzServer, 0, 3), fuzzSeg(1, fzACK, 0, 200), fuzzSeg(1, fzACK|fzBig, 1600, 0),
		fuzzSeg(2, fzACK|fzZeroLength|fzBadChecksum|fzBig, 0, 0), fuzzFlush(255)))
	f.Add(cat(handshake, fuzzSeg(2, fzSYN, 0, 0), fuzzRaw(segFrame(f, tcpSeg{
		src: fuzzConns[2].client, dst: fuzzConns[2].server, seq: 8, hasAck: true, payload: []byte("raw"),
	})), fuzzSeg(2, fzACK, 4, 1)))
	f.Fuzz(func(t *testing.T, in []byte) {
		const perConn, total = 8, 16
		var r streamRecorder
		a := NewAssembler(r.factory, AssemblerOptions{
			MaxBufferedPagesPerConnection: perConn, MaxBufferedPagesTotal: total, MaxConnections: 8,
			MaxWait: 300 * time.Millisecond, IdleTimeout: 5 * time.Second,
		})
		now := streamT0
		fed := map[netip.AddrPort]int{} // payload bytes fed, by client address
		raw := false
		next := func() byte {
			if len(in) == 0 {
				return 0
			}
			b := in[0]
			in = in[1:]
			return b
		}
		for len(in) > 0 {
			h := next()
			now = now.Add(time.Duration(h>>4) * time.Millisecond)
			switch h & 3 {
			case 0:
				c := fuzzConns[int(h>>2&3)%len(fuzzConns)]
				flags, off := next(), uint32(next())<<8|uint32(next())
				n := int(next()) * 8
				if flags&fzBig != 0 {
					n = 65000
				}
				s := tcpSeg{src: c.client, dst: c.server, seq: c.isn[0] + off, ack: c.isn[1],
					syn: flags&fzSYN != 0, hasAck: flags&fzACK != 0, fin: flags&fzFIN != 0, rst: flags&fzRST != 0,
					badChecksum: flags&fzBadChecksum != 0, zeroIPLength: flags&fzZeroLength != 0}
				if flags&fzServer != 0 {
					s.src, s.dst, s.seq, s.ack = c.server, c.client, c.isn[1]+off, c.isn[0]
				}
				s.payload = []byte(strings.Repeat("0123456789abcdef", n/16+1)[:n])
				fed[c.client] += n
				fr := segFrame(t, s)
				a.Feed(fr, gopacket.CaptureInfo{Timestamp: now, CaptureLength: len(fr), Length: len(fr)})
			case 1:
				n := min(int(next()), len(in))
				a.Feed(in[:n], gopacket.CaptureInfo{Timestamp: now})
				in = in[n:]
				raw = true
			case 2:
				a.Flush(now.Add(time.Duration(next()) * 100 * time.Millisecond))
			case 3:
				now = now.Add(time.Duration(next()) * 10 * time.Millisecond)
			}
			st := a.Stats()
			if st.Open > 8 {
				t.Fatalf("%d connections open", st.Open)
			}
			// reassembly checks its limits after queueing a segment and then gives up the
			// oldest hole, so a connection overshoots by at most a frame per hole: a 64 KiB
			// frame is 35 pages.
			if used := pagesUsed(t, a); used > 35*(perConn+1)*max(st.Open, 1) {
				t.Fatalf("%d pages buffered for %d connections", used, st.Open)
			}
		}
		a.Close()
		if st := a.Stats(); st.Open != 0 {
			t.Fatalf("%d connections open after Close", st.Open)
		}
		if used := pagesUsed(t, a); used != 0 {
			t.Fatalf("%d pages still used after Close", used)
		}
		for _, c := range r.conns {
			if len(c.problems) > 0 {
				t.Fatalf("%v: %v", c.flow, c.problems)
			}
			if !c.ended[0] || !c.ended[1] {
				t.Fatalf("%v not ended after Close", c.flow)
			}
			n := 0
			for _, e := range c.events {
				n += len(e.data)
			}
			if !raw && n > fed[c.flow.Client]+fed[c.flow.Server] {
				t.Fatalf("%v: %d bytes delivered, %d fed", c.flow, n, fed[c.flow.Client]+fed[c.flow.Server])
			}
		}
	})
}

// pagesUsed reads how many pages reassembly holds from its Dump.
func pagesUsed(t *testing.T, a *Assembler) int {
	var n int
	if _, err := fmt.Sscanf(a.asm.Dump(), "pageCache: used: %d:", &n); err != nil {
		t.Fatalf("parse %q: %v", a.asm.Dump(), err)
	}
	return n
}
