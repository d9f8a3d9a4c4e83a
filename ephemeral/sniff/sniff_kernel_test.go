//go:build linux && kernel

package sniff

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// TestKernelDump: a dump in a real namespace streams pcapng with the filtered traffic and ends with the
// kernel's counts, which is what the plugin writes to -w and shows.
func TestKernelDump(t *testing.T) {
	testnet.RequireRoot(t)
	server, client := testnet.New(t), testnet.New(t)
	testnet.Connect(t, server, []netip.Prefix{netip.MustParsePrefix("10.78.0.1/24")}, client, []netip.Prefix{netip.MustParsePrefix("10.78.0.2/24")})
	for _, port := range []string{"8080", "9090"} {
		l := server.Listen(t, "tcp", "10.78.0.1:"+port)
		srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello %s\n", r.URL.Path)
		})}
		go func() { _ = srv.Serve(l) }()
		t.Cleanup(func() { srv.Close() })
	}
	var c *capture.Capture
	if err := server.Do(func() error {
		var err error
		c, err = Open(wire.DumpSpec{Ports: []int{8080}, Filter: "tcp"}, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	var stats capture.Stats
	var dumpErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		stats, dumpErr = Dump(ctx, c, pw)
		pw.CloseWithError(dumpErr)
	}()
	var buf bytes.Buffer
	readDone := make(chan error, 1)
	go func() {
		_, err := io.Copy(&buf, pr)
		readDone <- err
	}()

	httpc := &http.Client{Transport: &http.Transport{DialContext: client.DialContext, DisableKeepAlives: true}}
	for _, url := range []string{"http://10.78.0.1:8080/a", "http://10.78.0.1:9090/other-port", "http://10.78.0.1:8080/b"} {
		resp, err := httpc.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	cancel()
	wg.Wait()
	if err := <-readDone; err != nil {
		t.Fatal(err)
	}
	if dumpErr != nil {
		t.Fatalf("Dump: %v", dumpErr)
	}

	var isb *pcapgo.NgInterfaceStatistics
	r, err := pcapgo.NewNgReader(&buf, pcapgo.NgReaderOptions{StatisticsCallback: func(_ int, s pcapgo.NgInterfaceStatistics) { isb = &s }})
	if err != nil {
		t.Fatal(err)
	}
	var n8080, other int
	var paths []string
	for {
		data, _, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default)
		tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if tcp == nil || (tcp.SrcPort != 8080 && tcp.DstPort != 8080) {
			other++
			continue
		}
		n8080++
		if bytes.HasPrefix(tcp.Payload, []byte("GET ")) {
			paths = append(paths, string(bytes.Fields(tcp.Payload)[1]))
		}
	}
	if other != 0 || n8080 == 0 {
		t.Errorf("captured %d packets of port 8080 and %d others; want only port 8080", n8080, other)
	}
	if fmt.Sprint(paths) != "[/a /b]" {
		t.Errorf("requests in the capture: %v, want [/a /b]", paths)
	}
	if isb == nil {
		t.Fatal("no interface statistics block at the end of the capture")
	}
	if isb.PacketsReceived != stats.Received || isb.PacketsDropped != 0 || stats.Received < uint64(n8080) {
		t.Errorf("statistics block %+v, capture stats %+v, packets read %d", *isb, stats, n8080)
	}
}
