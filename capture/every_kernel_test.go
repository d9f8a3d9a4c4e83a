//go:build linux && kernel

package capture

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
)

// packetSockets counts the packet sockets open in ns (/proc/net/packet shows the namespace of the
// thread that reads it).
func packetSockets(t *testing.T, ns *testnet.NS) int {
	t.Helper()
	n := 0
	if err := ns.Do(func() error {
		f, err := os.Open("/proc/thread-self/net/packet")
		if err != nil {
			return err
		}
		defer f.Close()
		s := bufio.NewScanner(f)
		for s.Scan() {
			n++
		}
		n-- // the header line
		return s.Err()
	}); err != nil {
		t.Fatalf("read packet sockets: %v", err)
	}
	return n
}

// addTun makes a tun device with address 10.99.0.1/24 in ns and returns its index and its
// reading end, non-blocking so that reads take deadlines.
func addTun(t *testing.T, ns *testnet.NS) (int, *os.File) {
	t.Helper()
	var tun *os.File
	// TUNSETIFF creates the device in the caller's namespace.
	if err := ns.Do(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq("tltun0")
		if err != nil {
			unix.Close(fd)
			return err
		}
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF: %w", err)
		}
		tun = os.NewFile(uintptr(fd), "tltun0")
		return nil
	}); err != nil {
		t.Fatalf("add tun device: %v", err)
	}
	t.Cleanup(func() { tun.Close() })
	nl := ns.Netlink()
	l, err := nl.LinkByName("tltun0")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("10.99.0.1/24")
	if err := nl.AddrAdd(l, addr); err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index, tun
}

// TestKernelCaptureEveryInterfaceOneSocket: a capture of every interface holds one packet socket,
// and so one ring, however many interfaces the namespace has (a node's, seen from a hostNetwork
// pod, has one per pod); frames of an interface without an Ethernet header (a tun device's bare IP
// packets) stay out of it, as they did when such interfaces got no ring.
func TestKernelCaptureEveryInterfaceOneSocket(t *testing.T) {
	server, client, link := pair(t)
	nl := server.Netlink()
	for i := range 4 {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("tlpod%d", i)}, PeerName: fmt.Sprintf("tlpod%dp", i)}
		if err := nl.LinkAdd(veth); err != nil {
			t.Fatalf("add veth: %v", err)
		}
		for _, name := range []string{veth.Name, veth.PeerName} {
			l, err := nl.LinkByName(name)
			if err == nil {
				err = nl.LinkSetUp(l)
			}
			if err != nil {
				t.Fatalf("set %q up: %v", name, err)
			}
		}
	}
	tunIndex, tun := addTun(t, server)
	serveHTTP(t, server, "10.77.0.1:8080")

	before := packetSockets(t, server)
	c := openIn(t, server, Options{})
	if got := packetSockets(t, server) - before; got != 1 {
		t.Errorf("the capture holds %d packet sockets, want 1", got)
	}
	// lo, the veth to the client, four pairs and the tun device: the tun is not Ethernet.
	if got := len(c.Interfaces()); got != 10 {
		t.Errorf("Interfaces() = %v, want 10", c.Interfaces())
	}

	// A SYN through the tun device: it reaches the device (read back from it) and so its packet
	// taps, but not the capture.
	dialCtx, stopDial := context.WithCancel(context.Background())
	dialed := make(chan struct{})
	go func() {
		defer close(dialed)
		_ = server.Do(func() error {
			var d net.Dialer
			conn, err := d.DialContext(dialCtx, "tcp", "10.99.0.5:8080")
			if err == nil {
				conn.Close()
			}
			return nil
		})
	}()
	// The dial never gets an answer; it ends before the namespace does.
	defer func() { stopDial(); <-dialed }()
	_ = tun.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		b := make([]byte, 1500)
		n, err := tun.Read(b)
		if err != nil {
			t.Fatalf("read the SYN from the tun device: %v", err)
		}
		p := gopacket.NewPacket(b[:n], layers.LayerTypeIPv4, gopacket.Default)
		if tcp, ok := p.TransportLayer().(*layers.TCP); ok && tcp.SYN && tcp.DstPort == 8080 {
			break
		}
	}
	get(t, client, "http://10.77.0.1:8080/via-veth")
	got := collect(t, c, 10*time.Second, seenAll("GET /via-veth"))
	for _, g := range got {
		if g.ci.InterfaceIndex == tunIndex {
			t.Fatalf("captured a frame of the tun device: % x", g.data[:min(len(g.data), 40)])
		}
	}
	if !strings.Contains(payloadOf(got[len(got)-1].pkt), "GET /via-veth") {
		t.Errorf("the request on %s was not captured", link.Name)
	}
	for _, g := range got {
		if strings.Contains(payloadOf(g.pkt), "GET /via-veth") && g.ci.InterfaceIndex != link.Index {
			t.Errorf("the request was captured on interface %d, want %s (%d)", g.ci.InterfaceIndex, link.Name, link.Index)
		}
	}
}
