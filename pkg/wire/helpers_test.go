package wire

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// transport makes a connected pair of data connections.
type transport struct {
	name string
	pair func(testing.TB) (net.Conn, net.Conn)
}

// transports lists what the tunnel tests run over, like yamux's own testConnPipe/testConnTCP: a
// synchronous pipe (no buffering at all, so ordering bugs show) and loopback TCP (real buffers).
func transports() []transport {
	return []transport{{"pipe", pipePair}, {"tcp", tcpPair}}
}

func pipePair(testing.TB) (net.Conn, net.Conn) { return net.Pipe() }

func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return client, r.c
}

func testKey(t testing.TB) *DataKey {
	t.Helper()
	k, err := NewDataKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testSecret(t testing.TB) Secret {
	t.Helper()
	s, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// tunnelPair runs the data-connection handshake (TLS pinned to a fresh key, the secret inside) and
// starts a session on each end, as the plugin and the agent do.
func tunnelPair(t testing.TB, tr transport, cfg MuxConfig) (client, server *Mux) {
	t.Helper()
	cc, sc := tr.pair(t)
	secret := testSecret(t)
	key := testKey(t)
	type res struct {
		m   *Mux
		err error
	}
	sr := make(chan res, 1)
	go func() {
		m, err := (&DataServer{Key: key, Secret: secret, Mux: cfg}).Accept(sc)
		sr <- res{m, err}
	}()
	client, err := ClientTunnel(context.Background(), cc, key.Pin(), secret, cfg)
	if err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	r := <-sr
	if r.err != nil {
		t.Fatalf("server handshake: %v", r.err)
	}
	server = r.m
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return client, server
}

// handlers maps an open request's address to what the test server does with the stream.
type handlers map[string]func(*Stream)

// serve accepts streams until the session ends; unknown addresses are refused the way a real dial
// would be.
func serve(t testing.TB, s *Mux, h handlers) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := s.Accept(ctx)
			if err != nil {
				return
			}
			f, ok := h[in.Request().Address]
			if !ok {
				_ = in.Reject(fmt.Errorf("dial %q: %w", in.Request().Address, ErrRefused))
				continue
			}
			st, err := in.Accept()
			if err != nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				f(st)
			}()
		}
	}()
	t.Cleanup(func() {
		cancel()
		s.Close()
		wg.Wait()
	})
}

func echo(st *Stream) {
	defer st.Close()
	if _, err := io.Copy(writerOnly{st}, readerOnly{st}); err != nil {
		return
	}
	_ = st.CloseWrite()
}

func dialReq(addr string, c ...Compression) OpenRequest {
	return OpenRequest{Kind: KindDial, Network: NetworkTCP, Address: addr, Compression: c}
}

// randomBytes is deterministic so that a failure reproduces.
func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)})
	_, _ = r.Read(b)
	return b
}

// jsonBytes looks like a Kubernetes list response: repetitive keys, varied values.
func jsonBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	var buf bytes.Buffer
	buf.WriteString(`{"kind":"PodList","items":[`)
	enc := json.NewEncoder(&buf)
	for i := 0; buf.Len() < n; i++ {
		if i > 0 {
			buf.WriteByte(',')
		}
		_ = enc.Encode(map[string]any{
			"metadata": map[string]any{
				"name":              fmt.Sprintf("web-%x-%05d", r.Uint32(), i),
				"namespace":         "default",
				"uid":               fmt.Sprintf("%08x-%04x-%04x-%012x", r.Uint32(), r.Uint32()&0xffff, r.Uint32()&0xffff, r.Uint64()&0xffffffffffff),
				"resourceVersion":   fmt.Sprint(r.IntN(1 << 30)),
				"creationTimestamp": time.Unix(1.7e9+int64(r.IntN(1e7)), 0).UTC().Format(time.RFC3339),
				"labels":            map[string]string{"app": "web", "pod-template-hash": fmt.Sprintf("%x", r.Uint32())},
			},
			"status": map[string]any{"phase": "Running", "podIP": fmt.Sprintf("10.%d.%d.%d", r.IntN(256), r.IntN(256), r.IntN(256)), "restartCount": r.IntN(5)},
		})
	}
	return buf.Bytes()[:n]
}

func sum(b []byte) [32]byte { return sha256.Sum256(b) }

// countingConn counts bytes written, to report what actually crosses the wire.
type countingConn struct {
	net.Conn
	mu sync.Mutex
	n  int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	c.n += int64(n)
	c.mu.Unlock()
	return n, err
}

func (c *countingConn) written() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}
