package mirror

import (
	"bufio"
	"bytes"
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

// recorder is the plugin's side in one: every mirrored connection's bytes are recorded, in order,
// as the plugin would write them to the local port.
type recorder struct {
	mu    sync.Mutex
	reqs  []wire.OpenRequest
	bufs  []*bytes.Buffer
	ended sync.WaitGroup
}

func (r *recorder) OpenIncoming(_ context.Context, req wire.OpenRequest) (net.Conn, error) {
	agent, plugin := net.Pipe()
	buf := &bytes.Buffer{}
	r.mu.Lock()
	r.reqs = append(r.reqs, req)
	r.bufs = append(r.bufs, buf)
	r.mu.Unlock()
	r.ended.Add(1)
	go func() {
		defer r.ended.Done()
		defer plugin.Close()
		_, _ = io.Copy(buf, plugin)
	}()
	return agent, nil
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

	var c *capture.Capture
	if err := server.Do(func() error {
		var err error
		c, err = capture.Open(capture.Options{Filter: &capture.Filter{Proto: capture.TCP, Port: 8080}})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	d := &recorder{}
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
	// The client's FIN ends the mirrored connection; its stream then ends too.
	deadline := time.Now().Add(10 * time.Second)
	for {
		d.mu.Lock()
		n := len(d.bufs)
		d.mu.Unlock()
		if n > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.ended.Wait()
	cancel()
	<-done
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.bufs) != 1 {
		t.Fatalf("%d mirrored connections, want one (kept alive)", len(d.bufs))
	}
	var got []string
	br := bufio.NewReader(bytes.NewReader(d.bufs[0].Bytes()))
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			break
		}
		b, _ := io.ReadAll(req.Body)
		got = append(got, req.Method+" "+req.URL.Path+" "+string(b))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("mirrored requests %q, want %q", got, want)
	}
	if stats.Connections != 1 || stats.Mirrored != 1 {
		t.Errorf("stats %+v, want one connection (kept alive) mirrored", stats)
	}
	if d.reqs[0].Kind != wire.KindMirrored || d.reqs[0].Port != 8080 || !strings.HasPrefix(d.reqs[0].Peer, "10.79.0.2:") {
		t.Errorf("open requests %+v", d.reqs)
	}
}
