package mirror

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// dialer is the plugin's side in one: every mirrored connection is dialed to a real local server.
type dialer struct {
	addr string
	mu   sync.Mutex
	reqs []wire.OpenRequest
}

func (d *dialer) OpenIncoming(ctx context.Context, req wire.OpenRequest) (net.Conn, error) {
	d.mu.Lock()
	d.reqs = append(d.reqs, req)
	d.mu.Unlock()
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d.addr)
}

// TestKernelMirror: real HTTP traffic to a server in a namespace is copied, request by request, to a
// local server, while the client gets the real server's answers.
func TestKernelMirror(t *testing.T) {
	testnet.Enabled(t)
	server, client := testnet.New(t), testnet.New(t)
	testnet.Connect(t, server, []netip.Prefix{netip.MustParsePrefix("10.79.0.1/24")}, client, []netip.Prefix{netip.MustParsePrefix("10.79.0.2/24")})
	l := server.Listen(t, "tcp", "10.79.0.1:8080")
	app := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "app %s\n", r.URL.Path)
	})}
	go func() { _ = app.Serve(l) }()
	t.Cleanup(func() { app.Close() })

	// The local server records the requests it receives.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []string
	local := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, r.Method+" "+r.URL.Path+" "+string(b))
		mu.Unlock()
		fmt.Fprintln(w, "local")
	})}
	go func() { _ = local.Serve(ln) }()
	t.Cleanup(func() { local.Close() })

	var c *capture.Capture
	if err := server.Do(func() error {
		var err error
		c, err = capture.Open(capture.Options{Filter: &capture.Filter{Proto: capture.TCP, Port: 8080}})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	d := &dialer{addr: ln.Addr().String()}
	ctx, cancel := context.WithCancel(context.Background())
	var stats Stats
	done := make(chan struct{})
	go func() {
		defer close(done)
		stats, _ = Run(ctx, c, []int{8080}, d, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()

	hc := &http.Client{Transport: &http.Transport{DialContext: client.DialContext}}
	want := []string{"GET /a ", "POST /b hello", "GET /c "}
	for _, w := range want {
		f := strings.SplitN(w, " ", 3)
		req, _ := http.NewRequest(f[0], "http://10.79.0.1:8080"+f[1], strings.NewReader(f[2]))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		resp.Body.Close()
		if line != "app "+f[1]+"\n" {
			t.Errorf("client got %q, want the app's answer", line)
		}
	}
	hc.CloseIdleConnections()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= len(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("local server got %q, want %q", got, want)
	}
	if stats.Connections != 1 || stats.Mirrored != 1 {
		t.Errorf("stats %+v, want one connection (kept alive) mirrored", stats)
	}
	if len(d.reqs) != 1 || d.reqs[0].Kind != wire.KindMirrored || d.reqs[0].Port != 8080 || !strings.HasPrefix(d.reqs[0].Peer, "10.79.0.2:") {
		t.Errorf("open requests %+v", d.reqs)
	}
}
