package httpx

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// FuzzServeHTTP1 runs the whole HTTP/1 proxy on what a client sends: any bytes, part of them already
// peeked, then a half-close. Requests whose target has an "s" are stolen; the app and the local
// process are net/http servers, and the local one may be down. Whatever the bytes, the proxy finishes
// once the client is done and the servers have answered (a hang here is a framing disagreement with
// net/http, or a wait on nothing), its events are well formed, and nothing of it outlives the call.
func FuzzServeHTTP1(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s), uint8(len(s)/2), false)
	}
	f.Add([]byte("GET /s HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"), uint8(3), true)
	f.Add([]byte("POST /s HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.0\r\n\r\n"), uint8(0), false)
	f.Add([]byte("CONNECT s:443 HTTP/1.1\r\nHost: s:443\r\n\r\nraw bytes"), uint8(0), false)
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"), uint8(0), false)
	f.Add([]byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nshort"), uint8(0), true)

	fuzzServe(f, false, ServeHTTP1, nil)
}

// fuzzServe is FuzzServeHTTP1's and FuzzServeH2C's body: serve is the proxy under test, and h2 makes
// the app and the local process speak h2c as well. await, when set, waits for the answers to what the
// client sent before it half-closes (an HTTP/2 server takes a client's EOF for the end of everything).
func fuzzServe(f *testing.F, h2 bool, serve func(ctx context.Context, client net.Conn, pre []byte, r Route) error,
	await func(client net.Conn, sent []byte) (goAway bool)) {
	app := whoServer(f, "app", h2, nil)
	local := whoServer(f, "local", h2, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { ln.Close() })
	dial := func(addr string) func(ctx context.Context) (net.Conn, error) {
		return func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}
	}

	f.Fuzz(func(t *testing.T, data []byte, peeked uint8, localDown bool) {
		pre := data[:min(int(peeked), len(data))]
		var evs events
		route := Route{
			Steal: func(h *RequestHead) bool { return strings.Contains(h.Target, "s") },
			App:   dial(app.addr()),
			Local: dial(local.addr()),
			Event: evs.add,
		}
		if localDown {
			route.Local = func(context.Context) (net.Conn, error) { return nil, errors.New("local process down") }
		}
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		server, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		// The client sends the rest, half-closes, and reads until the proxy closes.
		sent := make(chan error, 1)
		go func() {
			_, err := client.Write(data[len(pre):])
			if err == nil && await != nil && await(client, data) {
				// The proxy said goodbye: close outright, as a client does. (net/http's HTTP/2
				// server still takes its second to close after a GOAWAY: such inputs are slow.)
				client.Close()
				sent <- nil
				return
			}
			if err == nil {
				err = client.(*net.TCPConn).CloseWrite()
			}
			_, _ = io.Copy(io.Discard, client)
			sent <- err
		}()

		// Goroutines of earlier tests that are still winding down are not this call's.
		already := len(ourGoroutines())
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = serve(ctx, server, pre, route)
		if ctx.Err() != nil {
			t.Fatalf("the proxy did not finish: %v; events %+v", err, evs.all)
		}
		if err := <-sent; err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
			t.Fatalf("client: %v", err)
		}
		for _, ev := range evs.all {
			if ev.Warning == "" && (ev.Status != 0 && (ev.Status < 100 || ev.Status > 999) || ev.ReqBytes < 0 || ev.RespBytes < 0) {
				t.Fatalf("event %+v", ev)
			}
			// (A request the client gave up on while its side was being dialed has no status and
			// names the side it was meant for.)
			if ev.Stolen && localDown && ev.Status != 0 {
				t.Fatalf("answered by the local process while it is down: %+v", ev)
			}
		}
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			stuck := ourGoroutines()
			if len(stuck) <= already {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d goroutine(s) outlive the proxy:\n%s", len(stuck), strings.Join(stuck, "\n\n"))
			}
		}
	})
}

// isReset: the proxy may close before the client is done (after a 400, say), which resets the
// connection under the client's write or half-close.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ENOTCONN)
}

// FuzzServeH2C is FuzzServeHTTP1 for the h2c proxy: the client's bytes after the preface are frames,
// seeded with a conversation of stolen and app-bound streams, bodies, a reset and a ping.
func FuzzServeH2C(f *testing.F) {
	var buf bytes.Buffer
	buf.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&buf, nil)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	headers := func(id uint32, end bool, kv ...string) {
		hb.Reset()
		for i := 0; i < len(kv); i += 2 {
			_ = enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
		}
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: end, EndHeaders: true})
	}
	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	headers(1, true, ":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/s")
	headers(3, false, ":method", "POST", ":scheme", "http", ":authority", "x", ":path", "/", "content-type", "text/plain")
	_ = fr.WriteData(3, false, []byte("hello"))
	_ = fr.WriteData(3, true, []byte(" world"))
	headers(5, false, ":method", "PUT", ":scheme", "http", ":authority", "x", ":path", "/s/up")
	_ = fr.WriteRSTStream(5, http2.ErrCodeCancel)
	_ = fr.WritePing(false, [8]byte{1})
	headers(7, true, ":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/healthz", "user-agent", "kube-probe/1.33")
	conversation := buf.Bytes()
	f.Add(conversation, uint8(len(http2.ClientPreface)), false)
	f.Add(conversation, uint8(0), true)
	f.Add([]byte(http2.ClientPreface), uint8(len(http2.ClientPreface)), false)
	fuzzServe(f, true, ServeH2C, h2Await)
}

// h2Await reads the proxy's frames until every stream the client opened in sent has ended, the proxy
// goes away, or nothing comes for a moment (a stream whose request never ends is answered never).
func h2Await(client net.Conn, sent []byte) (goAway bool) {
	open := map[uint32]bool{}
	in := http2.NewFramer(nil, bytes.NewReader(bytes.TrimPrefix(sent, []byte(http2.ClientPreface))))
	for {
		fr, err := in.ReadFrame()
		if err != nil {
			break
		}
		if h, ok := fr.(*http2.HeadersFrame); ok {
			open[h.StreamID] = true
		}
	}
	out := http2.NewFramer(nil, client)
	defer client.SetReadDeadline(time.Time{})
	for len(open) > 0 {
		_ = client.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		fr, err := out.ReadFrame()
		if err != nil {
			return false
		}
		switch fr := fr.(type) {
		case *http2.GoAwayFrame:
			return true
		case *http2.RSTStreamFrame:
			delete(open, fr.StreamID)
		default:
			if fr.Header().Flags.Has(http2.FlagDataEndStream) && fr.Header().Type != http2.FrameSettings && fr.Header().Type != http2.FramePing {
				delete(open, fr.Header().StreamID)
			}
		}
	}
	return false
}
