//go:build linux && kernel

package capture

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
)

// TestKernelCaptureExpr runs a compiled expression as the kernel filter: TCP and UDP traffic on
// two ports each, from an excluded and an included client address, and only what the
// expression selects reaches the capture.
func TestKernelCaptureExpr(t *testing.T) {
	server, client := testnet.New(t), testnet.New(t)
	excludedV4 := netip.MustParsePrefix("10.77.0.3/24")
	link, _ := testnet.Connect(t, server, []netip.Prefix{serverV4, serverV6}, client, []netip.Prefix{clientV4, excludedV4, clientV6})
	serveHTTP(t, server, "10.77.0.1:8080")
	serveHTTP(t, server, "[fd00:77::1]:8080")
	serveHTTP(t, server, "10.77.0.1:9090")
	// Datagrams to a port nobody listens on would draw ICMP errors; these must not pass either.
	for _, addr := range []string{"10.77.0.1:5353", "10.77.0.1:5354"} {
		var pc net.PacketConn
		if err := server.Do(func() error {
			var err error
			pc, err = net.ListenPacket("udp", addr)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		go io.Copy(io.Discard, readerOf(pc))
	}

	expr := mustParse(t, "(tcp port 8080 or udp port 5353) and not host "+excludedV4.Addr().String())
	c := openIn(t, server, Options{Interface: link.Name, Expr: &expr})

	dialer := func(local string) func(ctx context.Context, network, addr string) (net.Conn, error) {
		return func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := client.Do(func() error {
				d := net.Dialer{}
				if local != "" {
					ip := net.ParseIP(local)
					d.LocalAddr = &net.TCPAddr{IP: ip}
					if strings.HasPrefix(network, "udp") {
						d.LocalAddr = &net.UDPAddr{IP: ip}
					}
				}
				var err error
				conn, err = d.DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		}
	}
	from := map[string]func(ctx context.Context, network, addr string) (net.Conn, error){
		"included": dialer("10.77.0.2"),
		"excluded": dialer(excludedV4.Addr().String()),
		"v6":       dialer(""),
	}
	get := func(who, url string) {
		t.Helper()
		hc := &http.Client{Transport: &http.Transport{DialContext: from[who], DisableKeepAlives: true}, Timeout: 5 * time.Second}
		resp, err := hc.Get(url)
		if err != nil {
			t.Fatalf("GET %s from the %s address: %v", url, who, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	const datagrams = 5
	const closedUDP = "10.77.0.1:8080"
	closedPort := func(addr string) bool { return addr == closedUDP }
	send := func(who, addr, msg string) {
		t.Helper()
		conn, err := from[who](context.Background(), "udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		for i := range datagrams {
			if _, err := fmt.Fprintf(conn, "%s-%d", msg, i); err != nil && !closedPort(addr) {
				t.Fatal(err)
			}
		}
	}

	get("excluded", "http://10.77.0.1:8080/excluded-host")
	get("included", "http://10.77.0.1:9090/other-port")
	send("excluded", "10.77.0.1:5353", "excluded-udp")
	send("included", "10.77.0.1:5354", "other-udp-port")
	// Nobody listens: the ICMP error it draws fails the next write with "connection refused".
	send("included", closedUDP, "udp-to-tcp-port")
	get("included", "http://10.77.0.1:8080/wanted-v4")
	get("v6", "http://[fd00:77::1]:8080/wanted-v6")
	send("included", "10.77.0.1:5353", "wanted-udp")

	// Everything was sent; read until the queue has been quiet for a while, so that the
	// kernel's count can be compared with what arrived.
	got := collect(t, c, time.Second, nil)
	st, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Received != uint64(len(got)) || st.Dropped != 0 {
		t.Errorf("kernel counted %+v, read %d frames", st, len(got))
	}

	syns, udp := 0, 0
	for _, g := range got {
		proto, src, dst := ports(g.pkt)
		var addrs []string
		if n := g.pkt.NetworkLayer(); n != nil {
			addrs = []string{n.NetworkFlow().Src().String(), n.NetworkFlow().Dst().String()}
		}
		ok := (proto == "tcp" && (src == 8080 || dst == 8080) || proto == "udp" && (src == 5353 || dst == 5353)) &&
			len(addrs) == 2 && addrs[0] != excludedV4.Addr().String() && addrs[1] != excludedV4.Addr().String()
		if !ok {
			t.Errorf("frame %s %v %d -> %d passed %q", proto, addrs, src, dst, expr)
		}
		if tcp, _ := g.pkt.TransportLayer().(*layers.TCP); tcp != nil && tcp.SYN && !tcp.ACK {
			syns++
		}
		if proto == "udp" {
			udp++
		}
		for _, unwanted := range []string{"excluded", "other", "udp-to-tcp-port"} {
			if strings.Contains(payloadOf(g.pkt), unwanted) {
				t.Errorf("captured %q", payloadOf(g.pkt))
			}
		}
	}
	// Two connections were wanted (IPv4 and IPv6 to 8080), and every wanted datagram.
	if syns != 2 || udp != datagrams {
		t.Errorf("captured %d SYNs and %d datagrams in %d frames, want 2 and %d", syns, udp, len(got), datagrams)
	}
	for _, want := range []string{"GET /wanted-v4 ", "GET /wanted-v6 ", "wanted-udp-0", "wanted-udp-4"} {
		if !seenAll(want)(got) {
			t.Errorf("%q not captured in %d frames", want, len(got))
		}
	}
}

// TestKernelCaptureExprWithFilter combines Filter and Expr on lo, behind the loopback prefix.
func TestKernelCaptureExprWithFilter(t *testing.T) {
	ns := testnet.New(t)
	l := ns.Listen(t, "tcp", "127.0.0.1:8080")
	go func() { io.Copy(io.Discard, acceptOne(l)) }()
	expr := mustParse(t, "dst port 8080")
	c := openIn(t, ns, Options{Interface: "lo", Filter: &Filter{Proto: TCP, Port: 8080}, Expr: &expr})

	conn, err := ns.DialContext(context.Background(), "tcp", "127.0.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, "to-the-server")
	conn.Close()

	got := collect(t, c, time.Second, nil)
	n := 0
	for _, g := range got {
		if proto, src, dst := ports(g.pkt); proto != "tcp" || dst != 8080 {
			t.Errorf("frame %s %d -> %d passed tcp port 8080 and %q", proto, src, dst, expr)
		}
		if strings.Contains(payloadOf(g.pkt), "to-the-server") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("payload captured %d times on lo, want once (%d frames in all)", n, len(got))
	}
}

// readerOf reads a PacketConn's datagrams as a stream, for io.Copy.
func readerOf(pc net.PacketConn) io.Reader { return packetReader{pc} }

type packetReader struct{ pc net.PacketConn }

func (r packetReader) Read(b []byte) (int, error) {
	n, _, err := r.pc.ReadFrom(b)
	return n, err
}
