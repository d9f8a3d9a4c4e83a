package netfilter

import (
	"fmt"
	"slices"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Listening returns those of ports on which a TCP socket other than the agent's own listens, in the
// calling thread's network namespace: the app still takes connections there. The agent's listeners
// carry PassMark (PassListenConfig; with tproxy they are bound to the stolen port itself) and are
// left out; so are sockets whose mark the kernel did not send, which it does only to CAP_NET_ADMIN,
// as a steal's agent has.
func Listening(ports []uint16) ([]uint16, error) {
	c, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, nil)
	if err != nil {
		return nil, fmt.Errorf("open sock_diag socket: %w", err)
	}
	defer c.Close()
	var socks []diagSocket
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		s, err := dumpTCP(c, family, 1<<tcpListen)
		if err != nil {
			return nil, err
		}
		socks = append(socks, s...)
	}
	return listeners(socks, ports), nil
}

// listeners are the ports, of those asked, with a listening socket not marked PassMark, in order.
func listeners(socks []diagSocket, ports []uint16) []uint16 {
	var out []uint16
	for _, s := range socks {
		p := s.local.Port()
		if s.state != tcpListen || !slices.Contains(ports, p) || (s.hasMark && s.mark == PassMark) {
			continue
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}
