package wire

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

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
			for _, sec := range []string{"plain", "tls"} {
				b.Run(fmt.Sprintf("%s/%s/%s", name, c, sec), func(b *testing.B) {
					benchThroughput(b, p, c, sec == "tls")
				})
			}
		}
	}
}

// benchPair is a tunnel over loopback TCP with the client's writes counted: in clear as protocol 1
// ran it, or with protocol 2's handshake (TLS 1.3 pinned, the secret inside), to show what TLS costs.
func benchPair(b *testing.B, withTLS bool) (client, server *Mux, counted *countingConn) {
	b.Helper()
	cc, sc := tcpPair(b)
	counted = &countingConn{Conn: cc}
	var err error
	if !withTLS {
		if client, err = Client(counted, DefaultMuxConfig()); err != nil {
			b.Fatal(err)
		}
		if server, err = Server(sc, DefaultMuxConfig()); err != nil {
			b.Fatal(err)
		}
		return client, server, counted
	}
	key, secret := testKey(b), testSecret(b)
	type res struct {
		m   *Mux
		err error
	}
	sr := make(chan res, 1)
	go func() {
		m, err := (&DataServer{Key: key, Secret: secret, Mux: DefaultMuxConfig()}).Accept(sc)
		sr <- res{m, err}
	}()
	if client, err = ClientTunnel(context.Background(), counted, key.Pin(), secret, DefaultMuxConfig()); err != nil {
		b.Fatal(err)
	}
	r := <-sr
	if r.err != nil {
		b.Fatal(r.err)
	}
	return client, r.m, counted
}

func benchThroughput(b *testing.B, p []byte, c Compression, withTLS bool) {
	client, server, counted := benchPair(b, withTLS)
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
}

// BenchmarkStreamRoundTrip is one small request and its answer on an open stream, over loopback TCP:
// the latency a kept-alive HTTP request through the tunnel pays (the chain's hops not included).
//
// "paced" leaves a pause between round trips, as between kept-alive requests through port-forward
// (at least a few hundred microseconds apart), so each request finds the connection quiet; the
// pause is not timed.
func BenchmarkStreamRoundTrip(b *testing.B) {
	for _, sec := range []string{"plain", "tls"} {
		b.Run(sec, func(b *testing.B) { benchRoundTrip(b, sec == "tls", 0) })
	}
	b.Run("tls/paced", func(b *testing.B) { benchRoundTrip(b, true, 200*time.Microsecond) })
}

func benchRoundTrip(b *testing.B, withTLS bool, pause time.Duration) {
	client, server, _ := benchPair(b, withTLS)
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
		if pause > 0 {
			b.StopTimer()
			time.Sleep(pause)
			b.StartTimer()
		}
		if _, err := st.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(st, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDataHandshake is what opening one data connection costs both ends on loopback TCP: the
// clear preamble, TLS 1.3 with an Ed25519 key, the secret and the answer (the session's key is made
// once, outside the loop).
func BenchmarkDataHandshake(b *testing.B) {
	key, secret := testKey(b), testSecret(b)
	srv := &DataServer{Key: key, Secret: secret, Mux: DefaultMuxConfig()}
	for range b.N {
		cc, sc := tcpPair(b)
		sr := make(chan error, 1)
		go func() {
			m, err := srv.Accept(sc)
			if m != nil {
				m.Close()
			}
			sr <- err
		}()
		m, err := ClientTunnel(context.Background(), cc, key.Pin(), secret, DefaultMuxConfig())
		if err != nil {
			b.Fatal(err)
		}
		m.Close()
		if err := <-sr; err != nil {
			b.Fatal(err)
		}
	}
}
