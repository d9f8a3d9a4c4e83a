package httpx

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
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

	app := whoServer(f, "app", false, nil)
	local := whoServer(f, "local", false, nil)
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
			if err == nil {
				err = client.(*net.TCPConn).CloseWrite()
			}
			_, _ = io.Copy(io.Discard, client)
			sent <- err
		}()

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = ServeHTTP1(ctx, server, pre, route)
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
			if ev.Stolen && localDown {
				t.Fatalf("stolen while the local process is down: %+v", ev)
			}
		}
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			stuck := ourGoroutines()
			if len(stuck) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d goroutine(s) outlive ServeHTTP1:\n%s", len(stuck), strings.Join(stuck, "\n\n"))
			}
		}
	})
}

// isReset: the proxy may close before the client is done (after a 400, say), which resets the
// connection under the client's write or half-close.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ENOTCONN)
}
