package netfilter

import (
	"fmt"
	"net"
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
func PassDialer(timeout time.Duration) *net.Dialer {
	return &net.Dialer{Timeout: timeout, Control: passControl}
}

func passControl(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, PassMark)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set the pass-through mark: %w", serr)
	}
	return nil
}
