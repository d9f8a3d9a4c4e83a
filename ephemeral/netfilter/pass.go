package netfilter

import (
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// PassMark is the SO_MARK of the agent's own connections to the pod's addresses; the redirect's
// output rule (Redirect.Mark) skips it. The low 16 bits stay clear: kube-proxy (0x4000, 0x8000) and
// Cilium (0x0f00) use them on packets that leave the pod, and marked connections only ever go to the
// pod's own addresses over lo.
const PassMark = 0x7f1a0000

// PassDialer returns a dialer whose connections carry PassMark, set before connect so that not even
// the SYN is redirected. Every connection the agent makes while a redirect may be in place goes
// through it: a filtered steal's requests passed on to the app, and a redirect mirror's copies to a
// destination that may be the pod itself; without the mark they would loop back into the agent.
//
// from, when it holds an address of the destination's family, is the source the connection is
// bound to. In a meshed pod the pass-through is the sidecar's connection to the app that the
// redirect took (Redirect.Mesh), and must leave the way the sidecar's would have: Istio's output
// rules let through what comes from 127.0.0.6 (::6) over lo and send anything else from a process
// other than the proxy back into the proxy, so the agent dials from there
// (MeshRedirect.PassSources). Linkerd lets every connection over lo through, so from is empty.
func PassDialer(timeout time.Duration, from []netip.Addr) *net.Dialer {
	return &net.Dialer{Timeout: timeout, Control: func(network, _ string, rc syscall.RawConn) error {
		return passControl(network, from, rc)
	}}
}

func passControl(network string, from []netip.Addr, rc syscall.RawConn) error {
	var src netip.Addr
	for _, a := range from {
		if (network == "tcp4" && a.Is4()) || (network == "tcp6" && a.Is6()) {
			src = a
			break
		}
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, PassMark); err != nil {
			serr = fmt.Errorf("set the pass-through mark: %w", err)
			return
		}
		if !src.IsValid() {
			return
		}
		// The port is chosen at connect, per destination, rather than at bind from the one
		// source's 28k ephemeral ports: a busy pass-through would run out of them.
		if err := unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
			serr = fmt.Errorf("pass-through from %s: %w", src, err)
			return
		}
		var sa unix.Sockaddr
		if src.Is4() {
			sa = &unix.SockaddrInet4{Addr: src.As4()}
		} else {
			sa = &unix.SockaddrInet6{Addr: src.As16()}
		}
		if err := unix.Bind(int(fd), sa); err != nil {
			serr = fmt.Errorf("bind the pass-through to %s: %w", src, err)
		}
	}); err != nil {
		return err
	}
	return serr
}
