//go:build linux

package netstack_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/fdbased"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/netstack"
)

// These tests need no TUN device and no root: the stack under test reads a SOCK_SEQPACKET socket
// (fdbased treats it like a TUN: one IP packet per message), and a second gVisor stack on the other
// end plays the sandboxed command's kernel.

const testMTU = 65520

var (
	clientV4 = netip.MustParseAddr("198.18.0.2")
	clientV6 = netip.MustParseAddr("fd00:7472:6c::2")
)

// dialer routes the command's destinations to real host sockets and records what it was asked.
type dialer struct {
	routes map[string]string // "network address" -> host address; missing means refused
	// block is a "network address" whose dial waits for its context; blocked closes when it does.
	block   string
	blocked chan struct{}

	mu    sync.Mutex
	asked []string
}

func (d *dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	d.mu.Lock()
	d.asked = append(d.asked, network+" "+address)
	to, ok := d.routes[network+" "+address]
	d.mu.Unlock()
	if network+" "+address == d.block {
		close(d.blocked)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if !ok {
		return nil, fmt.Errorf("dial %s %s: %w", network, address, unix.ECONNREFUSED)
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, to)
}

func (d *dialer) askedFor() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.asked...)
}

type client struct {
	st *stack.Stack
}

// setup starts the stack under test and a client stack wired to it. Both are gone, and their
// goroutines with them, when the test ends.
func setup(t *testing.T, d *dialer, cfg netstack.Config) (*netstack.Stack, *client) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		// A full socket drops packets (fdbased does not block); TCP would recover, slowly.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 8<<20)
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	tun := os.NewFile(uintptr(fds[0]), "tun")
	cfg.MTU = testMTU
	cfg.Dialer = d
	ns, err := netstack.New(tun, cfg)
	tun.Close() // New keeps its own descriptor.
	if err != nil {
		unix.Close(fds[1])
		t.Fatal(err)
	}

	link, err := fdbased.New(&fdbased.Options{FDs: []int{fds[1]}, MTU: testMTU})
	if err != nil {
		t.Fatal(err)
	}
	st := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	if terr := st.CreateNIC(1, link); terr != nil {
		t.Fatal(terr)
	}
	for _, a := range []netip.Addr{clientV4, clientV6} {
		proto := ipv4.ProtocolNumber
		if a.Is6() {
			proto = ipv6.ProtocolNumber
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(a.AsSlice()).WithPrefix()}
		if terr := st.AddProtocolAddress(1, pa, stack.AddressProperties{}); terr != nil {
			t.Fatal(terr)
		}
	}
	st.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}, {Destination: header.IPv6EmptySubnet, NIC: 1}})
	t.Cleanup(func() {
		ns.Close()
		st.Destroy()
		unix.Close(fds[1])
	})
	return ns, &client{st: st}
}

func fullAddr(t *testing.T, s string) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	t.Helper()
	ap := netip.MustParseAddrPort(s)
	proto := ipv4.ProtocolNumber
	if ap.Addr().Is6() {
		proto = ipv6.ProtocolNumber
	}
	return tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFromSlice(ap.Addr().AsSlice()), Port: ap.Port()}, proto
}

func (c *client) dialTCP(t *testing.T, addr string) (*gonet.TCPConn, error) {
	t.Helper()
	fa, proto := fullAddr(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return gonet.DialContextTCP(ctx, c.st, fa, proto)
}

func (c *client) dialUDP(t *testing.T, addr string) *gonet.UDPConn {
	t.Helper()
	fa, proto := fullAddr(t, addr)
	conn, err := gonet.DialUDP(c.st, nil, &fa, proto)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// echoTCP answers every connection with what it read, then half-closes.
func echoTCP(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
				_ = c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().String()
}

func echoUDP(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(append([]byte("echo:"), buf[:n]...), from)
		}
	}()
	return pc.LocalAddr().String()
}

func TestTCPHalfCloseBothWays(t *testing.T) {
	for _, dst := range []string{"10.99.0.5:8080", "[fd00:1::5]:8080"} {
		t.Run(dst, func(t *testing.T) {
			d := &dialer{routes: map[string]string{"tcp " + dst: echoTCP(t)}}
			_, c := setup(t, d, netstack.Config{})
			conn, err := c.dialTCP(t, dst)
			if err != nil {
				t.Fatalf("dial through the stack: %v", err)
			}
			defer conn.Close()
			payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
			go func() {
				_, _ = conn.Write(payload)
				_ = conn.CloseWrite()
			}()
			got, err := io.ReadAll(conn)
			if err != nil {
				t.Fatalf("read echo: %v", err)
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("echo: got %d bytes, want %d identical bytes", len(got), len(payload))
			}
			if asked := d.askedFor(); len(asked) != 1 || asked[0] != "tcp "+dst {
				t.Fatalf("dialer asked for %q, want [%q]", asked, "tcp "+dst)
			}
		})
	}
}

func TestTCPRefusedIsReset(t *testing.T) {
	d := &dialer{}
	_, c := setup(t, d, netstack.Config{})
	// A refusal, not a timeout: the command learns at once that nobody listens.
	conn, err := c.dialTCP(t, "10.99.0.6:81")
	if err == nil {
		conn.Close()
		t.Fatal("dial succeeded, want connection refused")
	}
	if !strings.Contains(err.Error(), "refused") {
		t.Fatalf("dial error %q, want connection refused", err)
	}
}

func TestTCPRemoteResetReachesCommand(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		// Reset only once the command is connected and has sent something.
		_, _ = c.Read(make([]byte, 2))
		_, _ = c.Write([]byte("partial"))
		_ = c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}()
	d := &dialer{routes: map[string]string{"tcp 10.99.0.5:80": ln.Addr().String()}}
	_, c := setup(t, d, netstack.Config{})
	conn, err := c.dialTCP(t, "10.99.0.5:80")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(conn)
	if err == nil {
		t.Fatal("read ended cleanly, want the remote's reset")
	}
}

func TestUDPFlowAndIdleTimeout(t *testing.T) {
	d := &dialer{routes: map[string]string{"udp 10.99.0.7:9999": echoUDP(t)}}
	_, c := setup(t, d, netstack.Config{UDPIdleTimeout: 300 * time.Millisecond})
	conn := c.dialUDP(t, "10.99.0.7:9999")
	buf := make([]byte, 65536)
	for i := range 3 {
		msg := fmt.Sprintf("ping %d", i)
		if _, err := conn.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if got := string(buf[:n]); got != "echo:"+msg {
			t.Fatalf("got %q, want %q", got, "echo:"+msg)
		}
	}
	if asked := d.askedFor(); len(asked) != 1 {
		t.Fatalf("dialer asked %q, want one flow for three datagrams", asked)
	}
	// A datagram after the idle timeout starts a new flow.
	time.Sleep(600 * time.Millisecond)
	if _, err := conn.Write([]byte("again")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(buf); err != nil {
		t.Fatalf("after idle: %v", err)
	}
	if asked := d.askedFor(); len(asked) != 2 {
		t.Fatalf("dialer asked %q, want a second flow after the idle timeout", asked)
	}
}

func TestLargeUDPDatagram(t *testing.T) {
	d := &dialer{routes: map[string]string{"udp [fd00:1::7]:9999": echoUDP(t)}}
	_, c := setup(t, d, netstack.Config{})
	conn := c.dialUDP(t, "[fd00:1::7]:9999")
	msg := bytes.Repeat([]byte{'x'}, 60000)
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65536)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != len("echo:")+len(msg) {
		t.Fatalf("got %d bytes, want %d", n, len("echo:")+len(msg))
	}
}

// TestCloseLeavesNoGoroutines closes the stack while a connection, a UDP flow and a dial are open.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Run("close with everything open", func(t *testing.T) {
		d := &dialer{
			routes: map[string]string{
				"tcp 10.99.0.5:8080": echoTCP(t),
				"udp 10.99.0.7:9999": echoUDP(t),
			},
			block:   "tcp 10.99.0.9:1",
			blocked: make(chan struct{}),
		}
		ns, c := setup(t, d, netstack.Config{})
		conn, err := c.dialTCP(t, "10.99.0.5:8080")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		buf := make([]byte, 16)
		if _, err := conn.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(conn, buf[:1]); err != nil {
			t.Fatal(err)
		}
		u := c.dialUDP(t, "10.99.0.7:9999")
		if _, err := u.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		_ = u.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := u.Read(buf); err != nil {
			t.Fatal(err)
		}
		pending := make(chan error, 1)
		go func() {
			c, err := c.dialTCP(t, "10.99.0.9:1")
			if err == nil {
				c.Close()
			}
			pending <- err
		}()
		<-d.blocked

		if err := ns.Close(); err != nil {
			t.Fatalf("close: %v", err)
		}
		// The command's side sees its connection reset and its pending connect fail.
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(conn); err == nil {
			t.Error("connection ended cleanly after Close, want a reset")
		}
		if err := <-pending; err == nil {
			t.Error("pending connect succeeded after Close")
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after Close, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}
