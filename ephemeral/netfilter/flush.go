package netfilter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

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
	tcpListen      = 10
)

// connectedStates are the states of a connection there is something to reset on: not LISTEN, not
// SYN_SENT (our side is a client), not TIME_WAIT or CLOSE (nothing left).
var connectedStates = []uint8{tcpEstablished, tcpSynRecv, tcpFinWait1, tcpFinWait2, tcpCloseWait, tcpLastAck, tcpClosing}

const (
	inetDiagInfo   = 2  // INET_DIAG_INFO: struct tcp_info
	inetDiagMark   = 15 // INET_DIAG_MARK, sent to CAP_NET_ADMIN only
	sockIDLen      = 48 // struct inet_diag_sockid
	inetDiagReqLen = 8 + sockIDLen
	inetDiagMsgLen = 24 + sockIDLen

	// Offsets in struct tcp_info of tcpi_last_data_sent and tcpi_last_data_recv (milliseconds),
	// stable since Linux 2.6.
	tcpiLastDataSent = 44
	tcpiLastDataRecv = 52
)

// IdleAfter is how long a connection must have carried no data, either way, before Flush takes
// it for idle: a keep-alive connection in a client's pool between requests. A client picks such a
// connection for its next request only after it has sat unused; the longer that has been, the less
// likely the reset crosses a request on its way.
const IdleAfter = time.Second

// FlushCounts is what one Flush did to the open connections of one port.
type FlushCounts struct {
	// Idle connections were reset: their clients take the reset as the server closing an unused
	// keep-alive connection, and reconnect into the steal; no request failed.
	Idle int
	// Busy connections were reset because Flush was told to reset busy ones too: whatever request
	// was in flight on them failed.
	Busy int
	// Left are the busy connections left open, still going to the app.
	Left int
}

// Flush resets the idle connections already open to ports, so that their clients reconnect into
// the steal: the redirect only takes new connections. A connection is idle when both its queues
// are empty and no data moved either way for IdleAfter (see idle); the others are busy, and Flush
// resets them too only when busy is true. In the calling thread's network namespace it destroys,
// through sock_diag (SOCK_DESTROY, as `ss -K` does), the chosen connected TCP sockets whose local
// port is one of ports, IPv4 and IPv6, and the kernel sends each client a reset. It then deletes those connections' conntrack entries,
// so that whatever their clients send next is judged afresh by the redirect. It returns what it
// did per port (ports without open connections are absent) and how many conntrack entries it
// removed. A kernel built without CONFIG_INET_DIAG_DESTROY leaves the sockets alone, and Flush
// says so. Calling it again takes the busy connections that have become idle since.
//
// Listening sockets are never touched. Neither are connections of sockets marked skipMark, nor
// the app's side of them: the agent's own pass-through dials arrive at the app on these very
// ports, and the accepted socket does not inherit the client's mark. skipMark 0 skips nothing.
func Flush(ports []uint16, skipMark uint32, busy bool) (counts map[uint16]FlushCounts, entries int, err error) {
	if len(ports) == 0 {
		return nil, 0, errors.New("no port to flush")
	}
	if slices.Contains(ports, 0) {
		return nil, 0, errors.New("port 0 cannot be flushed")
	}
	c, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("open sock_diag socket: %w", err)
	}
	defer c.Close()

	var socks []diagSocket
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		s, err := dumpTCP(c, family, flushStates())
		if err != nil {
			return nil, 0, err
		}
		socks = append(socks, s...)
	}
	counts = map[uint16]FlushCounts{}
	var destroyed []diagSocket
	var errs []error
	for _, s := range victims(socks, ports, skipMark) {
		port := s.local.Port()
		n := counts[port]
		idle := s.idle()
		if !idle && !busy {
			n.Left++
			counts[port] = n
			continue
		}
		_, err := c.Execute(destroyRequest(s))
		switch {
		case err == nil:
			destroyed = append(destroyed, s)
			if idle {
				n.Idle++
			} else {
				n.Busy++
			}
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ESTALE):
			// Closed meanwhile; ESTALE: its addresses now belong to a newer socket.
		case errors.Is(err, unix.EOPNOTSUPP):
			// Every other socket would fail the same way.
			err = fmt.Errorf("destroy TCP sockets: kernel built without CONFIG_INET_DIAG_DESTROY: %w", err)
			return counts, 0, err
		default:
			errs = append(errs, fmt.Errorf("destroy TCP socket %s <-> %s: %w", s.local, s.remote, err))
			n.Left++
		}
		counts[port] = n
	}

	entries, err = deleteConntrack(destroyed)
	return counts, entries, errors.Join(append(errs, err)...)
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
	// The socket's queues (idiag_rqueue: received, not yet read; idiag_wqueue: written, not yet
	// acknowledged) and, from tcp_info when the kernel sent it, the time since data last went
	// each way.
	rqueue, wqueue     uint32
	hasInfo            bool
	lastSent, lastRecv time.Duration
}

// idle reports whether s may be reset without failing a request: nothing queued either way and
// no data for IdleAfter. Which side sent last does not help: an HTTP/2 client's last frame is often
// a WINDOW_UPDATE after its response, so "the app answered last" would keep such connections busy
// for ever. What this cannot tell from a connection at rest is a request the app has read and is
// still working on after a second of silence: a slow handler's request fails like a busy one's.
// A socket without tcp_info (a request socket still in SYN_RECV) is not idle: it is looked at again
// once established.
func (s diagSocket) idle() bool {
	return s.hasInfo && s.rqueue == 0 && s.wqueue == 0 && s.lastSent >= IdleAfter && s.lastRecv >= IdleAfter
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

// flushStates are the states Flush asks for: connected ones, and SYN_SENT, for marked clients still
// connecting.
func flushStates() uint32 {
	states := uint32(1) << tcpSynSent
	for _, s := range connectedStates {
		states |= 1 << s
	}
	return states
}

// dumpRequest asks for the TCP sockets of one family in states (a bit per TCP state).
func dumpRequest(family uint8, states uint32) netlink.Message {
	return netlink.Message{
		Header: netlink.Header{Type: unix.SOCK_DIAG_BY_FAMILY, Flags: netlink.Request | netlink.Dump},
		Data:   inetDiagReq(family, 1<<(inetDiagInfo-1), states, [sockIDLen]byte{}),
	}
}

// destroyRequest is SOCK_DESTROY for one socket of a dump. Echoing the kernel's cookie matters:
// without it the kernel looks the socket up by addresses alone, and once the connection is gone
// that lookup finds the listener.
func destroyRequest(s diagSocket) netlink.Message {
	return netlink.Message{
		Header: netlink.Header{Type: unix.SOCK_DESTROY, Flags: netlink.Request | netlink.Acknowledge},
		Data:   inetDiagReq(s.family, 0, 0, s.id),
	}
}

// inetDiagReq is struct inet_diag_req_v2; ext asks for attributes (1<<(INET_DIAG_x-1)).
func inetDiagReq(family, ext uint8, states uint32, id [sockIDLen]byte) []byte {
	b := make([]byte, 0, inetDiagReqLen)
	b = append(b, family, unix.IPPROTO_TCP, ext, 0)
	b = binary.NativeEndian.AppendUint32(b, states)
	return append(b, id[:]...)
}

func dumpTCP(c *netlink.Conn, family uint8, states uint32) ([]diagSocket, error) {
	msgs, err := c.Execute(dumpRequest(family, states))
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
	// After the id: idiag_expires, idiag_rqueue, idiag_wqueue, idiag_uid, idiag_inode.
	s.rqueue = binary.NativeEndian.Uint32(b[4+sockIDLen+4:])
	s.wqueue = binary.NativeEndian.Uint32(b[4+sockIDLen+8:])
	ad, err := netlink.NewAttributeDecoder(b[inetDiagMsgLen:])
	if err != nil {
		return diagSocket{}, fmt.Errorf("inet_diag_msg attributes: %w", err)
	}
	for ad.Next() {
		switch ad.Type() {
		case inetDiagMark:
			s.mark, s.hasMark = ad.Uint32(), true
		case inetDiagInfo:
			// Older kernels send a shorter tcp_info; one without the times is as good as none.
			if info := ad.Bytes(); len(info) >= tcpiLastDataRecv+4 {
				ms := func(off int) time.Duration {
					return time.Duration(binary.NativeEndian.Uint32(info[off:])) * time.Millisecond
				}
				s.hasInfo, s.lastSent, s.lastRecv = true, ms(tcpiLastDataSent), ms(tcpiLastDataRecv)
			}
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
