package wire

import (
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/klauspost/compress/s2"
)

// portForwardMiBps is what kubectl port-forward carries on our test cluster; the projection below
// says what a stream would reach if the wire, not the CPU, were the limit.
const portForwardMiBps = 95.0

func benchPayloads() map[string][]byte {
	return map[string][]byte{
		"json":   jsonBytes(1, 8<<20),
		"random": randomBytes(1, 8<<20),
	}
}

// BenchmarkCodec measures one block codec on one core, without the tunnel.
func BenchmarkCodec(b *testing.B) {
	for name, p := range benchPayloads() {
		for _, mode := range []string{"s2", "s2better", "zstd"} {
			b.Run(name+"/"+mode, func(b *testing.B) {
				c := newCodecs()
				defer c.close()
				dst := make([]byte, maxEncodedBlock())
				var in, out int
				b.SetBytes(MaxBlockSize)
				b.ResetTimer()
				for i := range b.N {
					off := (i * MaxBlockSize) % (len(p) - MaxBlockSize)
					src := p[off : off+MaxBlockSize]
					var enc []byte
					switch mode {
					case "s2":
						enc = s2.Encode(dst, src)
					case "s2better":
						enc = s2.EncodeBetter(dst, src)
					case "zstd":
						z, _, _ := c.zstd()
						enc = z.EncodeAll(src, dst[:0])
					}
					in += len(src)
					out += len(enc)
				}
				b.ReportMetric(float64(in)/float64(out), "ratio")
			})
		}
	}
}

// BenchmarkStreamThroughput pushes one stream through a tunnel over loopback TCP, as the plugin
// pushes a download through port-forward: the writer frames and compresses, the reader decodes.
func BenchmarkStreamThroughput(b *testing.B) {
	for name, p := range benchPayloads() {
		for _, c := range []Compression{CompressionNone, CompressionS2, CompressionZstd} {
			b.Run(fmt.Sprintf("%s/%s", name, c), func(b *testing.B) {
				cc, sc := tcpPair(b)
				counted := &countingConn{Conn: cc}
				client, err := Client(counted, DefaultMuxConfig())
				if err != nil {
					b.Fatal(err)
				}
				server, err := Server(sc, DefaultMuxConfig())
				if err != nil {
					b.Fatal(err)
				}
				defer client.Close()
				defer server.Close()
				done := make(chan int64, 1)
				go func() {
					in, err := server.Accept(context.Background())
					if err != nil {
						done <- -1
						return
					}
					st, _ := in.Accept()
					n, _ := io.Copy(io.Discard, st)
					st.Close()
					done <- n
				}()
				st, err := client.Open(context.Background(), dialReq("sink:1", c))
				if err != nil {
					b.Fatal(err)
				}
				const chunk = 256 << 10
				b.SetBytes(chunk)
				start := counted.written()
				b.ResetTimer()
				for i := range b.N {
					off := (i * chunk) % (len(p) - chunk)
					if _, err := st.Write(p[off : off+chunk]); err != nil {
						b.Fatal(err)
					}
				}
				_ = st.CloseWrite()
				got := <-done
				b.StopTimer()
				st.Close()
				if got != int64(b.N)*chunk {
					b.Fatalf("sink got %d bytes, want %d", got, int64(b.N)*chunk)
				}
				ratio := float64(got) / float64(counted.written()-start)
				mibps := float64(got) / (1 << 20) / b.Elapsed().Seconds()
				b.ReportMetric(ratio, "ratio")
				b.ReportMetric(min(mibps, portForwardMiBps*ratio), "pf-MiB/s")
			})
		}
	}
}

// BenchmarkStreamRoundTrip is one small request and its answer on an open stream, over loopback TCP:
// the latency a kept-alive HTTP request through the tunnel pays (the chain's hops not included).
func BenchmarkStreamRoundTrip(b *testing.B) {
	cc, sc := tcpPair(b)
	client, err := Client(cc, DefaultMuxConfig())
	if err != nil {
		b.Fatal(err)
	}
	server, err := Server(sc, DefaultMuxConfig())
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	defer server.Close()
	go func() {
		in, err := server.Accept(context.Background())
		if err != nil {
			return
		}
		st, _ := in.Accept()
		_, _ = io.Copy(st, st)
		st.Close()
	}()
	st, err := client.Open(context.Background(), dialReq("echo:1", CompressionNone))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	msg, buf := make([]byte, 64), make([]byte, 64)
	b.ResetTimer()
	for range b.N {
		if _, err := st.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(st, buf); err != nil {
			b.Fatal(err)
		}
	}
}
