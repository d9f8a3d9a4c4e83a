//go:build linux && kernel

package attach

import (
	"context"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/netfilter"
	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
)

// A redirect mirror's connections to the pod itself carry the pass-through mark (else the
// redirect takes them back); those to --to destinations that leave the pod do not, so that they go
// out as the pod's own connections do, through a mesh's sidecar.
func TestKernelMirrorDialerMarksOnlyThePod(t *testing.T) {
	pod, peer := testnet.New(t), testnet.New(t)
	testnet.Connect(t,
		pod, []netip.Prefix{netip.MustParsePrefix("10.82.0.1/24"), netip.MustParsePrefix("fd82::1/64")},
		peer, []netip.Prefix{netip.MustParsePrefix("10.82.0.2/24"), netip.MustParsePrefix("fd82::2/64")})
	inPod := pod.Listen(t, "tcp", ":9000")
	outside := peer.Listen(t, "tcp", ":9000")
	for _, l := range []net.Listener{inPod, outside} {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	for _, tc := range []struct {
		addr   string
		marked bool
		want   int
	}{
		{"127.0.0.1:9000", true, netfilter.PassMark},
		{"[::1]:9000", true, netfilter.PassMark},
		{"10.82.0.1:9000", true, netfilter.PassMark},
		{"[fd82::1]:9000", true, netfilter.PassMark},
		{"10.82.0.2:9000", true, 0},
		{"[fd82::2]:9000", true, 0},
		{"10.82.0.1:9000", false, 0},
	} {
		var mark int
		err := pod.Do(func() error {
			c, err := mirrorDialer{marked: tc.marked}.Dial(context.Background(), "tcp", tc.addr)
			if err != nil {
				return err
			}
			defer c.Close()
			rc, err := c.(*net.TCPConn).SyscallConn()
			if err != nil {
				return err
			}
			var serr error
			if err := rc.Control(func(fd uintptr) {
				mark, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK)
			}); err != nil {
				return err
			}
			return serr
		})
		if err != nil {
			t.Fatalf("dial %s: %v", tc.addr, err)
		}
		if mark != tc.want {
			t.Errorf("dial %s (redirect mode %v): SO_MARK %#x, want %#x", tc.addr, tc.marked, mark, tc.want)
		}
	}
}
