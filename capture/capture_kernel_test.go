//go:build linux && kernel

package capture

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
)

var (
	serverV4 = netip.MustParsePrefix("10.77.0.1/24")
	clientV4 = netip.MustParsePrefix("10.77.0.2/24")
	serverV6 = netip.MustParsePrefix("fd00:77::1/64")
	clientV6 = netip.MustParsePrefix("fd00:77::2/64")
)

// pair makes a server and a client namespace joined by a veth and returns the server's end.
func pair(t testing.TB) (server, client *testnet.NS, serverLink testnet.Link) {
	t.Helper()
	server, client = testnet.New(t), testnet.New(t)
	serverLink, _ = testnet.Connect(t, server, []netip.Prefix{serverV4, serverV6}, client, []netip.Prefix{clientV4, clientV6})
	return server, client, serverLink
}

// openIn opens a capture inside ns; the capture is closed when the test ends.
func openIn(t *testing.T, ns *testnet.NS, opts Options) *Capture {
	t.Helper()
	var c *Capture
	if err := ns.Do(func() error {
		var err error
		c, err = Open(opts)
		return err
	}); err != nil {
		t.Fatalf("Open(%+v) in netns %q: %v", opts, ns.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// serveHTTP runs a real HTTP server on ns:addr until the test ends.
func serveHTTP(t *testing.T, ns *testnet.NS, addr string) {
	t.Helper()
	l := ns.Listen(t, "tcp", addr)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", r.URL.Path)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

// get does one HTTP request from inside ns over a fresh connection.
func get(t *testing.T, ns *testnet.NS, url string) {
	t.Helper()
	client := &http.Client{
		Transport: &http.Transport{DialContext: ns.DialContext, DisableKeepAlives: true},
		Timeout:   5 * time.Second,
	}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s from netns %q: %v", url, ns.Name, err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d, %v", url, resp.StatusCode, err)
	}
}

type captured struct {
	data []byte
	ci   gopacket.CaptureInfo
	pkt  gopacket.Packet
}

var errEnough = errors.New("seen enough")

// collect reads from c until done says so or the timeout passes, and closes c.
func collect(t *testing.T, c *Capture, timeout time.Duration, done func([]captured) bool) []captured {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var got []captured
	err := c.Run(ctx, func(data []byte, ci gopacket.CaptureInfo) error {
		got = append(got, captured{data: data, ci: ci, pkt: gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default)})
		if done != nil && done(got) {
			return errEnough
		}
		return nil
	})
	if err != nil && !errors.Is(err, errEnough) {
		t.Fatalf("Run: %v", err)
	}
	return got
}

func payloadOf(p gopacket.Packet) string {
	if app := p.ApplicationLayer(); app != nil {
		return string(app.Payload())
	}
	return ""
}

// ports returns the transport protocol and ports of a captured packet.
func ports(p gopacket.Packet) (string, uint16, uint16) {
	switch l := p.TransportLayer().(type) {
	case *layers.TCP:
		return "tcp", uint16(l.SrcPort), uint16(l.DstPort)
	case *layers.UDP:
		return "udp", uint16(l.SrcPort), uint16(l.DstPort)
	}
	if n := p.NetworkLayer(); n != nil {
		return n.LayerType().String(), 0, 0
	}
	return "?", 0, 0
}

func seenAll(wants ...string) func([]captured) bool {
	return func(got []captured) bool {
		for _, w := range wants {
			found := false
			for _, g := range got {
				if strings.Contains(payloadOf(g.pkt), w) {
					found = true
					break
				}
			}
			if !found {
				return false
			}
		}
		return true
	}
}

func TestKernelCaptureHTTP(t *testing.T) {
	server, client, link := pair(t)
	serveHTTP(t, server, "10.77.0.1:8080")
	serveHTTP(t, server, "[fd00:77::1]:8080")
	serveHTTP(t, server, "10.77.0.1:9090")

	c := openIn(t, server, Options{Interface: link.Name, Filter: &Filter{Proto: TCP, Port: 8080}})

	// The unwanted traffic goes first: the socket queue is FIFO, so anything of it that got
	// past the kernel filter would be read before the requests the loop below waits for.
	start := time.Now()
	get(t, client, "http://10.77.0.1:9090/other-port")
	get(t, client, "http://10.77.0.1:8080/over-ipv4")
	get(t, client, "http://[fd00:77::1]:8080/over-ipv6")
	requests := time.Since(start)

	v4Line, v6Line := "GET /over-ipv4 HTTP/1.1", "GET /over-ipv6 HTTP/1.1"
	// Everything was sent already; read until the queue has been quiet for a while, so the
	// kernel's count can be compared with what arrived.
	got := collect(t, c, 500*time.Millisecond, nil)
	st, err := c.Stats()
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	t.Logf("3 requests took %v; read %d frames; kernel: %+v", requests, len(got), st)
	// Received counts only frames that passed the filter, so this also shows that the
	// port 9090 exchange was dropped in the kernel, not in this process.
	if st.Dropped != 0 || st.Received != uint64(len(got)) {
		t.Errorf("kernel stats %+v for %d frames read", st, len(got))
	}
	if !seenAll(v4Line, v6Line)(got) {
		t.Fatalf("request lines %q and %q not captured in %d frames", v4Line, v6Line, len(got))
	}
	for _, g := range got {
		proto, src, dst := ports(g.pkt)
		if proto != "tcp" || (src != 8080 && dst != 8080) {
			t.Errorf("frame %s %d -> %d passed the tcp port 8080 filter", proto, src, dst)
		}
		if strings.Contains(payloadOf(g.pkt), "other-port") {
			t.Errorf("request to port 9090 captured")
		}
		if g.ci.InterfaceIndex != link.Index {
			t.Errorf("frame from interface %d, want %d (%s)", g.ci.InterfaceIndex, link.Index, link.Name)
		}
		if g.ci.CaptureLength != len(g.data) || g.ci.Length < g.ci.CaptureLength || g.ci.Timestamp.IsZero() {
			t.Errorf("inconsistent capture info %+v for %d bytes", g.ci, len(g.data))
		}
	}

	// Both file formats, read back with pcapgo's own readers.
	for _, format := range []Format{PCAP, PCAPNG} {
		var buf bytes.Buffer
		w, err := NewWriter(&buf, format, c.SnapLen(), c.Interfaces())
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range got {
			if err := w.WritePacket(g.ci, g.data); err != nil {
				t.Fatalf("%v: WritePacket: %v", format, err)
			}
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		var src PacketSource
		if format == PCAP {
			src, err = pcapgo.NewReader(&buf)
		} else {
			src, err = pcapgo.NewNgReader(&buf, pcapgo.DefaultNgReaderOptions)
		}
		if err != nil {
			t.Fatalf("%v: reader: %v", format, err)
		}
		var back []captured
		for _, r := range readAll(t, src) {
			back = append(back, captured{data: r.Data, ci: r.CI, pkt: gopacket.NewPacket(r.Data, layers.LayerTypeEthernet, gopacket.Default)})
		}
		if len(back) != len(got) || !seenAll(v4Line, v6Line)(back) {
			t.Errorf("%v: read back %d frames (want %d) or lost the request lines", format, len(back), len(got))
		}
	}
}

func TestKernelCaptureUDP(t *testing.T) {
	server, client, link := pair(t)
	c := openIn(t, server, Options{Interface: link.Name, Filter: &Filter{Proto: UDP, Port: 5353}, SnapLen: 128})

	send := func(network, addr, msg string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		conn, err := client.DialContext(ctx, network, addr)
		if err != nil {
			if network == "tcp" {
				return // refused is expected; the SYN went out
			}
			t.Fatalf("dial %s %s: %v", network, addr, err)
		}
		defer conn.Close()
		if _, err := io.WriteString(conn, msg); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing listens on the server, so the UDP datagrams draw ICMP port-unreachable errors
	// that quote the datagram's headers; the filter must not mistake them for UDP.
	send("udp", "10.77.0.1:5354", "wrong-port")
	send("tcp", "10.77.0.1:5353", "")
	send("udp", "[fd00:77::1]:5353", "right-v6")
	send("udp", "10.77.0.1:5353", "right-v4")

	got := collect(t, c, 10*time.Second, seenAll("right-v4", "right-v6"))
	if !seenAll("right-v4", "right-v6")(got) {
		t.Fatalf("datagrams to udp port 5353 not captured in %d frames", len(got))
	}
	for _, g := range got {
		if proto, src, dst := ports(g.pkt); proto != "udp" || (src != 5353 && dst != 5353) {
			t.Errorf("frame %s %d -> %d passed the udp port 5353 filter", proto, src, dst)
		}
		if len(g.data) > 128 {
			t.Errorf("frame of %d bytes exceeds the snap length 128", len(g.data))
		}
	}
}

func TestKernelCaptureSnapLen(t *testing.T) {
	server, client, link := pair(t)
	serveHTTP(t, server, "10.77.0.1:8080")
	const snap = 60
	c := openIn(t, server, Options{Interface: link.Name, Filter: &Filter{Proto: TCP, Port: 8080}, SnapLen: snap})
	get(t, client, "http://10.77.0.1:8080/"+strings.Repeat("x", 200))

	got := collect(t, c, 10*time.Second, func(got []captured) bool {
		for _, g := range got {
			if g.ci.Length > 200 {
				return true
			}
		}
		return false
	})
	long := 0
	for _, g := range got {
		if len(g.data) > snap || g.ci.CaptureLength > snap {
			t.Errorf("kept %d bytes, snap length is %d", len(g.data), snap)
		}
		if g.ci.Length > snap {
			long++
		}
	}
	if long == 0 {
		t.Errorf("no frame longer than the snap length reported its original length")
	}
}

// TestKernelCaptureLoopbackOnce checks that a frame on lo is captured once, although the kernel
// shows lo's packet sockets each frame leaving and again arriving.
func TestKernelCaptureLoopbackOnce(t *testing.T) {
	ns := testnet.New(t)
	l := ns.Listen(t, "tcp", "127.0.0.1:8080")
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		io.Copy(io.Discard, conn)
	}()
	c := openIn(t, ns, Options{Interface: "lo", Filter: &Filter{Proto: TCP, Port: 8080}})

	conn, err := ns.DialContext(context.Background(), "tcp", "127.0.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, "only-once")
	conn.Close()

	// Read for a while after the payload shows up, so a duplicate would be seen too.
	got := collect(t, c, time.Second, nil)
	n := 0
	for _, g := range got {
		if strings.Contains(payloadOf(g.pkt), "only-once") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("payload captured %d times on lo, want once (%d frames in all)", n, len(got))
	}
}

func TestKernelCaptureAllInterfaces(t *testing.T) {
	server, client, link := pair(t)
	serveHTTP(t, server, "10.77.0.1:8080")
	serveHTTP(t, server, "127.0.0.1:8080")
	c := openIn(t, server, Options{Filter: &Filter{Proto: TCP, Port: 8080}})

	names := map[int]string{}
	for _, ifc := range c.Interfaces() {
		names[ifc.Index] = ifc.Name
	}
	if names[link.Index] != link.Name || !containsValue(names, "lo") {
		t.Fatalf("Interfaces() = %v, want lo and %s", c.Interfaces(), link.Name)
	}

	get(t, client, "http://10.77.0.1:8080/via-veth")
	get(t, server, "http://127.0.0.1:8080/via-lo")
	got := collect(t, c, 10*time.Second, seenAll("GET /via-veth", "GET /via-lo"))

	from := map[string]string{}
	for _, g := range got {
		for _, path := range []string{"/via-veth", "/via-lo"} {
			if strings.Contains(payloadOf(g.pkt), "GET "+path) {
				from[path] = names[g.ci.InterfaceIndex]
			}
		}
	}
	if from["/via-veth"] != link.Name || from["/via-lo"] != "lo" {
		t.Errorf("requests captured on %v, want /via-veth on %s and /via-lo on lo", from, link.Name)
	}
}

func containsValue(m map[int]string, v string) bool {
	for _, x := range m {
		if x == v {
			return true
		}
	}
	return false
}

// TestKernelCaptureNoUnfilteredFramesAtOpen opens captures while other traffic is flowing:
// frames that reach a socket before its filter is attached must not be returned.
func TestKernelCaptureNoUnfilteredFramesAtOpen(t *testing.T) {
	server, client, link := pair(t)
	noise := server.Listen(t, "tcp", "10.77.0.1:9999")
	go func() { io.Copy(io.Discard, acceptOne(noise)) }()

	conn, err := client.DialContext(context.Background(), "tcp", "10.77.0.1:9999")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer conn.Close()
		buf := make([]byte, 1000)
		for ctx.Err() == nil {
			if _, err := conn.Write(buf); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })

	const rounds = 50
	leaked := 0
	for range rounds {
		var c *Capture
		if err := server.Do(func() error {
			var err error
			c, err = Open(Options{Interface: link.Name, Filter: &Filter{Proto: UDP, Port: 5353}})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		leaked += len(collect(t, c, 20*time.Millisecond, nil))
	}
	if leaked != 0 {
		t.Errorf("%d frames of the tcp port 9999 stream came out of %d captures filtered to udp port 5353", leaked, rounds)
	}
}

func acceptOne(l net.Listener) net.Conn {
	c, err := l.Accept()
	if err != nil {
		return nopConn{}
	}
	return c
}

type nopConn struct{ net.Conn }

func (nopConn) Read([]byte) (int, error) { return 0, io.EOF }

// TestKernelCaptureBurst sends a burst of TCP data as fast as the kernel takes it, over a veth
// and over lo, and checks that every byte of it was captured and nothing dropped: the ring must
// absorb what arrives faster than the capture is read.
func TestKernelCaptureBurst(t *testing.T) {
	const size = 4 << 20
	t.Run("veth", func(t *testing.T) {
		server, client, link := pair(t)
		testBurst(t, server, client, link.Name, "10.77.0.1:8080", size)
	})
	t.Run("lo", func(t *testing.T) {
		ns := testnet.New(t)
		testBurst(t, ns, ns, "lo", "127.0.0.1:8080", size)
	})
}

func testBurst(t *testing.T, server, client *testnet.NS, ifc, addr string, size int) {
	l := server.Listen(t, "tcp", addr)
	received := make(chan int64, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			received <- -1
			return
		}
		defer conn.Close()
		n, _ := io.Copy(io.Discard, conn)
		received <- n
	}()
	c := openIn(t, server, Options{Interface: ifc, Filter: &Filter{Proto: TCP, Port: 8080}})

	// The capture is read while the burst goes, as a dump reads it.
	var (
		frames int
		isn    uint32
		synced bool
		fin    bool
		segs   []span
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() {
		runDone <- c.Run(ctx, func(data []byte, _ gopacket.CaptureInfo) error {
			frames++
			p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.NoCopy)
			tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
			if tcp == nil || tcp.DstPort != 8080 {
				return nil
			}
			switch {
			case tcp.SYN:
				isn, synced = tcp.Seq, true
			case len(tcp.Payload) > 0 && synced:
				start := int64(tcp.Seq - isn - 1)
				segs = append(segs, span{start, start + int64(len(tcp.Payload))})
			}
			// One flow's packets can reach the ring out of order (veth hands each to the backlog of
			// the CPU that sent it), so the FIN may come before the last data: stop once the FIN
			// has come and every byte before it is in.
			fin = fin || tcp.FIN
			if fin && coverage(segs, int64(size)) == int64(size) {
				return errEnough
			}
			return nil
		})
	}()

	conn, err := client.DialContext(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := conn.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if n := <-received; n != int64(size) {
		t.Fatalf("server read %d bytes, want %d", n, size)
	}
	took := time.Since(start)
	var runErr error
	select {
	case runErr = <-runDone:
	case <-time.After(2 * time.Second): // bytes or the FIN were lost
		cancel()
		runErr = <-runDone
	}
	if runErr != nil && !errors.Is(runErr, errEnough) {
		t.Fatalf("Run: %v", runErr)
	}
	st, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	covered := coverage(segs, int64(size))
	t.Logf("%s: %d MiB in %v; %d frames read, %d of %d bytes captured; stats %+v", ifc, size>>20, took, frames, covered, size, st)
	if covered != int64(size) || st.Dropped != 0 {
		t.Errorf("%s: captured %d of %d bytes of the burst, kernel dropped %d frames", ifc, covered, size, st.Dropped)
	}
	if st.Received < uint64(frames) {
		t.Errorf("%s: kernel counted %d frames, %d were read", ifc, st.Received, frames)
	}
}

// span is a byte range [from, to) of a TCP stream, relative to its first data byte.
type span struct{ from, to int64 }

// coverage returns how many bytes of [0, size) the spans cover.
func coverage(spans []span, size int64) int64 {
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.from, b.from) })
	var covered, end int64
	for _, s := range spans {
		from, to := max(s.from, end, 0), min(s.to, size)
		if to > from {
			covered += to - from
			end = to
		}
	}
	return covered
}

// TestKernelCaptureStatsCountDrops fills a small ring while nobody reads the capture: the kernel
// must count what did not fit, and every frame it counted as received must come out.
func TestKernelCaptureStatsCountDrops(t *testing.T) {
	server, client, link := pair(t)
	sink := listenPacket(t, server, "10.77.0.1:5353")
	var delivered atomic.Int64
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := sink.ReadFrom(buf); err != nil {
				return
			}
			delivered.Add(1)
		}
	}()
	// A ring of four 128 KiB blocks holds about 2,200 of these frames, queued ones included.
	c := openIn(t, server, Options{Interface: link.Name, Filter: &Filter{Proto: UDP, Port: 5353}, SnapLen: 96, RingSize: 4 * minBlockSize})

	src := listenPacket(t, client, "10.77.0.2:0")
	dst := &net.UDPAddr{IP: net.IPv4(10, 77, 0, 1), Port: 5353}
	const sent = 20000
	msg := make([]byte, 64)
	for range sent {
		if _, err := src.WriteTo(msg, dst); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	// Wait until the server has had everything that got through, and the kernel has handed
	// the last block over.
	for n := int64(-1); n != delivered.Load(); {
		n = delivered.Load()
		time.Sleep(100 * time.Millisecond)
	}
	live, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	got := collect(t, c, time.Second, nil)
	final, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sent %d datagrams, server got %d, read %d frames; stats %+v, at the end %+v", sent, delivered.Load(), len(got), live, final)
	if live.Dropped == 0 || live.RingFull == 0 {
		t.Errorf("no drops counted with a full ring: %+v", live)
	}
	if final.Received != uint64(len(got)) {
		t.Errorf("kernel placed %d frames in the ring, %d came out of the capture", final.Received, len(got))
	}
	if final.Dropped != live.Dropped || final.Received != live.Received {
		t.Errorf("counts changed without traffic: %+v, then %+v after Close", live, final)
	}
	// The packet socket sees a datagram before the server's socket does.
	if total := final.Received + final.Dropped; total > sent || total < uint64(delivered.Load()) {
		t.Errorf("kernel counted %d frames for %d sent, %d delivered", total, sent, delivered.Load())
	}
}

func listenPacket(t *testing.T, ns *testnet.NS, addr string) net.PacketConn {
	t.Helper()
	var pc net.PacketConn
	if err := ns.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// TestKernelCaptureCloseIsPrompt closes an idle capture, whose readers wait in poll(2): Close must
// return although no packet ever wakes them, and leave no goroutine behind.
func TestKernelCaptureCloseIsPrompt(t *testing.T) {
	server, _, _ := pair(t)
	before := runtime.NumGoroutine()
	c := openIn(t, server, Options{Filter: &Filter{Proto: TCP, Port: 8080}})
	readErr := make(chan error, 1)
	go func() {
		_, _, err := c.ReadPacketData()
		readErr <- err
	}()
	time.Sleep(50 * time.Millisecond)

	// The readers notice Close at their next poll timeout; a Close that waits for a packet (none
	// comes to the idle capture) would outlast the wait below.
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Close of an idle capture did not return")
	}
	select {
	case err := <-readErr:
		if !errors.Is(err, io.EOF) {
			t.Errorf("ReadPacketData after Close: %v, want io.EOF", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("ReadPacketData still blocked after Close")
	}
	if _, err := c.Stats(); err != nil {
		t.Errorf("Stats after Close: %v", err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after Close, %d before Open", n, before)
	}
}
