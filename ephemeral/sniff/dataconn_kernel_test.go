//go:build linux && kernel

package sniff

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// runDump captures with c into a buffer until the returned function is called, which returns the
// pcapng bytes.
func runDump(t *testing.T, c *capture.Capture) (stop func() []byte) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var buf bytes.Buffer
	done := make(chan error, 1)
	go func() {
		_, err := Dump(ctx, c, &buf)
		done <- err
	}()
	return func() []byte {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Dump: %v", err)
		}
		return buf.Bytes()
	}
}

// tcpPackets reads a pcapng capture's TCP segments.
func tcpPackets(t *testing.T, pcap []byte) []*layers.TCP {
	t.Helper()
	r, err := pcapgo.NewNgReader(bytes.NewReader(pcap), pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	var out []*layers.TCP
	for {
		data, _, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default)
		if tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP); ok {
			out = append(out, tcp)
		}
	}
}

func hasPort(tcp *layers.TCP, port int) bool {
	return int(tcp.SrcPort) == port || int(tcp.DstPort) == port
}

// TestKernelDataConnectionOnLo runs a real data connection (TLS, secret, yamux, one stream) over the
// lo of a namespace next to an app connection, with two captures of every interface there:
//   - the agent's dump, without port or filter, which must hold the app's packets and none of the
//     data connection's (it once captured its own tunnel: 756 MB in 12 s, the secret inside);
//   - a neighbour's capture (any container with NET_RAW), which sees the data connection and must
//     find neither the session secret nor the stream's bytes in it.
func TestKernelDataConnectionOnLo(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.New(t)
	dataLn := ns.Listen(t, "tcp", "127.0.0.1:0")
	appLn := ns.Listen(t, "tcp", "127.0.0.1:0")
	dataPort, appPort := dataLn.Addr().(*net.TCPAddr).Port, appLn.Addr().(*net.TCPAddr).Port

	var dump, neighbour *capture.Capture
	if err := ns.Do(func() error {
		var err error
		if dump, err = Open(wire.DumpSpec{}, []int{dataPort}); err != nil {
			return err
		}
		neighbour, err = Open(wire.DumpSpec{}, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	stopDump, stopNeighbour := runDump(t, dump), runDump(t, neighbour)

	key, err := wire.NewDataKey()
	if err != nil {
		t.Fatal(err)
	}
	secret, err := wire.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(2)
	go func() { // the agent: one data connection, whose streams echo
		defer wg.Done()
		c, err := dataLn.Accept()
		if err != nil {
			return
		}
		m, err := (&wire.DataServer{Key: key, Secret: secret, Mux: wire.DefaultMuxConfig()}).Accept(c)
		if err != nil {
			t.Errorf("agent handshake: %v", err)
			return
		}
		defer m.Close()
		in, err := m.Accept(context.Background())
		if err != nil {
			return
		}
		st, err := in.Accept()
		if err != nil {
			return
		}
		_, _ = io.Copy(st, st)
		_ = st.CloseWrite()
		<-m.Done()
	}()
	go func() { // the app: echoes one connection
		defer wg.Done()
		c, err := appLn.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()

	conn, err := ns.DialContext(context.Background(), "tcp", dataLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	m, err := wire.ClientTunnel(context.Background(), conn, key.Pin(), secret, wire.DefaultMuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	payload := []byte("Authorization: Bearer tok-5e1f0d")
	st, err := m.Open(context.Background(), wire.OpenRequest{Kind: wire.KindDial, Network: wire.NetworkTCP, Address: "app:80"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write(payload); err != nil {
		t.Fatal(err)
	}
	_ = st.CloseWrite()
	if back, err := io.ReadAll(st); err != nil || !bytes.Equal(back, payload) {
		t.Fatalf("echo through the tunnel: %q, %v", back, err)
	}
	m.Close()

	app, err := ns.DialContext(context.Background(), "tcp", appLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := app.Write([]byte("hello app")); err != nil {
		t.Fatal(err)
	}
	_ = app.(*net.TCPConn).CloseWrite()
	if _, err := io.ReadAll(app); err != nil {
		t.Fatal(err)
	}
	app.Close()

	var nApp, nData int
	for _, tcp := range tcpPackets(t, stopDump()) {
		switch {
		case hasPort(tcp, dataPort):
			nData++
		case hasPort(tcp, appPort):
			nApp++
		}
	}
	if nData != 0 || nApp == 0 {
		t.Errorf("the dump without a filter holds %d packets of the data connection and %d of the app; want none and some", nData, nApp)
	}

	var seen []byte
	nData = 0
	for _, tcp := range tcpPackets(t, stopNeighbour()) {
		if hasPort(tcp, dataPort) {
			nData++
			seen = append(seen, tcp.Payload...)
		}
	}
	if nData == 0 {
		t.Fatal("the neighbour's capture holds no packet of the data connection: the test shows nothing")
	}
	if bytes.Contains(seen, secret[:]) {
		t.Error("a capture of lo holds the session secret")
	}
	if bytes.Contains(seen, payload) {
		t.Error("a capture of lo holds a stream's bytes in clear")
	}
}

// TestKernelExcludeFollowsSessions: a dump that runs while another session starts leaves that
// session's data port out from the moment Exclude returns, keeps its own filter, and captures the port
// again once the session has ended (the app may reuse it).
func TestKernelExcludeFollowsSessions(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.New(t)
	later := ns.Listen(t, "tcp", "127.0.0.1:0") // the data port of a session that starts after the dump
	other := ns.Listen(t, "tcp", "127.0.0.1:0") // outside the dump's own filter
	laterPort, otherPort := later.Addr().(*net.TCPAddr).Port, other.Addr().(*net.TCPAddr).Port
	for _, ln := range []net.Listener{later, other} {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					_, _ = io.Copy(c, c)
				}()
			}
		}()
	}
	send := func(ln net.Listener, msg string) {
		t.Helper()
		c, err := ns.DialContext(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		_ = c.(*net.TCPConn).CloseWrite()
		if back, err := io.ReadAll(c); err != nil || string(back) != msg {
			t.Fatalf("echo of %q: %q, %v", msg, back, err)
		}
	}

	spec := wire.DumpSpec{Filter: "not port " + strconv.Itoa(otherPort)}
	var c *capture.Capture
	if err := ns.Do(func() (err error) {
		c, err = Open(spec, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	stop := runDump(t, c)
	if err := Exclude(c, spec, []int{laterPort}); err != nil {
		t.Fatal(err)
	}
	send(later, "while-the-session-runs")
	send(other, "outside-the-filter")
	if err := Exclude(c, spec, nil); err != nil {
		t.Fatal(err)
	}
	send(later, "after-the-session-ended")

	var payload []byte
	for _, tcp := range tcpPackets(t, stop()) {
		if hasPort(tcp, otherPort) {
			t.Errorf("the dump's own filter (%q) was lost: a packet of port %d was captured", spec.Filter, otherPort)
		}
		payload = append(payload, tcp.Payload...)
	}
	if bytes.Contains(payload, []byte("while-the-session-runs")) {
		t.Error("the dump captured the data port of a session that started after it")
	}
	if !bytes.Contains(payload, []byte("after-the-session-ended")) {
		t.Error("the dump does not capture the port again once its session ended")
	}
	if err := Exclude(c, spec, []int{laterPort}); err != nil {
		t.Errorf("Exclude on a closed capture = %v, want nil (nothing left to filter)", err)
	}
}
