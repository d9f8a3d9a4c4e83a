package netfilter

import (
	"net"
	"syscall"
)

// PassListenConfig makes the agent's listener for redirected connections carry PassMark, which
// the connections it accepts inherit: Flush, which skips marked sockets, then never takes the
// agent's own side of a connection for one open to a stolen port. With NAT that side's port is the
// listener's anyway; with tproxy it is the stolen port itself. (Only the mark: a listener binds
// its own address, no pass-through source.)
func PassListenConfig() *net.ListenConfig {
	return &net.ListenConfig{Control: func(network, _ string, rc syscall.RawConn) error {
		return passControl(network, nil, rc)
	}}
}
