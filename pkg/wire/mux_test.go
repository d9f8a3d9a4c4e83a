package wire

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestTunnelConcurrentStreams(t *testing.T) {
	const streams = 1000
	for _, tr := range transports() {
		t.Run(tr.name, func(t *testing.T) {
			client, server := tunnelPair(t, tr, DefaultMuxConfig())
			serve(t, server, handlers{"echo:7": echo})
			codecs := []Compression{CompressionNone, CompressionS2, CompressionZstd}
			start := time.Now()
			var wg sync.WaitGroup
			errs := make(chan error, streams)
			var total atomic.Int64
			for i := range streams {
				wg.Add(1)
				go func() {
					defer wg.Done()
					// Sizes straddle the block size and the compression threshold.
					n := 1 + (i*7919)%(3*MaxBlockSize/2)
					var payload []byte
					if i%2 == 0 {
						payload = randomBytes(uint64(i), n)
					} else {
						payload = jsonBytes(uint64(i), n)
					}
					if err := echoOnce(client, payload, codecs[i%len(codecs)]); err != nil {
						errs <- fmt.Errorf("stream %d (%d bytes, %v): %w", i, n, codecs[i%len(codecs)], err)
					}
					total.Add(int64(n))
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			t.Logf("%d concurrent streams, %.1f MiB echoed, in %v", streams, float64(total.Load())/(1<<20), time.Since(start).Round(time.Millisecond))
		})
	}
}

// echoOnce sends payload through an echo stream, half-closes, and checks what comes back.
func echoOnce(s *Mux, payload []byte, c Compression) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := s.Open(ctx, dialReq("echo:7", c))
	if err != nil {
		return err
	}
	defer st.Close()
	if st.Compression() != c {
		return fmt.Errorf("negotiated %v, offered %v", st.Compression(), c)
	}
	werr := make(chan error, 1)
	go func() {
		_, err := st.Write(payload)
		if err == nil {
			err = st.CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, st)
	if err != nil {
		return fmt.Errorf("read after %d bytes: %w", n, err)
	}
	if err := <-werr; err != nil {
		return err
	}
	if n != int64(len(payload)) || [32]byte(h.Sum(nil)) != sum(payload) {
		return fmt.Errorf("echo mismatch: got %d bytes, sent %d", n, len(payload))
	}
	return nil
}

func TestTunnelHalfClose(t *testing.T) {
	for _, tr := range transports() {
		t.Run(tr.name, func(t *testing.T) {
			client, server := tunnelPair(t, tr, DefaultMuxConfig())
			// The handler's last step (CloseWrite) may return after the client has read the end
			// block; the test must not tear the tunnel down under it.
			handled := make(chan struct{})
			defer func() {
				select {
				case <-handled:
				case <-time.After(10 * time.Second): // a test that failed before the handler ran
				}
			}()
			serve(t, server, handlers{"reply-after-eof:80": func(st *Stream) {
				defer close(handled)
				defer st.Close()
				got, err := io.ReadAll(st)
				if err != nil {
					t.Errorf("server read: %v", err)
					return
				}
				// The client's write half is closed; ours must still work.
				for i := range 3 {
					if _, err := fmt.Fprintf(st, "part %d of reply to %q\n", i, got); err != nil {
						t.Errorf("server write after client CloseWrite: %v", err)
						return
					}
				}
				if err := st.CloseWrite(); err != nil {
					t.Errorf("server CloseWrite: %v", err)
				}
			}})
			st, err := client.Open(context.Background(), dialReq("reply-after-eof:80", CompressionS2))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if _, err := io.WriteString(st, "GET / HTTP/1.0\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			if err := st.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if _, err := st.Write([]byte("x")); !errors.Is(err, ErrWriteClosed) {
				t.Errorf("write after CloseWrite: got %v, want ErrWriteClosed", err)
			}
			got, err := io.ReadAll(st)
			if err != nil {
				t.Fatalf("client read: %v", err)
			}
			want := "part 0 of reply to \"GET / HTTP/1.0\\r\\n\\r\\n\"\n" +
				"part 1 of reply to \"GET / HTTP/1.0\\r\\n\\r\\n\"\n" +
				"part 2 of reply to \"GET / HTTP/1.0\\r\\n\\r\\n\"\n"
			if string(got) != want {
				t.Errorf("reply:\n got %q\nwant %q", got, want)
			}
			if n, err := st.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
				t.Errorf("read after EOF: %d, %v; want 0, EOF", n, err)
			}
		})
	}
}

func TestTunnelAbort(t *testing.T) {
	for _, tr := range transports() {
		t.Run(tr.name, func(t *testing.T) {
			client, server := tunnelPair(t, tr, DefaultMuxConfig())
			serverErr := make(chan error, 1)
			serve(t, server, handlers{"firehose:9": func(st *Stream) {
				defer st.Close()
				_ = st.CloseRead() // a pure writer must say so, or nobody notices the abort
				buf := make([]byte, 32<<10)
				for {
					if _, err := st.Write(buf); err != nil {
						serverErr <- err
						return
					}
				}
			}})
			st, err := client.Open(context.Background(), dialReq("firehose:9"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(st, make([]byte, 1<<20)); err != nil {
				t.Fatal(err)
			}
			// Closing without CloseWrite is an abort: the server's blocked writer must be released.
			st.Close()
			select {
			case err := <-serverErr:
				if !errors.Is(err, ErrStreamAborted) {
					t.Errorf("server write after client abort: %v, want ErrStreamAborted", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("server writer still blocked 10s after the client aborted")
			}
			if _, err := st.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
				t.Errorf("read after Close: %v, want net.ErrClosed", err)
			}
		})
	}
}

// TestTunnelAbortAfterHalfClose covers the case where the only signal is the FIN: the server got our
// end block (so its Read is finished for good) and is still writing when we go away.
func TestTunnelAbortAfterHalfClose(t *testing.T) {
	client, server := tunnelPair(t, transports()[1], DefaultMuxConfig())
	serverErr := make(chan error, 1)
	serve(t, server, handlers{"drain-then-firehose:9": func(st *Stream) {
		defer st.Close()
		if _, err := io.Copy(io.Discard, st); err != nil {
			serverErr <- err
			return
		}
		buf := make([]byte, 32<<10)
		for {
			if _, err := st.Write(buf); err != nil {
				serverErr <- err
				return
			}
		}
	}})
	st, err := client.Open(context.Background(), dialReq("drain-then-firehose:9"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(st, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	st.Close()
	select {
	case err := <-serverErr:
		if !errors.Is(err, ErrStreamAborted) {
			t.Errorf("server write: %v, want ErrStreamAborted", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server writer still blocked 10s after the client aborted")
	}
}

func TestTunnelOpenErrors(t *testing.T) {
	client, server := tunnelPair(t, transports()[0], DefaultMuxConfig())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for {
			in, err := server.Accept(ctx)
			if err != nil {
				return
			}
			var reason error
			switch in.Request().Address {
			case "refused:1":
				reason = &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
			case "nosuch.svc:80":
				reason = &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "nosuch.svc", IsNotFound: true}}
			case "slow:1":
				reason = fmt.Errorf("dial: %w", context.DeadlineExceeded)
			case "blocked:1":
				reason = syscall.EACCES
			case "unreachable:1":
				reason = syscall.EHOSTUNREACH
			case "weird:1":
				reason = errors.New("something odd")
			}
			if in.Request().Kind != KindDial {
				reason = fmt.Errorf("stream kind %q: %w", in.Request().Kind, ErrUnsupported)
			}
			_ = in.Reject(reason)
		}
	}()
	tests := []struct {
		req      OpenRequest
		sentinel error
		code     Code
		msg      string
	}{
		{dialReq("refused:1"), ErrRefused, CodeRefused, "connection refused"},
		{dialReq("nosuch.svc:80"), ErrUnknownHost, CodeUnknownHost, "no such host"},
		{dialReq("slow:1"), ErrTimeout, CodeTimeout, "deadline exceeded"},
		{dialReq("blocked:1"), ErrForbidden, CodeForbidden, "permission denied"},
		{dialReq("unreachable:1"), ErrUnreachable, CodeUnreachable, "no route to host"},
		{dialReq("weird:1"), ErrInternal, CodeInternal, "something odd"},
		{OpenRequest{Kind: "exec"}, ErrUnsupported, CodeUnsupported, `stream kind "exec"`},
	}
	for _, tt := range tests {
		t.Run(tt.req.Address+tt.req.Kind, func(t *testing.T) {
			_, err := client.Open(ctx, tt.req)
			var re *RemoteError
			if !errors.As(err, &re) || re.Code != tt.code {
				t.Fatalf("got %v, want a *RemoteError with code %v", err, tt.code)
			}
			if !errors.Is(err, tt.sentinel) || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("got %q, want errors.Is %v and text containing %q", err, tt.sentinel, tt.msg)
			}
		})
	}
	// Requests the opener can tell are wrong never leave the process.
	for _, req := range []OpenRequest{dialReq("no-port"), dialReq(":80"), dialReq("h:0"), {Kind: KindDial, Network: "sctp", Address: "h:1"}, {}} {
		if _, err := client.Open(ctx, req); err == nil || (!errors.Is(err, ErrBadRequest) && !errors.Is(err, ErrUnsupported)) {
			t.Errorf("Open(%+v) = %v, want ErrBadRequest or ErrUnsupported", req, err)
		}
	}
}

func TestTunnelOpenContext(t *testing.T) {
	client, server := tunnelPair(t, transports()[1], DefaultMuxConfig())
	hold := make(chan struct{})
	defer close(hold)
	go func() {
		// Accept but never answer, as an agent stuck in a slow dial would.
		for {
			in, err := server.Accept(context.Background())
			if err != nil {
				return
			}
			go func() { <-hold; _ = in.Reject(ErrTimeout) }()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := client.Open(ctx, dialReq("slow:1"))
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Open after cancel: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Open ignored its context")
	}
}

func TestTunnelBackPressure(t *testing.T) {
	for _, tr := range transports() {
		t.Run(tr.name, func(t *testing.T) {
			cfg := DefaultMuxConfig()
			client, server := tunnelPair(t, tr, cfg)
			release := make(chan struct{})
			got := make(chan [32]byte, 1)
			serve(t, server, handlers{"slow-reader:1": func(st *Stream) {
				defer st.Close()
				<-release
				h := sha256.New()
				_, _ = io.Copy(h, st)
				got <- [32]byte(h.Sum(nil))
			}})
			st, err := client.Open(context.Background(), dialReq("slow-reader:1"))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()

			const total = 256 << 20
			payload := randomBytes(42, 1<<20)
			var written atomic.Int64
			werr := make(chan error, 1)
			// Two collections: sync.Pool keeps objects for one GC in its victim cache, and earlier
			// tests leave pooled buffers behind.
			runtime.GC()
			runtime.GC()
			var before, during runtime.MemStats
			runtime.ReadMemStats(&before)
			go func() {
				for written.Load() < total {
					n, err := st.Write(payload)
					written.Add(int64(n))
					if err != nil {
						werr <- err
						return
					}
				}
				werr <- st.CloseWrite()
			}()
			// Wait for the writer to stall: progress stops once the window is full.
			var last int64 = -1
			for stable := 0; stable < 5; {
				select {
				case err := <-werr:
					t.Fatalf("writer finished (%v) although nobody reads", err)
				case <-time.After(40 * time.Millisecond):
				}
				if w := written.Load(); w == last {
					stable++
				} else {
					last, stable = w, 0
				}
			}
			runtime.GC()
			runtime.GC()
			runtime.ReadMemStats(&during)
			growth := int64(during.HeapAlloc) - int64(before.HeapAlloc)
			limit := int64(cfg.StreamWindow) + 2<<20 // the window plus one Write in flight and its framing
			t.Logf("writer stalled after %.1f MiB with a %d MiB window; live heap grew %.1f MiB",
				float64(last)/(1<<20), cfg.StreamWindow>>20, float64(growth)/(1<<20))
			if last > limit {
				t.Errorf("writer got %d bytes ahead of a reader that reads nothing; want at most %d", last, limit)
			}
			if growth > 4*int64(cfg.StreamWindow) {
				t.Errorf("heap grew %d bytes under back-pressure; want at most %d", growth, 4*cfg.StreamWindow)
			}
			close(release)
			if err := <-werr; err != nil {
				t.Fatalf("writer: %v", err)
			}
			want := sha256.New()
			for range total / len(payload) {
				want.Write(payload)
			}
			if h := <-got; h != [32]byte(want.Sum(nil)) {
				t.Error("data after back-pressure differs")
			}
		})
	}
}

func TestTunnelLargeTransfer(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 1 GiB")
	}
	const size = 256 << 20
	for _, tr := range transports() {
		t.Run(tr.name, func(t *testing.T) {
			client, server := tunnelPair(t, tr, DefaultMuxConfig())
			serve(t, server, handlers{"echo:7": echo})
			st, err := client.Open(context.Background(), dialReq("echo:7"))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			chunk := randomBytes(7, 1<<20)
			start := time.Now()
			werr := make(chan error, 1)
			go func() {
				for range size / len(chunk) {
					if _, err := st.Write(chunk); err != nil {
						werr <- err
						return
					}
					// Varying content so a misplaced block would change the hash.
					chunk[0]++
				}
				werr <- st.CloseWrite()
			}()
			recv := sha256.New()
			n, err := io.Copy(recv, st)
			if err != nil {
				t.Fatal(err)
			}
			if err := <-werr; err != nil {
				t.Fatal(err)
			}
			elapsed := time.Since(start)
			want := sha256.New()
			c := randomBytes(7, 1<<20)
			for range size / len(c) {
				want.Write(c)
				c[0]++
			}
			if n != size || !bytes.Equal(recv.Sum(nil), want.Sum(nil)) {
				t.Fatalf("echoed %d bytes, sha256 %x; want %d bytes, sha256 %x", n, recv.Sum(nil), size, want.Sum(nil))
			}
			t.Logf("256 MiB each way in %v (%.0f MiB/s each way)", elapsed.Round(time.Millisecond), float64(size>>20)/elapsed.Seconds())
		})
	}
}

func TestTunnelPing(t *testing.T) {
	client, server := tunnelPair(t, transports()[1], DefaultMuxConfig())
	serve(t, server, handlers{})
	if _, err := client.Ping(); err != nil {
		t.Fatal(err)
	}
	if _, err := server.Ping(); err != nil {
		t.Fatal(err)
	}
	client.Close()
	select {
	case <-server.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("server session did not notice the client closing")
	}
	if _, err := client.Open(context.Background(), dialReq("x:1")); !errors.Is(err, ErrSessionClosed) {
		t.Errorf("Open on a closed session: %v, want ErrSessionClosed", err)
	}
	if _, err := server.Accept(context.Background()); !errors.Is(err, ErrSessionClosed) {
		t.Errorf("Accept on a closed session: %v, want ErrSessionClosed", err)
	}
}

func TestLeastLoaded(t *testing.T) {
	// conn is one data connection: how many streams it holds open, and how it ended, if it did.
	type conn struct {
		streams int
		end     string // "", "closed" (by this end) or "peer closed"
	}
	tests := []struct {
		name  string
		conns []conn
		start int
		want  int // index into conns; -1 for none
	}{
		{name: "no connections", start: 0, want: -1},
		{name: "one idle", conns: []conn{{}}, want: 0},
		{name: "fewest streams", conns: []conn{{streams: 2}, {}, {streams: 1}}, want: 1},
		{name: "fewest streams whatever the start", conns: []conn{{streams: 2}, {}, {streams: 1}}, start: 2, want: 1},
		{name: "tie goes to start", conns: []conn{{streams: 1}, {streams: 1}, {streams: 1}}, start: 0, want: 0},
		{name: "tie goes to start 1", conns: []conn{{streams: 1}, {streams: 1}, {streams: 1}}, start: 1, want: 1},
		{name: "tie goes to the first after start", conns: []conn{{streams: 1}, {streams: 2}, {streams: 1}}, start: 1, want: 2},
		{name: "tie wraps to the front", conns: []conn{{streams: 1}, {streams: 1}, {streams: 2}}, start: 2, want: 0},
		{name: "start past the end wraps", conns: []conn{{}, {}, {}}, start: 4, want: 1},
		{name: "negative start wraps", conns: []conn{{}, {}, {}}, start: -1, want: 2},
		{name: "closed is skipped although idle", conns: []conn{{end: "closed"}, {streams: 3}, {streams: 3}}, want: 1},
		{name: "peer closed is skipped", conns: []conn{{streams: 2}, {end: "peer closed"}}, start: 1, want: 0},
		{name: "tie skips the closed start", conns: []conn{{streams: 1}, {streams: 1, end: "closed"}, {streams: 1}}, start: 1, want: 2},
		{name: "all closed", conns: []conn{{end: "closed"}, {end: "peer closed"}}, want: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sessions []*Mux
			for i, c := range tt.conns {
				client, server := tunnelPair(t, transports()[0], MuxConfig{})
				// The streams stay open until the session ends.
				serve(t, server, handlers{"hold:1": func(st *Stream) { _, _ = io.Copy(io.Discard, st) }})
				for range c.streams {
					if _, err := client.Open(context.Background(), dialReq("hold:1")); err != nil {
						t.Fatalf("conn %d: open: %v", i, err)
					}
				}
				if n := client.NumStreams(); n != c.streams {
					t.Fatalf("conn %d holds %d streams, want %d", i, n, c.streams)
				}
				switch c.end {
				case "closed":
					client.Close()
				case "peer closed":
					server.Close()
					<-client.Done()
				}
				sessions = append(sessions, client)
			}
			got := LeastLoaded(sessions, tt.start)
			var want *Mux
			if tt.want >= 0 {
				want = sessions[tt.want]
			}
			if got != want {
				t.Errorf("LeastLoaded(start %d) = conn %d, want conn %d", tt.start, slices.Index(sessions, got), tt.want)
			}
		})
	}
}

// TestAcceptJoin: the answering end's stream is joined to the connection it dialed, both ways, until
// the context ends, which closes both; a stream that cannot be accepted still closes that connection.
func TestAcceptJoin(t *testing.T) {
	client, server := tunnelPair(t, transports()[0], DefaultMuxConfig())
	ctx := context.Background()
	incoming := make(chan *Incoming)
	go func() {
		for {
			in, err := server.Accept(ctx)
			if err != nil {
				close(incoming)
				return
			}
			incoming <- in
		}
	}()

	t.Run("bytes both ways, context end closes both", func(t *testing.T) {
		local, dialed := net.Pipe()
		joinCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		opened := make(chan *Stream, 1)
		go func() {
			st, err := client.Open(ctx, dialReq("app:80"))
			if err != nil {
				t.Error(err)
			}
			opened <- st
		}()
		go func() { done <- (<-incoming).AcceptJoin(joinCtx, dialed) }()
		st := <-opened
		if st == nil {
			t.FailNow()
		}
		if _, err := st.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(local, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("dialed connection read %q, %v; want ping", buf, err)
		}
		if _, err := local.Write([]byte("pong")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "pong" {
			t.Fatalf("stream read %q, %v; want pong", buf, err)
		}
		cancel()
		<-done
		// The dialed connection was closed by the context's end: its peer reads EOF.
		if _, err := local.Read(buf); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
			t.Errorf("the dialed connection's peer read %v after the context ended, want it closed", err)
		}
		// So was the stream: the opener's read ends (aborted: the join was cut, not finished) instead
		// of waiting for bytes that will not come.
		if _, err := io.ReadAll(st); err == nil {
			t.Error("the opener's stream ended cleanly; want it aborted by the context's end")
		}
	})

	t.Run("a stream already answered closes the dialed connection", func(t *testing.T) {
		local, dialed := net.Pipe()
		go func() { _, _ = client.Open(ctx, dialReq("app:81")) }()
		in := <-incoming
		if err := in.Reject(ErrRefused); err != nil {
			t.Fatal(err)
		}
		if err := in.AcceptJoin(ctx, dialed); err == nil {
			t.Fatal("AcceptJoin of an answered stream succeeded")
		}
		if _, err := local.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
			t.Errorf("the dialed connection's peer read %v, want it closed", err)
		}
	})
}
