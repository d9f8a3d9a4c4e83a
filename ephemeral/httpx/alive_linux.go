package httpx

import (
	"errors"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// alive reports whether an idle upstream connection can take another request. A server that closed
// an idle keep-alive connection has sent its FIN long before our next write; peeking at the socket
// finds it without waiting, where a write would succeed and the response read would fail only after
// the request (and maybe its body, which cannot be replayed) was spent. Connections without a socket
// (tunnel streams) are assumed alive; a bodiless request is resent once if they were not.
func alive(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	ok = true
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case errors.Is(rerr, unix.EAGAIN), errors.Is(rerr, unix.EINTR):
		case rerr != nil, n == 0:
			ok = false // reset, or EOF
		default:
			// Bytes nobody asked for: the connection's framing can no longer be trusted.
			ok = false
		}
		return true
	})
	return ok && err == nil
}
