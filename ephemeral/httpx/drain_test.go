package httpx

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

func TestCloseHead(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{
			name: "keep-alive response gets Connection: close",
			in:   "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\n",
			want: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\nConnection: close\r\n\r\n",
		},
		{
			name: "Connection and Keep-Alive fields replaced",
			in:   "HTTP/1.1 204 No Content\r\nconnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\n\r\n",
			want: "HTTP/1.1 204 No Content\r\nX-Hop: 1\r\nConnection: close\r\n\r\n",
		},
		{
			name: "HTTP/1.0 keep-alive",
			in:   "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
			want: "HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
		},
		{
			name: "already closing: unchanged",
			in:   "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
			want: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rh, err := ParseResponseHead([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, string(closeHead(&rh))); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if _, err := ParseResponseHead(closeHead(&rh)); err != nil {
				t.Errorf("rewritten head does not parse: %v", err)
			}
		})
	}
}

// An HTTP/1 connection drained between requests answers the next one with "Connection: close", then
// closes; the response before the drain kept the connection.
func TestHTTP1Drain(t *testing.T) {
	checkLeaks(t)
	app := whoServer(t, "app", false, nil)
	drain := make(chan struct{})
	p := startProxy(t, proxyConfig{app: app.addr(), steal: stealHeader(t), drain: drain})
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second)) // a failure, not a hang
	br := bufio.NewReader(c)
	get := func() *http.Response {
		t.Helper()
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: app\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if resp := get(); resp.Close {
		t.Fatalf("before the drain: Close = true, header %v", resp.Header)
	}
	close(drain)
	resp := get()
	if !resp.Close { // net/http took "Connection: close" out of the header into Close
		t.Errorf("first response after the drain: Close = false; want Connection: close")
	}
	if b, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("after the closing response: read %q, %v; want EOF", b, err)
	}
}

// A drained HTTP/2 connection gets GOAWAY naming the stream in flight, finishes that stream, then
// closes.
func TestH2CDrain(t *testing.T) {
	checkLeaks(t)
	entered, release := make(chan struct{}), make(chan struct{})
	app := whoServer(t, "app", true, func(mux *http.ServeMux) {
		mux.HandleFunc("/slow", func(w http.ResponseWriter, _ *http.Request) {
			close(entered)
			<-release
			fmt.Fprint(w, "slow done")
		})
	})
	drain := make(chan struct{})
	p := startProxy(t, proxyConfig{app: app.addr(), steal: stealHeader(t), drain: drain})
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "app"}, {":path", "/slow"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	<-entered
	close(drain)
	var goAway *http2.GoAwayFrame
	body := ""
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("read frame: %v (GOAWAY %v, body %q)", err, goAway, body)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.GoAwayFrame:
			goAway = f
			if f.LastStreamID != 1 || f.ErrCode != http2.ErrCodeNo {
				t.Errorf("GOAWAY last stream %d, code %v; want 1, NO_ERROR", f.LastStreamID, f.ErrCode)
			}
			close(release) // the stream in flight finishes after the GOAWAY
		case *http2.DataFrame:
			if goAway == nil {
				t.Errorf("data before GOAWAY")
			}
			body += string(f.Data())
		}
	}
	if goAway == nil {
		t.Fatal("connection closed without GOAWAY")
	}
	if body != "slow done" {
		t.Errorf("stream in flight got %q, want %q", body, "slow done")
	}
}

// A client with a keep-alive pool under steady load loses no request when its connections are
// drained: they close as it finishes with them, and it opens new ones.
func TestDrainPooledClient(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "HTTP/1.1", true: "h2c"}[h2], func(t *testing.T) {
			checkLeaks(t)
			app := whoServer(t, "app", h2, nil)
			drain := make(chan struct{})
			p := startProxy(t, proxyConfig{app: app.addr(), steal: stealHeader(t), drain: drain})
			tr := &http.Transport{MaxIdleConnsPerHost: 8}
			if h2 {
				tr.Protocols = h2cOnly
			}
			t.Cleanup(tr.CloseIdleConnections)
			hc := &http.Client{Transport: tr}
			var ok, failed atomic.Int64
			var mu sync.Mutex
			var failures []error
			ctx, stop := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() {
					for ctx.Err() == nil {
						resp, err := hc.Get("http://" + p.addr + "/")
						if err == nil {
							_, err = io.Copy(io.Discard, resp.Body)
							resp.Body.Close()
						}
						if err != nil {
							failed.Add(1)
							mu.Lock()
							failures = append(failures, err)
							mu.Unlock()
							continue
						}
						ok.Add(1)
					}
				})
			}
			waitCount := func(n int64) {
				t.Helper()
				for deadline := time.Now().Add(20 * time.Second); ok.Load() < n; time.Sleep(time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("%d requests served, want %d", ok.Load(), n)
					}
				}
			}
			waitCount(200)
			before := p.accepts.Load()
			close(drain)
			waitCount(ok.Load() + 200)
			stop()
			wg.Wait()
			if n := failed.Load(); n != 0 {
				t.Errorf("%d requests failed: %v", n, failures)
			}
			// The drained connections closed and the client made new ones.
			if after := p.accepts.Load(); after <= before {
				t.Errorf("connections accepted: %d before the drain, %d after; want new ones", before, after)
			}
		})
	}
}
