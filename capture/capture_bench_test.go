//go:build linux && kernel

package capture

import (
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
)

// BenchmarkKernelCapture streams TCP across a veth while capturing it on the receiving end,
// and reports what the capture kept up with. Run it with
//
//	go test -tags kernel -run '^$' -bench Kernel ./capture/
func BenchmarkKernelCapture(b *testing.B) {
	for _, snap := range []int{96, DefaultSnapLen} {
		b.Run(map[int]string{96: "headers", DefaultSnapLen: "full"}[snap], func(b *testing.B) {
			benchmarkCapture(b, snap)
		})
	}
}

func benchmarkCapture(b *testing.B, snapLen int) {
	server, client, link := pair(b)
	l := server.Listen(b, "tcp", "10.77.0.1:8080")
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(io.Discard, c)
	}()

	var c *Capture
	if err := server.Do(func() error {
		var err error
		c, err = Open(Options{Interface: link.Name, Filter: &Filter{Proto: TCP, Port: 8080}, SnapLen: snapLen})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	var frames, bytes atomic.Int64
	runDone := make(chan error, 1)
	go func() {
		runDone <- c.Run(context.Background(), func(data []byte, _ gopacket.CaptureInfo) error {
			frames.Add(1)
			bytes.Add(int64(len(data)))
			return nil
		})
	}()

	conn, err := client.DialContext(context.Background(), "tcp", "10.77.0.1:8080")
	if err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if _, err := conn.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	conn.Close()
	elapsed := time.Since(start)
	time.Sleep(200 * time.Millisecond) // let the reader drain the socket
	b.StopTimer()
	c.Close()
	if err := <-runDone; err != nil {
		b.Fatal(err)
	}
	st, _ := c.Stats()
	b.ReportMetric(float64(frames.Load())/elapsed.Seconds(), "frames/s")
	b.ReportMetric(float64(bytes.Load())/elapsed.Seconds()/1e6, "captured-MB/s")
	b.ReportMetric(float64(st.Dropped), "dropped")
	b.ReportMetric(float64(st.RingFull), "ring-full")
	b.ReportMetric(float64(frames.Load()), "frames")
}

// BenchmarkKernelCaptureClose reports how long Close of an idle capture takes, its readers waiting
// in poll(2) (about one poll timeout); TestKernelCaptureCloseIsPrompt only requires that it returns.
//
//	TRAFFICLAB_KERNEL_TESTS=1 go test -run '^$' -bench KernelCaptureClose ./capture/
func BenchmarkKernelCaptureClose(b *testing.B) {
	server, _, link := pair(b)
	for b.Loop() {
		b.StopTimer()
		var c *Capture
		if err := server.Do(func() error {
			var err error
			c, err = Open(Options{Interface: link.Name, Filter: &Filter{Proto: TCP, Port: 8080}})
			return err
		}); err != nil {
			b.Fatal(err)
		}
		read := make(chan error, 1)
		go func() {
			_, _, err := c.ReadPacketData()
			read <- err
		}()
		b.StartTimer()
		if err := c.Close(); err != nil {
			b.Fatal(err)
		}
		<-read
	}
}
