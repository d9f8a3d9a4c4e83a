package netfilter

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nlenc"
	vnl "github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// sockID is struct inet_diag_sockid: ports and addresses big endian, interface and cookie in host
// order.
func sockID(local, remote netip.AddrPort, cookie uint64) [sockIDLen]byte {
	var b []byte
	b = append(b, byte(local.Port()>>8), byte(local.Port()), byte(remote.Port()>>8), byte(remote.Port()))
	addr := func(a netip.Addr) []byte {
		if a.Is4() {
			return append(a.AsSlice(), make([]byte, 12)...)
		}
		return a.AsSlice()
	}
	b = append(b, addr(local.Addr())...)
	b = append(b, addr(remote.Addr())...)
	b = append(b, nlenc.Uint32Bytes(0)...) // interface
	b = append(b, nlenc.Uint32Bytes(uint32(cookie))...)
	b = append(b, nlenc.Uint32Bytes(uint32(cookie>>32))...)
	return [sockIDLen]byte(b)
}

func TestDiagRequestsGolden(t *testing.T) {
	// ESTABLISHED 1, SYN_SENT 2, SYN_RECV 3, FIN_WAIT1 4, FIN_WAIT2 5, CLOSE_WAIT 8, LAST_ACK 9,
	// CLOSING 11: bits 0xb3e. Not LISTEN (10), TIME_WAIT (6), CLOSE (7).
	dump := dumpRequest(unix.AF_INET6, flushStates())
	wantDump := message{
		Type:  unix.SOCK_DIAG_BY_FAMILY,
		Flags: netlink.Request | netlink.Dump,
		Data: words(concat(
			[]byte{unix.AF_INET6, unix.IPPROTO_TCP, 2, 0}, // family, protocol, ext (1<<(INET_DIAG_INFO-1)), pad
			nlenc.Uint32Bytes(0xb3e),                      // states
			make([]byte, sockIDLen),                       // id: unused in a dump
		)),
	}
	if diff := cmp.Diff(wantDump, messages([]netlink.Message{dump})[0]); diff != "" {
		t.Errorf("dump request (-want +got):\n%s", diff)
	}

	id := sockID(netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.2:40000"), 0x1122334455667788)
	destroy := destroyRequest(diagSocket{family: unix.AF_INET, id: id})
	wantDestroy := message{
		Type:  unix.SOCK_DESTROY,
		Flags: netlink.Request | netlink.Acknowledge,
		Data: words(concat(
			[]byte{unix.AF_INET, unix.IPPROTO_TCP, 0, 0},
			nlenc.Uint32Bytes(0),
			[]byte{0, 80, 0x9c, 0x40}, // sport 80, dport 40000
			[]byte{10, 0, 0, 1}, make([]byte, 12),
			[]byte{10, 0, 0, 2}, make([]byte, 12),
			nlenc.Uint32Bytes(0),          // interface
			nlenc.Uint32Bytes(0x55667788), // the kernel's cookie, echoed
			nlenc.Uint32Bytes(0x11223344),
		)),
	}
	if diff := cmp.Diff(wantDestroy, messages([]netlink.Message{destroy})[0]); diff != "" {
		t.Errorf("destroy request (-want +got):\n%s", diff)
	}
}

// diagInfo is what diagMsg puts in the message besides the addresses: queues, and a tcp_info of
// infoLen bytes (0: none) whose times are lastSent and lastRecv milliseconds.
type diagInfo struct {
	rqueue, wqueue     uint32
	infoLen            int
	lastSent, lastRecv uint32
}

func diagMsg(family, state uint8, id [sockIDLen]byte, mark *uint32, info diagInfo) []byte {
	b := []byte{family, state, 0, 0}
	b = append(b, id[:]...)
	b = append(b, nlenc.Uint32Bytes(0)...) // expires
	b = append(b, nlenc.Uint32Bytes(info.rqueue)...)
	b = append(b, nlenc.Uint32Bytes(info.wqueue)...)
	b = append(b, make([]byte, 8)...) // uid, inode
	ae := netlink.NewAttributeEncoder()
	ae.Uint8(8, 0) // INET_DIAG_SHUTDOWN: an attribute Flush ignores
	if mark != nil {
		ae.Uint32(inetDiagMark, *mark)
	}
	if info.infoLen > 0 {
		ti := make([]byte, info.infoLen)
		if info.infoLen >= tcpiLastDataRecv+4 {
			copy(ti[tcpiLastDataSent:], nlenc.Uint32Bytes(info.lastSent))
			copy(ti[tcpiLastDataRecv:], nlenc.Uint32Bytes(info.lastRecv))
		}
		ae.Bytes(inetDiagInfo, ti)
	}
	attrs, err := ae.Encode()
	if err != nil {
		panic(err)
	}
	return append(b, attrs...)
}

func TestParseDiagMsg(t *testing.T) {
	mark := uint32(0x7f1a0000)
	v4 := sockID(netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.2:40000"), 7)
	mapped := sockID(netip.MustParseAddrPort("[::ffff:10.0.0.1]:80"), netip.MustParseAddrPort("[::ffff:10.0.0.2]:40000"), 8)
	v6 := sockID(netip.MustParseAddrPort("[fd00::1]:80"), netip.MustParseAddrPort("[fd00::2]:40000"), 9)
	tests := []struct {
		name string
		in   []byte
		want diagSocket
	}{
		{
			name: "IPv4 with mark",
			in:   diagMsg(unix.AF_INET, tcpEstablished, v4, &mark, diagInfo{rqueue: 3, wqueue: 5, infoLen: 232, lastSent: 1500, lastRecv: 2500}),
			want: diagSocket{
				family: unix.AF_INET, state: tcpEstablished, id: v4,
				local: netip.MustParseAddrPort("10.0.0.1:80"), remote: netip.MustParseAddrPort("10.0.0.2:40000"),
				mark: mark, hasMark: true, rqueue: 3, wqueue: 5,
				hasInfo: true, lastSent: 1500 * time.Millisecond, lastRecv: 2500 * time.Millisecond,
			},
		},
		{
			name: "IPv4 client of a dual-stack socket: addresses unmapped",
			in:   diagMsg(unix.AF_INET6, tcpCloseWait, mapped, nil, diagInfo{infoLen: tcpiLastDataRecv}),
			want: diagSocket{
				family: unix.AF_INET6, state: tcpCloseWait, id: mapped,
				local: netip.MustParseAddrPort("10.0.0.1:80"), remote: netip.MustParseAddrPort("10.0.0.2:40000"),
			},
		},
		{
			name: "IPv6",
			in:   diagMsg(unix.AF_INET6, tcpEstablished, v6, &mark, diagInfo{}),
			want: diagSocket{
				family: unix.AF_INET6, state: tcpEstablished, id: v6,
				local: netip.MustParseAddrPort("[fd00::1]:80"), remote: netip.MustParseAddrPort("[fd00::2]:40000"),
				mark: mark, hasMark: true,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseDiagMsg(tt.in)
			if err != nil {
				t.Fatalf("parseDiagMsg: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(diagSocket{}), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	if _, err := parseDiagMsg(make([]byte, inetDiagMsgLen-1)); err == nil || !strings.Contains(err.Error(), "short inet_diag_msg") {
		t.Errorf("short message: %v", err)
	}
}

func TestVictims(t *testing.T) {
	const skip = 0x7f1a0000
	sock := func(state uint8, local, remote string, mark uint32) diagSocket {
		return diagSocket{
			state: state, local: netip.MustParseAddrPort(local), remote: netip.MustParseAddrPort(remote),
			mark: mark, hasMark: true,
		}
	}
	socks := []diagSocket{
		sock(tcpEstablished, "10.0.0.1:80", "10.0.0.2:40000", 0),                                                                  // 0: client from outside
		sock(tcpEstablished, "[fd00::1]:80", "[fd00::2]:40001", 0),                                                                // 1: IPv6 client
		sock(tcpCloseWait, "10.0.0.1:80", "10.0.0.2:40002", 0),                                                                    // 2: half-closed
		sock(tcpEstablished, "10.0.0.1:443", "10.0.0.2:40003", 0),                                                                 // 3: other port
		sock(tcpEstablished, "10.0.0.1:80", "10.0.0.2:40004", skip),                                                               // 4: marked app socket
		sock(tcpEstablished, "127.0.0.1:45000", "127.0.0.1:80", skip),                                                             // 5: the agent's pass-through dial
		sock(tcpEstablished, "127.0.0.1:80", "127.0.0.1:45000", 0),                                                                // 6: ... and the app's side of it
		sock(tcpEstablished, "127.0.0.1:46000", "127.0.0.1:80", 0),                                                                // 7: an unmarked client in the pod
		sock(tcpEstablished, "127.0.0.1:80", "127.0.0.1:46000", 0),                                                                // 8: ... and the app's side of it
		sock(tcpSynSent, "10.0.0.1:80", "10.0.0.9:80", 0),                                                                         // 9: a client bound to port 80
		sock(tcpEstablished, "10.0.0.1:50000", "10.0.0.3:80", 0),                                                                  // 10: the pod as a client of port 80
		sock(tcpEstablished, "10.0.0.1:80", "10.0.0.2:40005", skip+1),                                                             // 11: another mark
		{state: tcpEstablished, local: netip.MustParseAddrPort("10.0.0.1:80"), remote: netip.MustParseAddrPort("10.0.0.2:40006")}, // 12: no mark reported
		sock(10 /* LISTEN */, "0.0.0.0:80", "0.0.0.0:0", 0),                                                                       // 13: listener (never dumped, never picked)
	}
	tests := []struct {
		name     string
		ports    []uint16
		skipMark uint32
		want     []int
	}{
		{name: "port 80, marked connections kept", ports: []uint16{80}, skipMark: skip, want: []int{0, 1, 2, 8, 11, 12}},
		{name: "two ports", ports: []uint16{80, 443}, skipMark: skip, want: []int{0, 1, 2, 3, 8, 11, 12}},
		{name: "mark 0 skips nothing", ports: []uint16{80}, want: []int{0, 1, 2, 4, 6, 8, 11, 12}},
		{name: "no match", ports: []uint16{8080}, skipMark: skip},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []int
			for _, v := range victims(socks, tt.ports, tt.skipMark) {
				for i, s := range socks {
					if s == v {
						got = append(got, i)
					}
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("victims (-want +got):\n%s", diff)
			}
		})
	}
}

func TestConnFilter(t *testing.T) {
	f := connFilter{
		{netip.MustParseAddrPort("10.0.0.2:40000"), netip.MustParseAddrPort("10.0.0.1:80")}:   true,
		{netip.MustParseAddrPort("[fd00::2]:40001"), netip.MustParseAddrPort("[fd00::1]:80")}: true,
	}
	flow := func(proto uint8, src, dst string) *vnl.ConntrackFlow {
		s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
		return &vnl.ConntrackFlow{Forward: vnl.IPTuple{
			Protocol: proto,
			SrcIP:    net.IP(s.Addr().AsSlice()), SrcPort: s.Port(),
			DstIP: net.IP(d.Addr().AsSlice()), DstPort: d.Port(),
		}}
	}
	tests := []struct {
		name string
		flow *vnl.ConntrackFlow
		want bool
	}{
		{"IPv4 connection of a reset socket", flow(unix.IPPROTO_TCP, "10.0.0.2:40000", "10.0.0.1:80"), true},
		{"IPv6", flow(unix.IPPROTO_TCP, "[fd00::2]:40001", "[fd00::1]:80"), true},
		{"16-byte IPv4 addresses", &vnl.ConntrackFlow{Forward: vnl.IPTuple{
			Protocol: unix.IPPROTO_TCP,
			SrcIP:    net.ParseIP("10.0.0.2"), SrcPort: 40000, DstIP: net.ParseIP("10.0.0.1"), DstPort: 80,
		}}, true},
		{"UDP", flow(unix.IPPROTO_UDP, "10.0.0.2:40000", "10.0.0.1:80"), false},
		{"other client", flow(unix.IPPROTO_TCP, "10.0.0.2:40001", "10.0.0.1:80"), false},
		{"translated on its way in: original destination differs", flow(unix.IPPROTO_TCP, "10.0.0.2:40000", "10.0.0.1:8080"), false},
	}
	for _, tt := range tests {
		if got := f.MatchConntrackFlow(tt.flow); got != tt.want {
			t.Errorf("%s: match = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestFlushRejectsBadPorts(t *testing.T) {
	for _, ports := range [][]uint16{nil, {80, 0}} {
		if _, _, err := Flush(ports, 1, false); err == nil {
			t.Errorf("Flush(%v) succeeded", ports)
		}
	}
}

func TestIdle(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	quiet := diagSocket{hasInfo: true, lastSent: ms(1500), lastRecv: ms(2500)}
	with := func(f func(*diagSocket)) diagSocket {
		s := quiet
		f(&s)
		return s
	}
	tests := []struct {
		name string
		s    diagSocket
		want bool
	}{
		{"keep-alive connection at rest: answered, then quiet", quiet, true},
		{"quiet for exactly IdleAfter both ways", with(func(s *diagSocket) { s.lastSent, s.lastRecv = IdleAfter, IdleAfter }), true},
		{"client sent last (an HTTP/2 WINDOW_UPDATE after its response)", with(func(s *diagSocket) { s.lastSent, s.lastRecv = ms(2500), ms(1500) }), true},
		{"answered just now", with(func(s *diagSocket) { s.lastSent = ms(999) }), false},
		{"request received just now", with(func(s *diagSocket) { s.lastRecv = ms(10) }), false},
		{"unread request bytes", with(func(s *diagSocket) { s.rqueue = 1 }), false},
		{"response not yet acknowledged", with(func(s *diagSocket) { s.wqueue = 1 }), false},
		{"no tcp_info (SYN_RECV, or a kernel that sent none)", with(func(s *diagSocket) { s.hasInfo = false }), false},
	}
	for _, tt := range tests {
		if got := tt.s.idle(); got != tt.want {
			t.Errorf("%s: idle() = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func FuzzParseDiagMsg(f *testing.F) {
	id := sockID(netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.2:40000"), 7)
	mark := uint32(1)
	f.Add(diagMsg(unix.AF_INET, tcpEstablished, id, &mark, diagInfo{infoLen: 232, lastSent: 1, lastRecv: 2}))
	f.Add(diagMsg(unix.AF_INET6, tcpEstablished, id, nil, diagInfo{infoLen: 10}))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseDiagMsg(b)
		if err != nil {
			return
		}
		if s.family != b[0] || s.state != b[1] {
			t.Errorf("family, state = %d, %d; the message says %d, %d", s.family, s.state, b[0], b[1])
		}
		if s.hasInfo && (s.lastSent < 0 || s.lastRecv < 0) {
			t.Errorf("negative times %v, %v", s.lastSent, s.lastRecv)
		}
	})
}

// TestListeners: a port counts once, whatever the families; the agent's marked listener, other
// states and ports not asked do not count.
func TestListeners(t *testing.T) {
	sock := func(state uint8, port uint16, mark uint32, hasMark bool) diagSocket {
		return diagSocket{state: state, local: netip.AddrPortFrom(netip.IPv4Unspecified(), port), mark: mark, hasMark: hasMark}
	}
	socks := []diagSocket{
		sock(tcpListen, 8080, 0, true),
		sock(tcpListen, 8080, 0, false), // the IPv6 listener of the same port
		sock(tcpListen, 8082, PassMark, true),
		sock(tcpEstablished, 8083, 0, true),
		sock(tcpListen, 9000, 0, true),
		sock(tcpListen, 81, 0, true),
	}
	if diff := cmp.Diff([]uint16{81, 8080}, listeners(socks, []uint16{8080, 8082, 8083, 81})); diff != "" {
		t.Errorf("listeners (-want +got):\n%s", diff)
	}
}
