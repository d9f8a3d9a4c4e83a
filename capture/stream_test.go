package capture

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

var streamT0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// tcpSeg is one TCP segment to turn into a frame.
type tcpSeg struct {
	src, dst                    netip.AddrPort
	seq, ack                    uint32
	syn, hasAck, fin, rst, push bool
	payload                     []byte
	// badChecksum and zeroIPLength make the frame look like one captured on the sending
	// side with offload: partial checksum, and (IPv4 over 64 KiB) no total length.
	badChecksum, zeroIPLength bool
}

// segFrame serializes s as an Ethernet frame.
func segFrame(t testing.TB, s tcpSeg) []byte {
	t.Helper()
	eth := &layers.Ethernet{
		SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2},
	}
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(s.src.Port()), DstPort: layers.TCPPort(s.dst.Port()),
		Seq: s.seq, Ack: s.ack, SYN: s.syn, ACK: s.hasAck, FIN: s.fin, RST: s.rst, PSH: s.push,
		Window: 65535,
	}
	var ip gopacket.SerializableLayer
	if s.src.Addr().Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip4 := &layers.IPv4{
			Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP,
			SrcIP: s.src.Addr().AsSlice(), DstIP: s.dst.Addr().AsSlice(),
		}
		if err := tcp.SetNetworkLayerForChecksum(ip4); err != nil {
			t.Fatal(err)
		}
		ip = ip4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{
			Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: s.src.Addr().AsSlice(), DstIP: s.dst.Addr().AsSlice(),
		}
		if err := tcp.SetNetworkLayerForChecksum(ip6); err != nil {
			t.Fatal(err)
		}
		ip = ip6
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, eth, ip, tcp, gopacket.Payload(s.payload)); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	const ethLen = 14
	tcpOff := ethLen + 20
	if !s.src.Addr().Is4() {
		tcpOff = ethLen + 40
	}
	if s.badChecksum {
		b[tcpOff+16] ^= 0xff
	}
	if s.zeroIPLength {
		if s.src.Addr().Is4() {
			binary.BigEndian.PutUint16(b[ethLen+2:], 0)
		} else {
			binary.BigEndian.PutUint16(b[ethLen+4:], 0)
		}
	}
	return b
}

// tcpScript scripts one TCP connection's segments, keeping the sequence numbers.
type tcpScript struct {
	client, server netip.AddrPort
	cseq, sseq     uint32 // next sequence number of each side
}

func newTCPScript(client, server string, cISN, sISN uint32) *tcpScript {
	return &tcpScript{client: netip.MustParseAddrPort(client), server: netip.MustParseAddrPort(server), cseq: cISN, sseq: sISN}
}

func (c *tcpScript) ends(fromClient bool) (src, dst netip.AddrPort, seq, ack *uint32) {
	if fromClient {
		return c.client, c.server, &c.cseq, &c.sseq
	}
	return c.server, c.client, &c.sseq, &c.cseq
}

func (c *tcpScript) syn() tcpSeg {
	s := tcpSeg{src: c.client, dst: c.server, seq: c.cseq, syn: true}
	c.cseq++
	return s
}

func (c *tcpScript) synAck() tcpSeg {
	s := tcpSeg{src: c.server, dst: c.client, seq: c.sseq, ack: c.cseq, syn: true, hasAck: true}
	c.sseq++
	return s
}

func (c *tcpScript) ack(fromClient bool) tcpSeg {
	src, dst, seq, ack := c.ends(fromClient)
	return tcpSeg{src: src, dst: dst, seq: *seq, ack: *ack, hasAck: true}
}

func (c *tcpScript) handshake() []tcpSeg { return []tcpSeg{c.syn(), c.synAck(), c.ack(true)} }

// send returns the segments carrying data, cut every size bytes (0: one segment).
func (c *tcpScript) send(fromClient bool, data string, size int) []tcpSeg {
	src, dst, seq, ack := c.ends(fromClient)
	var out []tcpSeg
	for len(data) > 0 {
		n := len(data)
		if size > 0 {
			n = min(n, size)
		}
		out = append(out, tcpSeg{src: src, dst: dst, seq: *seq, ack: *ack, hasAck: true, push: true, payload: []byte(data[:n])})
		*seq += uint32(n)
		data = data[n:]
	}
	return out
}

func (c *tcpScript) fin(fromClient bool) tcpSeg {
	src, dst, seq, ack := c.ends(fromClient)
	s := tcpSeg{src: src, dst: dst, seq: *seq, ack: *ack, hasAck: true, fin: true}
	*seq++
	return s
}

func (c *tcpScript) rst(fromClient bool) tcpSeg {
	src, dst, seq, ack := c.ends(fromClient)
	return tcpSeg{src: src, dst: dst, seq: *seq, ack: *ack, hasAck: true, rst: true}
}

// segFeeder gives frames increasing capture times.
type segFeeder struct {
	t   testing.TB
	a   *Assembler
	now time.Time
}

func newSegFeeder(t testing.TB, f StreamFactory, opts AssemblerOptions) *segFeeder {
	return &segFeeder{t: t, a: NewAssembler(f, opts), now: streamT0}
}

func (f *segFeeder) feed(segs ...tcpSeg) {
	f.t.Helper()
	for _, s := range segs {
		f.now = f.now.Add(time.Millisecond)
		b := segFrame(f.t, s)
		f.a.Feed(b, gopacket.CaptureInfo{Timestamp: f.now, CaptureLength: len(b), Length: len(b)})
	}
}

func (f *segFeeder) wait(d time.Duration) { f.now = f.now.Add(d) }

// streamRecorder is a StreamHandler factory that keeps every event and checks the call protocol.
type streamRecorder struct {
	conns []*recordedConn
}

type streamEvent struct {
	dir  Direction
	kind string // data, gap, end
	data string
	n    int
	why  EndReason
	t    time.Time
}

type recordedConn struct {
	flow     Flow
	events   []streamEvent
	ended    [2]bool
	problems []string
}

func (r *streamRecorder) factory(f Flow) StreamHandler {
	c := &recordedConn{flow: f}
	r.conns = append(r.conns, c)
	return c
}

func (c *recordedConn) check(dir Direction, what string) {
	if c.ended[dir] {
		c.problems = append(c.problems, fmt.Sprintf("%s on %s after its End", what, dir))
	}
}

func (c *recordedConn) Data(dir Direction, data []byte, t time.Time) {
	c.check(dir, "Data")
	if len(data) == 0 {
		c.problems = append(c.problems, "empty Data")
	}
	c.events = append(c.events, streamEvent{dir: dir, kind: "data", data: string(data), t: t})
}

func (c *recordedConn) Gap(dir Direction, n int, t time.Time) {
	c.check(dir, "Gap")
	if n == GapUnknown {
		for _, e := range c.events {
			if e.dir == dir {
				c.problems = append(c.problems, fmt.Sprintf("GapUnknown on %s after other events", dir))
			}
		}
	} else if n <= 0 {
		c.problems = append(c.problems, fmt.Sprintf("Gap of %d", n))
	}
	c.events = append(c.events, streamEvent{dir: dir, kind: "gap", n: n, t: t})
}

func (c *recordedConn) End(dir Direction, why EndReason, t time.Time) {
	c.check(dir, "End")
	c.ended[dir] = true
	c.events = append(c.events, streamEvent{dir: dir, kind: "end", why: why, t: t})
}

// stream renders one direction: the bytes, with <gap N> and <end reason> marks.
func (c *recordedConn) stream(dir Direction) string {
	var b strings.Builder
	for _, e := range c.events {
		if e.dir != dir {
			continue
		}
		switch e.kind {
		case "data":
			b.WriteString(e.data)
		case "gap":
			fmt.Fprintf(&b, "<gap %d>", e.n)
		case "end":
			fmt.Fprintf(&b, "<%s>", e.why)
		}
	}
	return b.String()
}

func (r *streamRecorder) only(t *testing.T) *recordedConn {
	t.Helper()
	if len(r.conns) != 1 {
		t.Fatalf("got %d connections, want 1", len(r.conns))
	}
	c := r.conns[0]
	if len(c.problems) > 0 {
		t.Fatalf("handler calls out of protocol: %v", c.problems)
	}
	return c
}

func wantRecorded(t *testing.T, c *recordedConn, c2s, s2c string) {
	t.Helper()
	if got := c.stream(ClientToServer); got != c2s {
		t.Errorf("client->server:\n got %q\nwant %q", shorten(got), shorten(c2s))
	}
	if got := c.stream(ServerToClient); got != s2c {
		t.Errorf("server->client:\n got %q\nwant %q", shorten(got), shorten(s2c))
	}
}

func shorten(s string) string {
	if len(s) > 300 {
		return fmt.Sprintf("%s...(%d bytes)...%s", s[:150], len(s)-300, s[len(s)-150:])
	}
	return s
}

func TestAssemblerInOrder(t *testing.T) {
	for _, tc := range []struct{ name, client, server string }{
		{"ipv4", "10.0.0.2:40000", "10.0.0.1:80"},
		{"ipv6", "[fd00::2]:40000", "[fd00::1]:80"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r streamRecorder
			f := newSegFeeder(t, r.factory, AssemblerOptions{})
			c := newTCPScript(tc.client, tc.server, 1000, 0xfffffff0) // the server's sequence wraps
			f.feed(c.handshake()...)
			f.feed(c.send(true, "hello ", 0)...)
			f.feed(c.send(true, "world", 0)...)
			f.feed(c.ack(false))
			f.feed(c.send(false, "response across the wrap", 4)...)
			f.feed(c.fin(true), c.fin(false), c.ack(true))
			rc := r.only(t)
			if rc.flow.Client.String() != tc.client || rc.flow.Server.String() != tc.server || !rc.flow.Handshake {
				t.Errorf("flow %v handshake %v", rc.flow, rc.flow.Handshake)
			}
			if !rc.flow.Start.Equal(streamT0.Add(time.Millisecond)) {
				t.Errorf("flow start %v", rc.flow.Start)
			}
			wantRecorded(t, rc, "hello world<fin>", "response across the wrap<fin>")
			st := f.a.Stats()
			// The last ACK after both FINs must not open a new connection.
			if st.Connections != 1 || st.Open != 0 || st.Ignored != 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func TestAssemblerReorderedAndDuplicated(t *testing.T) {
	var r streamRecorder
	f := newSegFeeder(t, r.factory, AssemblerOptions{})
	c := newTCPScript("10.0.0.2:40000", "10.0.0.1:80", 1, 1)
	f.feed(c.handshake()...)
	s := c.send(true, "aaaabbbbccccdddd", 4)
	f.feed(s[0], s[2], s[1]) // reordered
	f.feed(s[1], s[0])       // retransmitted
	// A retransmission that overlaps what was delivered and what is new.
	overlap := tcpSeg{src: s[2].src, dst: s[2].dst, seq: s[2].seq + 2, ack: s[2].ack, hasAck: true, payload: []byte("ccdd")}
	f.feed(overlap, s[3], s[3])
	f.feed(c.fin(true), c.fin(false))
	wantRecorded(t, r.only(t), "aaaabbbbccccdddd<fin>", "<fin>")
}

func TestAssemblerMissingSegment(t *testing.T) {
	var r streamRecorder
	f := newSegFeeder(t, r.factory, AssemblerOptions{MaxWait: 500 * time.Millisecond})
	c := newTCPScript("10.0.0.2:40000", "10.0.0.1:80", 1, 1)
	f.feed(c.handshake()...)
	s := c.send(true, "first-lost-after", 6) // "first-", "lost-a", "fter"
	f.feed(s[0], s[2])
	rc := r.only(t)
	if got := rc.stream(ClientToServer); got != "first-" {
		t.Fatalf("before MaxWait: %q", got)
	}
	// The hole waits for a retransmission for MaxWait, then it is a gap.
	f.a.Flush(f.now.Add(400 * time.Millisecond))
	if got := rc.stream(ClientToServer); got != "first-" {
		t.Fatalf("within MaxWait: %q", got)
	}
	f.a.Flush(f.now.Add(600 * time.Millisecond))
	if got := rc.stream(ClientToServer); got != "first-<gap 6>fter" {
		t.Fatalf("after MaxWait: %q", got)
	}
	// The retransmission comes too late: it is not delivered again.
	f.wait(time.Second)
	f.feed(s[1])
	f.feed(c.send(true, "!", 0)...)
	f.feed(c.fin(true), c.fin(false))
	wantRecorded(t, rc, "first-<gap 6>fter!<fin>", "<fin>")
	var gapAt, afterAt time.Time
	for _, e := range rc.events {
		if e.kind == "gap" {
			gapAt = e.t
		}
		if e.data == "fter" {
			afterAt = e.t
		}
	}
	if !gapAt.Equal(afterAt) || !afterAt.Equal(streamT0.Add(5*time.Millisecond)) {
		t.Errorf("gap at %v, bytes after it at %v: want both at the capture time of those bytes", gapAt, afterAt)
	}
}

func TestAssemblerMissingSegmentBeforeFIN(t *testing.T) {
	var r streamRecorder
	f := newSegFeeder(t, r.factory, AssemblerOptions{})
	c := newTCPScript("10.0.0.2:40000", "10.0.0.1:80", 1, 1)
	f.feed(c.handshake()...)
	s := c.send(false, "abcdefgh", 4)
	f.feed(s[1], c.fin(false)) // the first segment and the FIN after the hole
	f.feed(c.fin(true))
	rc := r.only(t)
	if got := rc.stream(ServerToClient); got != "" {
		t.Fatalf("before the flush: %q", got)
	}
	f.wait(2 * time.Second)
	f.feed(c.ack(true)) // a later packet runs the periodic flush
	wantRecorded(t, rc, "<fin>", "<gap 4>efgh<fin>")
}

func TestAssemblerPageLimitReportsGapEarly(t *testing.T) {
	var r streamRecorder
	f := newSegFeeder(t, r.factory, AssemblerOptions{MaxBufferedPagesPerConnection: 4, MaxWait: time.Hour})
	c := newTCPScript("10.0.0.2:40000", "10.0.0.1:80", 1, 1)
	f.feed(c.handshake()...)
	s := c.send(true, strings.Repeat("x", 100)+strings.Repeat("y", 1000), 100)
	f.feed(s[1:]...) // the first segment never comes; ten more wait for it
	got := r.only(t).stream(ClientToServer)
	if !strings.HasPrefix(got, "<gap 100>y") {
		t.Fatalf("with the buffer full the hole should be given up at once, got %q", got)
	}
}

func TestAssemblerMidConnection(t *testing.T) {
	t.Run("ephemeral port", func(t *testing.T) {
		var r streamRecorder
		f := newSegFeeder(t, r.factory, AssemblerOptions{})
		c := newTCPScript("10.0.0.2:40000", "10.0.0.1:8080", 5000, 9000)
		// The capture starts with the server's answer to a request it missed.
		f.feed(c.send(false, "HTTP/1.1 200 OK\r\n", 0)...)
		f.feed(c.send(true, "GET / HTTP/1.1\r\n", 0)...)
		f.feed(c.fin(true), c.fin(false))
		rc := r.only(t)
		if rc.flow.Client.Port() != 40000 || rc.flow.Handshake {
			t.Errorf("flow %v handshake %v: the higher port should be the client", rc.flow, rc.flow.Handshake)
		}
		wantRecorded(t, rc, "<gap -1>GET / HTTP/1.1\r\n<fin>", "<gap -1>HTTP/1.1 200 OK\r\n<fin>")
	})
	t.Run("server ports", func(t *testing.T) {
		var r streamRecorder
		f := newSegFeeder(t, r.factory, AssemblerOptions{ServerPorts: []uint16{50000}})
		c := newTCPScript("10.0.0.2:40000", "10.0.0.1:50000", 5000, 9000)
		f.feed(c.send(true, "ping", 0)...)
		rc := r.only(t)
		if rc.flow.Server.Port() != 50000 {
			t.Errorf("flow %v: port 50000 is a server port", rc.flow)
		}
	})
	t.Run("syn-ack first", func(t *testing.T) {
		var r streamRecorder
		f := newSegFeeder(t, r.factory, AssemblerOptions{})
		c := newTCPScript("10.0.0.2:80", "10.0.0.1:40000", 5000, 9000) // odd ports: the SYN-ACK decides
		c.syn()
		f.feed(c.synAck(), c.ack(true))
		f.feed(c.send(true, "hi", 0)...)
		rc := r.only(t)
		if rc.flow.Client.Port() != 80 {
			t.Errorf("flow %v: the SYN-ACK's sender is the server", rc.flow)
		}
		// The client's SYN was missed, so its stream may have started earlier.
		if got := rc.stream(ClientToServer); got != "<gap -1>hi" {
			t.Errorf("client->server %q", got)
		}
	})
}

func TestAssemblerReset(t *testing.T) {
	t.Run("in order", func(t *testing.T) {
		var r streamRecorder
		f := newSegFeeder(t, r.factory, AssemblerOptions{})
		c := newTCPScript("10.0.0.2:40000", "10.0.0.1:80", 1, 1)
		f.feed(c.handshake()...)
		f.feed(c.send(true, "req", 0)...)
		f.feed(c.rst(false))
		f.feed(c.send(true, "late", 0)...)
		rc := r.only(t)
		wantRecorded(t, rc, "req<rst>", "<rst>")
	})
	t.Run("after a hole", func(t *testing.T) {
		var r streamRecorder
		f := newSegFeeder(t, r.factory, AssemblerOptions{})
		c := newTCPScript("10.0.0.2:40000", "10.0.0.1:80", 1, 1)
		f.feed(c.handshake()...)
		req := c.send(true, "0123456789", 5)
		f.feed(req[1])
		resp := c.send(false, "abc", 0)
		f.feed(resp...)
		f.feed(c.rst(true)) // at the client's next sequence, beyond its hole
		wantRecorded(t, r.only(t), "<gap 10><rst>", "abc<rst>")
	})
	t.Run("refused", func(t *testing.T) {
		var r streamRecorder
		f := newSegFeeder(t, r.factory, AssemblerOptions{})
		c := newTCPScript("10.0.0.2:40000", "10.0.0.1:80", 1, 1)
		f.feed(c.syn())
		f.feed(tcpSeg{src: c.server, dst: c.client, ack: c.cseq, hasAck: true, rst: true})
		wantRecorded(t, r.only(t), "<rst>", "<rst>")
	})
	t.Run("after FIN", func(t *testing.T) {
		var r streamRecorder
		f := newSegFeeder(t, r.factory, AssemblerOptions{})
		c := newTCPScript("10.0.0.2:40000", "10.0.0.1:80", 1, 1)
		f.feed(c.handshake()...)
		f.feed(c.fin(true))
		f.feed(c.send(false, "more", 0)...)
		f.feed(c.rst(true)) // the client had closed; the reset ends the server's side too
		wantRecorded(t, r.only(t), "<fin>", "more<rst>")
		if st := f.a.Stats(); st.Open != 1 {
			t.Errorf("open %d: reassembly keeps the connection until it idles out", st.Open)
		}
	})
}

func TestAssemblerInterleaved(t *testing.T) {
	var r streamRecorder
	f := newSegFeeder(t, r.factory, AssemblerOptions{})
	a := newTCPScript("10.0.0.2:40000", "10.0.0.1:80", 100, 200)
	b := newTCPScript("10.0.0.3:40000", "10.0.0.1:80", 300, 400)
	ha, hb := a.handshake(), b.handshake()
	for i := range ha {
		f.feed(ha[i], hb[i])
	}
	sa, sb := a.send(true, "aaaaaaaaaa", 3), b.send(true, "bbbbbbbbbb", 4)
	for i := range max(len(sa), len(sb)) {
		if i < len(sa) {
			f.feed(sa[i])
		}
		if i < len(sb) {
			f.feed(sb[i])
		}
	}
	f.feed(b.send(false, "B", 0)...)
	f.feed(a.send(false, "A", 0)...)
	f.feed(a.fin(true), b.fin(true), b.fin(false), a.fin(false))
	if len(r.conns) != 2 {
		t.Fatalf("%d connections", len(r.conns))
	}
	for _, rc := range r.conns {
		if len(rc.problems) > 0 {
			t.Fatal(rc.problems)
		}
		switch rc.flow.Client.Addr().String() {
		case "10.0.0.2":
			wantRecorded(t, rc, "aaaaaaaaaa<fin>", "A<fin>")
		case "10.0.0.3":
			wantRecorded(t, rc, "bbbbbbbbbb<fin>", "B<fin>")
		default:
			t.Errorf("flow %v", rc.flow)
		}
	}
}

func TestAssemblerIdleAndClose(t *testing.T) {
	var r streamRecorder
	f := newSegFeeder(t, r.factory, AssemblerOptions{IdleTimeout: 10 * time.Second})
	idle := newTCPScript("10.0.0.2:40000", "10.0.0.1:80", 1, 1)
	open := newTCPScript("10.0.0.3:40000", "10.0.0.1:80", 1, 1)
	f.feed(idle.handshake()...)
	f.feed(idle.send(true, "x", 0)...)
	f.wait(9 * time.Second)
	f.feed(open.handshake()...)
	f.feed(open.send(true, "y", 0)...)
	f.a.Flush(f.now.Add(2 * time.Second)) // the first one has been idle for 11s
	wantRecorded(t, r.conns[0], "x<idle>", "<idle>")
	if got := r.conns[1].stream(ClientToServer); got != "y" {
		t.Fatalf("second connection ended early: %q", got)
	}
	f.a.Close()
	wantRecorded(t, r.conns[1], "y<flush>", "<flush>")
	if st := f.a.Stats(); st.Open != 0 || st.Connections != 2 {
		t.Errorf("stats %+v", st)
	}
	// FlushOlderThan ends what is older, keeps what is not.
	fresh := newTCPScript("10.0.0.4:40000", "10.0.0.1:80", 1, 1)
	f.feed(fresh.handshake()...)
	f.a.FlushOlderThan(f.now.Add(-time.Second))
	if len(r.conns) != 3 || r.conns[2].ended[0] {
		t.Fatalf("fresh connection ended")
	}
	f.a.FlushOlderThan(f.now.Add(time.Millisecond))
	wantRecorded(t, r.conns[2], "<idle>", "<idle>")
}

func TestAssemblerLargeFrames(t *testing.T) {
	for _, tc := range []struct{ name, client, server string }{
		{"ipv4", "10.0.0.2:40000", "10.0.0.1:80"},
		{"ipv6", "[fd00::2]:40000", "[fd00::1]:80"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r streamRecorder
			f := newSegFeeder(t, r.factory, AssemblerOptions{})
			c := newTCPScript(tc.client, tc.server, 1, 1)
			f.feed(c.handshake()...)
			// A GSO frame as the sender's capture sees it: 64 KiB, checksum not filled in.
			gso := strings.Repeat("g", 65000)
			s := c.send(true, gso, 0)[0]
			s.badChecksum = true
			f.feed(s)
			// A BIG TCP frame: larger than the IP length field, which is 0.
			big := strings.Repeat("B", 100000)
			s = c.send(true, big, 0)[0]
			s.zeroIPLength, s.badChecksum = true, true
			f.feed(s)
			f.feed(c.fin(true), c.fin(false))
			wantRecorded(t, r.only(t), gso+big+"<fin>", "<fin>")
		})
	}
}

func TestAssemblerIgnoresOtherFrames(t *testing.T) {
	var r streamRecorder
	a := NewAssembler(r.factory, AssemblerOptions{})
	feed := func(ls ...gopacket.SerializableLayer) {
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, ls...); err != nil {
			t.Fatal(err)
		}
		a.Feed(buf.Bytes(), gopacket.CaptureInfo{Timestamp: streamT0})
	}
	eth := &layers.Ethernet{SrcMAC: make(net.HardwareAddr, 6), DstMAC: make(net.HardwareAddr, 6), EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.IP{10, 0, 0, 1}, DstIP: net.IP{10, 0, 0, 2}}
	feed(eth, ip, &layers.UDP{SrcPort: 53, DstPort: 5353}, gopacket.Payload("dns"))
	frag := *ip
	frag.Protocol, frag.Flags = layers.IPProtocolTCP, layers.IPv4MoreFragments
	feed(eth, &frag, &layers.TCP{SrcPort: 1, DstPort: 2, SYN: true})
	arp := *eth
	arp.EthernetType = layers.EthernetTypeARP
	feed(&arp, &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		SourceHwAddress: make([]byte, 6), SourceProtAddress: make([]byte, 4), DstHwAddress: make([]byte, 6), DstProtAddress: make([]byte, 4)})
	a.Feed([]byte{1, 2, 3}, gopacket.CaptureInfo{Timestamp: streamT0})
	if st := a.Stats(); st.Frames != 4 || st.Ignored != 4 || st.Connections != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestAssemblerMaxConnections(t *testing.T) {
	var r streamRecorder
	f := newSegFeeder(t, r.factory, AssemblerOptions{MaxConnections: 2})
	for i := range 3 {
		c := newTCPScript(fmt.Sprintf("10.0.0.%d:40000", i+2), "10.0.0.1:80", 1, 1)
		f.feed(c.handshake()...)
	}
	if st := f.a.Stats(); len(r.conns) != 2 || st.Open != 2 || st.Refused == 0 {
		t.Errorf("conns %d, stats %+v", len(r.conns), st)
	}
}

func TestAssemblerIgnoredConnection(t *testing.T) {
	calls := 0
	f := newSegFeeder(t, func(Flow) StreamHandler { calls++; return nil }, AssemblerOptions{})
	c := newTCPScript("10.0.0.2:40000", "10.0.0.1:80", 1, 1)
	f.feed(c.handshake()...)
	f.feed(c.send(true, "abc", 1)...)
	if calls != 1 {
		t.Errorf("factory called %d times for one connection", calls)
	}
}

func TestAssemblerTimestamps(t *testing.T) {
	var r streamRecorder
	f := newSegFeeder(t, r.factory, AssemblerOptions{})
	c := newTCPScript("10.0.0.2:40000", "10.0.0.1:80", 1, 1)
	f.feed(c.handshake()...)
	s := c.send(true, "aaaabbbbcccc", 4)
	f.feed(s[2]) // at +4ms
	f.feed(s[1]) // at +5ms
	f.feed(s[0]) // at +6ms: delivers all three, each with its own time
	rc := r.only(t)
	want := map[string]time.Time{
		"aaaa": streamT0.Add(6 * time.Millisecond), "bbbb": streamT0.Add(5 * time.Millisecond), "cccc": streamT0.Add(4 * time.Millisecond),
	}
	n := 0
	for _, e := range rc.events {
		if e.kind != "data" {
			continue
		}
		n++
		if w, ok := want[e.data]; !ok || !e.t.Equal(w) {
			t.Errorf("data %q at %v, want %v", e.data, e.t.Sub(streamT0), w.Sub(streamT0))
		}
	}
	if n != 3 {
		t.Errorf("%d data events, want one per run of capture times", n)
	}
}

// TestAssemblerRandomized cuts a conversation into random segments, duplicates and
// reorders some, and checks that both streams come out whole.
func TestAssemblerRandomized(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 50 {
		var r streamRecorder
		f := newSegFeeder(t, r.factory, AssemblerOptions{})
		c := newTCPScript("[fd00::2]:40000", "[fd00::1]:443", rng.Uint32(), rng.Uint32())
		hs := c.handshake()
		var segs []tcpSeg
		var c2s, s2c bytes.Buffer
		for range 10 {
			req := randLetters(rng, 1+rng.IntN(3000))
			resp := randLetters(rng, 1+rng.IntN(3000))
			c2s.WriteString(req)
			s2c.WriteString(resp)
			segs = append(segs, c.send(true, req, 1+rng.IntN(1500))...)
			segs = append(segs, c.send(false, resp, 1+rng.IntN(1500))...)
		}
		for i := range segs {
			if j := i + rng.IntN(3); j < len(segs) && rng.IntN(4) == 0 {
				segs[i], segs[j] = segs[j], segs[i]
			}
		}
		f.feed(hs...)
		for _, s := range segs {
			f.feed(s)
			if rng.IntN(5) == 0 {
				f.feed(s)
			}
		}
		f.feed(c.fin(true), c.fin(false))
		wantRecorded(t, r.only(t), c2s.String()+"<fin>", s2c.String()+"<fin>")
	}
}

func randLetters(rng *rand.Rand, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a' + byte(rng.IntN(26))
	}
	return string(b)
}

// TestAssemblerFlushConcurrently flushes on a timer goroutine while another feeds, as a
// live capture does.
func TestAssemblerFlushConcurrently(t *testing.T) {
	var r streamRecorder
	f := newSegFeeder(t, r.factory, AssemblerOptions{})
	c := newTCPScript("10.0.0.2:40000", "10.0.0.1:80", 1, 1)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				f.a.Flush(streamT0)
				_ = f.a.Stats()
			}
		}
	}()
	f.feed(c.handshake()...)
	for range 200 {
		f.feed(c.send(true, "x", 0)...)
	}
	close(stop)
	<-done
	f.feed(c.fin(true), c.fin(false))
	wantRecorded(t, r.only(t), strings.Repeat("x", 200)+"<fin>", "<fin>")
}
