package netfilter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/mdlayher/netlink"
	vnl "github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TCP states, include/net/tcp_states.h.
const (
	tcpEstablished = 1
	tcpSynSent     = 2
	tcpSynRecv     = 3
	tcpFinWait1    = 4
	tcpFinWait2    = 5
	tcpCloseWait   = 8
	tcpLastAck     = 9
	tcpClosing     = 11
)

// connectedStates are the states of a connection there is something to reset on: not LISTEN, not
// SYN_SENT (our side is a client), not TIME_WAIT or CLOSE (nothing left).
var connectedStates = []uint8{tcpEstablished, tcpSynRecv, tcpFinWait1, tcpFinWait2, tcpCloseWait, tcpLastAck, tcpClosing}

const (
	inetDiagMark   = 15 // INET_DIAG_MARK, sent to CAP_NET_ADMIN only
	sockIDLen      = 48 // struct inet_diag_sockid
	inetDiagReqLen = 8 + sockIDLen
	inetDiagMsgLen = 24 + sockIDLen
)

// Flush resets the connections already open to ports, so that their clients reconnect into the
// steal: the redirect only takes new connections. In the calling thread's network namespace it
// destroys, through sock_diag (SOCK_DESTROY, as `ss -K` does), every connected TCP socket whose
// local port is one of ports, IPv4 and IPv6, and the kernel sends each client a reset. It then
// deletes those connections' conntrack entries, so that whatever their clients send next is
// judged afresh by the redirect. It returns how many sockets and conntrack entries it removed.
// A kernel built without CONFIG_INET_DIAG_DESTROY leaves the sockets alone, and Flush says so.
//
// Listening sockets are never touched. Neither are connections of sockets marked skipMark, nor
// the app's side of them: the agent's own pass-through dials arrive at the app on these very
// ports, and the accepted socket does not inherit the client's mark. skipMark 0 skips nothing.
func Flush(ports []uint16, skipMark uint32) (sockets, entries int, err error) {
	if len(ports) == 0 {
		return 0, 0, errors.New("no port to flush")
	}
	if slices.Contains(ports, 0) {
		return 0, 0, errors.New("port 0 cannot be flushed")
	}
	c, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, nil)
	if err != nil {
		return 0, 0, fmt.Errorf("open sock_diag socket: %w", err)
	}
	defer c.Close()

	var socks []diagSocket
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		s, err := dumpTCP(c, family)
		if err != nil {
			return 0, 0, err
		}
		socks = append(socks, s...)
	}
	conns := victims(socks, ports, skipMark)

	var errs []error
destroy:
	for _, s := range conns {
		_, err := c.Execute(destroyRequest(s))
		switch {
		case err == nil:
			sockets++
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ESTALE):
			// Closed meanwhile; ESTALE: its addresses now belong to a newer socket.
		case errors.Is(err, unix.EOPNOTSUPP):
			errs = append(errs, fmt.Errorf("destroy TCP sockets: kernel built without CONFIG_INET_DIAG_DESTROY: %w", err))
			break destroy // every other socket would fail the same way
		default:
			errs = append(errs, fmt.Errorf("destroy TCP socket %s <-> %s: %w", s.local, s.remote, err))
		}
	}

	entries, err = deleteConntrack(conns)
	return sockets, entries, errors.Join(append(errs, err)...)
}

// diagSocket is one socket of a sock_diag dump.
type diagSocket struct {
	family  uint8
	state   uint8
	id      [sockIDLen]byte // inet_diag_sockid as the kernel sent it, cookie included
	local   netip.AddrPort  // IPv4-mapped addresses unmapped
	remote  netip.AddrPort
	mark    uint32
	hasMark bool
}

// victims picks the sockets Flush resets.
func victims(socks []diagSocket, ports []uint16, skipMark uint32) []diagSocket {
	marked := map[netip.AddrPort]bool{}
	isMarked := func(s diagSocket) bool { return skipMark != 0 && s.hasMark && s.mark == skipMark }
	for _, s := range socks {
		if isMarked(s) {
			marked[s.local] = true
		}
	}
	var out []diagSocket
	for _, s := range socks {
		if !slices.Contains(connectedStates, s.state) || !slices.Contains(ports, s.local.Port()) {
			continue
		}
		// The peer of a connection inside the netns is in the same dump, so a marked client's
		// local address is the app socket's remote one.
		if isMarked(s) || marked[s.remote] {
			continue
		}
		out = append(out, s)
	}
	return out
}

// dumpRequest asks for the TCP sockets of one family in the states Flush cares about (and
// SYN_SENT, for marked clients still connecting).
func dumpRequest(family uint8) netlink.Message {
	states := uint32(1) << tcpSynSent
	for _, s := range connectedStates {
		states |= 1 << s
	}
	return netlink.Message{
		Header: netlink.Header{Type: unix.SOCK_DIAG_BY_FAMILY, Flags: netlink.Request | netlink.Dump},
		Data:   inetDiagReq(family, states, [sockIDLen]byte{}),
	}
}

// destroyRequest is SOCK_DESTROY for one socket of a dump. Echoing the kernel's cookie matters:
// without it the kernel looks the socket up by addresses alone, and once the connection is gone
// that lookup finds the listener.
func destroyRequest(s diagSocket) netlink.Message {
	return netlink.Message{
		Header: netlink.Header{Type: unix.SOCK_DESTROY, Flags: netlink.Request | netlink.Acknowledge},
		Data:   inetDiagReq(s.family, 0, s.id),
	}
}

// inetDiagReq is struct inet_diag_req_v2.
func inetDiagReq(family uint8, states uint32, id [sockIDLen]byte) []byte {
	b := make([]byte, 0, inetDiagReqLen)
	b = append(b, family, unix.IPPROTO_TCP, 0, 0)
	b = binary.NativeEndian.AppendUint32(b, states)
	return append(b, id[:]...)
}

func dumpTCP(c *netlink.Conn, family uint8) ([]diagSocket, error) {
	msgs, err := c.Execute(dumpRequest(family))
	if err != nil {
		return nil, fmt.Errorf("list TCP sockets: %w", err)
	}
	socks := make([]diagSocket, 0, len(msgs))
	for _, m := range msgs {
		if m.Header.Type != unix.SOCK_DIAG_BY_FAMILY {
			continue
		}
		s, err := parseDiagMsg(m.Data)
		if err != nil {
			return nil, fmt.Errorf("list TCP sockets: %w", err)
		}
		socks = append(socks, s)
	}
	return socks, nil
}

// parseDiagMsg reads struct inet_diag_msg and its attributes.
func parseDiagMsg(b []byte) (diagSocket, error) {
	if len(b) < inetDiagMsgLen {
		return diagSocket{}, fmt.Errorf("short inet_diag_msg of %d bytes", len(b))
	}
	s := diagSocket{family: b[0], state: b[1]}
	copy(s.id[:], b[4:4+sockIDLen])
	addr := func(a []byte) netip.Addr {
		if s.family == unix.AF_INET {
			return netip.AddrFrom4([4]byte(a[:4]))
		}
		return netip.AddrFrom16([16]byte(a)).Unmap()
	}
	id := s.id[:]
	s.local = netip.AddrPortFrom(addr(id[4:20]), binary.BigEndian.Uint16(id[0:2]))
	s.remote = netip.AddrPortFrom(addr(id[20:36]), binary.BigEndian.Uint16(id[2:4]))
	ad, err := netlink.NewAttributeDecoder(b[inetDiagMsgLen:])
	if err != nil {
		return diagSocket{}, fmt.Errorf("inet_diag_msg attributes: %w", err)
	}
	for ad.Next() {
		if ad.Type() == inetDiagMark {
			s.mark, s.hasMark = ad.Uint32(), true
		}
	}
	if err := ad.Err(); err != nil {
		return diagSocket{}, fmt.Errorf("inet_diag_msg attributes: %w", err)
	}
	return s, nil
}

// deleteConntrack deletes the conntrack entries of the connections of conns.
func deleteConntrack(conns []diagSocket) (int, error) {
	if len(conns) == 0 {
		return 0, nil
	}
	f := connFilter{}
	for _, s := range conns {
		// Both ways: conntrack picks up a connection it did not see open from whichever side
		// sends next, and calls that side the original.
		f[[2]netip.AddrPort{s.remote, s.local}] = true
		f[[2]netip.AddrPort{s.local, s.remote}] = true
	}
	n := 0
	var errs []error
	for _, family := range []vnl.InetFamily{unix.AF_INET, unix.AF_INET6} {
		m, err := vnl.ConntrackDeleteFilters(vnl.ConntrackTable, family, f)
		n += int(m)
		// An interrupted dump still deleted what it saw; the caller can flush again.
		if err != nil && !errors.Is(err, vnl.ErrDumpInterrupted) {
			errs = append(errs, fmt.Errorf("delete conntrack entries: %w", err))
		}
	}
	return n, errors.Join(errs...)
}

// connFilter matches TCP conntrack entries by their original direction, keyed {source,
// destination}. A connection something translated on its way in has a different original
// destination and is left alone: it is not the app's connection as the socket sees it.
type connFilter map[[2]netip.AddrPort]bool

func (f connFilter) MatchConntrackFlow(flow *vnl.ConntrackFlow) bool {
	t := flow.Forward
	return t.Protocol == unix.IPPROTO_TCP && f[[2]netip.AddrPort{addrPort(t.SrcIP, t.SrcPort), addrPort(t.DstIP, t.DstPort)}]
}

func addrPort(ip net.IP, port uint16) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), port)
}
