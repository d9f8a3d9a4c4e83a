package netfilter

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST, which x/sys/unix does not define.
const ip6tSoOriginalDst = 80

// OriginalDst returns where a redirected connection was headed before the redirect: the pod
// address and stolen port the client dialed. A connection the unowned path handed over with tproxy
// (its socket is transparent, inherited from the listener) kept its destination: that is its local
// address. One the owned path's NAT redirect rewrote has it in conntrack, asked through
// getsockopt, as SO_ORIGINAL_DST (IPv4, including IPv4 clients of a dual-stack listener) or
// IP6T_SO_ORIGINAL_DST (IPv6); a connection nobody redirected gets ENOENT.
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	local, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: local address %v is not TCP", c.LocalAddr())
	}
	transparent, err := isTransparent(c)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination of %v: %w", c.RemoteAddr(), err)
	}
	if transparent {
		a := local.AddrPort()
		return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()), nil
	}
	// The family of the connection, not of the socket: an IPv4 client on a [::] listener has
	// IPv4 conntrack state, found through the IPv4 option.
	level, opt := unix.SOL_IP, unix.SO_ORIGINAL_DST
	if local.IP.To4() == nil {
		level, opt = unix.SOL_IPV6, ip6tSoOriginalDst
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	var sa unix.RawSockaddrInet6 // large enough for sockaddr_in too
	var serr error
	err = rc.Control(func(fd uintptr) {
		size := uint32(unsafe.Sizeof(sa))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(opt),
			uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&size)), 0)
		if errno != 0 {
			serr = errno
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination of %v: %w", c.RemoteAddr(), err)
	}
	return parseSockaddr(&sa)
}

// parseSockaddr reads a sockaddr_in or sockaddr_in6, whose ports are in network byte order.
func parseSockaddr(sa *unix.RawSockaddrInet6) (netip.AddrPort, error) {
	b := (*[unix.SizeofSockaddrInet6]byte)(unsafe.Pointer(sa))[:]
	port := binary.BigEndian.Uint16(b[2:4])
	switch sa.Family {
	case unix.AF_INET:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), nil
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port), nil
	default:
		return netip.AddrPort{}, fmt.Errorf("original destination: unexpected address family %d", sa.Family)
	}
}

// transparentOption is the socket option that makes a socket of c's family transparent: tproxy
// hands connections only to such sockets. IPV6_TRANSPARENT on a dual-stack socket covers its
// IPv4 clients too (one flag in the kernel's inet_sock).
func transparentOption(fd int) (level, opt int, err error) {
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return 0, 0, fmt.Errorf("socket family: %w", err)
	}
	if domain == unix.AF_INET6 {
		return unix.SOL_IPV6, unix.IPV6_TRANSPARENT, nil
	}
	return unix.SOL_IP, unix.IP_TRANSPARENT, nil
}

// setTransparent sets IP_TRANSPARENT (IPV6_TRANSPARENT) on the listener; it needs CAP_NET_ADMIN,
// which the redirect needs anyway. Connections it accepts inherit the flag.
func setTransparent(sc syscall.Conn) error {
	rc, err := sc.SyscallConn()
	if err != nil {
		return fmt.Errorf("make the listener transparent: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		level, opt, err := transparentOption(int(fd))
		if err != nil {
			serr = err
			return
		}
		serr = unix.SetsockoptInt(int(fd), level, opt, 1)
	}); err != nil {
		return fmt.Errorf("make the listener transparent: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("make the listener transparent (IP_TRANSPARENT): %w", serr)
	}
	return nil
}

// isTransparent reads the flag setTransparent sets.
func isTransparent(sc syscall.Conn) (bool, error) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return false, err
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		level, opt, err := transparentOption(int(fd))
		if err != nil {
			serr = err
			return
		}
		v, serr = unix.GetsockoptInt(int(fd), level, opt)
	}); err != nil {
		return false, err
	}
	if serr != nil {
		return false, fmt.Errorf("read IP_TRANSPARENT: %w", serr)
	}
	return v != 0, nil
}
