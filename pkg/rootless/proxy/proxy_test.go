package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/http/httpproxy"

	"github.com/trafficlab/kubectl-trafficlab/internal/loopbacktest"
	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/egress"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// fakeDialer stands for one side's network: names it knows lead to real test servers; "refused.*",
// "slow.*" and unknown names fail as the pod's dial would.
type fakeDialer struct {
	side  string
	hosts map[string]string // "name:port" -> "127.0.0.1:port"

	mu     sync.Mutex
	dialed []string
}

func (d *fakeDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	d.mu.Lock()
	d.dialed = append(d.dialed, address)
	d.mu.Unlock()
	if network != "tcp" {
		return nil, fmt.Errorf("network %q: %w", network, wire.ErrUnsupported)
	}
	// Failures come as the tunnel reports the agent's: a *wire.RemoteError with its code.
	fail := func(code wire.Code, why string) error {
		return &wire.RemoteError{Code: code, Message: fmt.Sprintf("dial tcp %s from the %s: %s", address, d.side, why)}
	}
	switch {
	case strings.HasPrefix(address, "refused."):
		return nil, fail(wire.CodeRefused, "connection refused")
	case strings.HasPrefix(address, "slow."):
		return nil, fail(wire.CodeTimeout, "i/o timeout")
	}
	target, ok := d.hosts[address]
	if !ok {
		return nil, fail(wire.CodeUnknownHost, "no such host")
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, target)
}

func (d *fakeDialer) addresses() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.dialed...)
}

type countingListener struct {
	net.Listener
	mu sync.Mutex
	n  int
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.n++
		l.mu.Unlock()
	}
	return c, err
}

func (l *countingListener) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// world is a proxy with a pod side and a local side, each with its own servers.
type world struct {
	addr   string
	ln     *countingListener
	pod    *fakeDialer
	local  *fakeDialer
	cancel context.CancelFunc
	served chan error
}

func hostPort(u string) string {
	pu, err := url.Parse(u)
	if err != nil {
		panic(err)
	}
	return pu.Host
}

// echo answers with what the upstream saw of the request, one header per line.
func echo(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s %s\n", name, r.Method, r.URL.Path)
		for _, h := range []string{"Via", "Connection", "Proxy-Connection", "Keep-Alive", "X-Secret", "X-Forwarded-For", "Proxy-Authorization"} {
			if v := r.Header.Values(h); len(v) > 0 {
				fmt.Fprintf(w, "%s: %s\n", h, strings.Join(v, ", "))
			}
		}
	})
}

func newWorld(t *testing.T, router Router) *world {
	t.Helper()
	web := httptest.NewServer(echo("web"))
	secure := httptest.NewTLSServer(echo("secure"))
	db := httptest.NewServer(echo("local-db"))
	t.Cleanup(func() { web.Close(); secure.Close(); db.Close() })
	halfClose := startHalfCloseServer(t)
	pod := &fakeDialer{side: "pod", hosts: map[string]string{
		"web.ns:80":      hostPort(web.URL),
		"secure.ns:443":  hostPort(secure.URL),
		"db:5432":        hostPort(web.URL), // the cluster's db, which --local db must avoid
		"count.ns:7":     halfClose,
		"10.96.0.20:80":  hostPort(web.URL),
		"[fd00::20]:80":  hostPort(web.URL),
		"web.ns:443":     hostPort(secure.URL),
		"secure.ns:8443": hostPort(secure.URL),
	}}
	_, lport, _ := net.SplitHostPort(hostPort(db.URL))
	local := &fakeDialer{side: "machine", hosts: map[string]string{
		"db:5432":             hostPort(db.URL),
		"localhost:" + lport:  hostPort(db.URL),
		"127.0.0.1:" + lport:  hostPort(db.URL),
		"192.168.1.7:5432":    hostPort(db.URL),
		"api.example.com:443": hostPort(secure.URL),
	}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &world{addr: ln.Addr().String(), ln: &countingListener{Listener: ln}, pod: pod, local: local, cancel: cancel, served: make(chan error, 1)}
	s := &Server{Remote: pod, Local: local, Router: router}
	go func() { w.served <- s.Serve(ctx, w.ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-w.served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after its context ended")
		}
	})
	return w
}

// startHalfCloseServer reads until EOF, then answers with the byte count: a client's half-close must
// reach it, and its answer must come back after that.
func startHalfCloseServer(t *testing.T) string {
	t.Helper()
	return loopbacktest.Serve(t, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "got %d bytes", n)
	}).String()
}

func curl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "curl", append([]string{"-sS", "--max-time", "15"}, args...)...)
	// No proxy settings from the environment: only the flags count.
	cmd.Env = []string{"PATH=/usr/bin:/bin:/usr/local/bin", "HOME=" + t.TempDir()}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("curl %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

func TestCurlSOCKS(t *testing.T) {
	w := newWorld(t, nil)
	out, err := curl(t, "--socks5-hostname", w.addr, "http://web.ns/hello")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff("web GET /hello\n", out); diff != "" {
		t.Errorf("body mismatch (-want +got):\n%s", diff)
	}
	out, err = curl(t, "-k", "--socks5-hostname", w.addr, "https://secure.ns/tls")
	if err != nil {
		t.Fatal(err)
	}
	if out != "secure GET /tls\n" {
		t.Errorf("TLS through SOCKS: %q", out)
	}
	// socks5h: names reach the pod unresolved, so its resolver (and search domains) answer them.
	if diff := cmp.Diff([]string{"web.ns:80", "secure.ns:443"}, w.pod.addresses()); diff != "" {
		t.Errorf("pod dials mismatch (-want +got):\n%s", diff)
	}
}

func TestCurlHTTPProxy(t *testing.T) {
	w := newWorld(t, nil)
	out, err := curl(t, "-x", "http://"+w.addr,
		"-H", "Connection: X-Secret", "-H", "X-Secret: s3cret", "-H", "Keep-Alive: timeout=5",
		"-H", "Proxy-Authorization: Basic eDp5", "-H", "X-Forwarded-For: 10.1.1.1",
		"http://web.ns/a", "http://web.ns/b")
	if err != nil {
		t.Fatal(err)
	}
	// Hop-by-hop headers (RFC 9110 section 7.6.1), including those Connection names, stop at the proxy;
	// Via is added; the client's X-Forwarded-For passes untouched.
	want := "web GET /a\nVia: 1.1 kubectl-trafficlab\nX-Forwarded-For: 10.1.1.1\n" +
		"web GET /b\nVia: 1.1 kubectl-trafficlab\nX-Forwarded-For: 10.1.1.1\n"
	if diff := cmp.Diff(want, out); diff != "" {
		t.Errorf("bodies mismatch (-want +got):\n%s", diff)
	}
	if n := w.ln.count(); n != 1 {
		t.Errorf("curl opened %d connections to the proxy for two requests, want 1 (keep-alive)", n)
	}

	out, err = curl(t, "-k", "-x", "http://"+w.addr, "https://secure.ns/connect")
	if err != nil {
		t.Fatal(err)
	}
	if out != "secure GET /connect\n" {
		t.Errorf("CONNECT: %q", out)
	}
	if diff := cmp.Diff([]string{"web.ns:80", "secure.ns:443"}, w.pod.addresses()); diff != "" {
		t.Errorf("pod dials mismatch (-want +got):\n%s", diff)
	}

	// A request that is not for a proxy.
	out, err = curl(t, "-w", " %{http_code}", "http://"+w.addr+"/")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(out, " 400") || !strings.Contains(out, "want CONNECT host:port or an absolute URI") {
		t.Errorf("origin-form request: %q, want 400 with advice", out)
	}
}

func TestHTTPErrors(t *testing.T) {
	w := newWorld(t, nil)
	tests := []struct {
		args     []string
		wantCode string
		wantBody string
	}{
		{args: []string{"-x", "http://" + w.addr, "http://refused.ns/"}, wantCode: "502",
			wantBody: `kubectl-trafficlab proxy: cannot reach "refused.ns:80" through the pod: dial tcp refused.ns:80 from the pod: connection refused` + "\n"},
		{args: []string{"-x", "http://" + w.addr, "http://slow.ns/"}, wantCode: "504",
			wantBody: `kubectl-trafficlab proxy: cannot reach "slow.ns:80" through the pod: dial tcp slow.ns:80 from the pod: i/o timeout` + "\n"},
		{args: []string{"-x", "http://" + w.addr, "http://nowhere.ns/"}, wantCode: "502",
			wantBody: `kubectl-trafficlab proxy: cannot reach "nowhere.ns:80" through the pod: dial tcp nowhere.ns:80 from the pod: no such host` + "\n"},
	}
	for _, tt := range tests {
		out, err := curl(t, append([]string{"-w", "%{http_code}"}, tt.args...)...)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tt.wantBody+tt.wantCode, out); diff != "" {
			t.Errorf("curl %v mismatch (-want +got):\n%s", tt.args, diff)
		}
	}
	// A failed CONNECT: curl reports the status (exit 56) and the proxy's one line is in -v.
	_, err := curl(t, "-k", "-x", "http://"+w.addr, "https://refused.ns/")
	if err == nil || !strings.Contains(err.Error(), "502") {
		t.Errorf("CONNECT to a refused destination: %v, want curl to report 502", err)
	}
}

func TestSOCKSReplies(t *testing.T) {
	w := newWorld(t, nil)
	name := func(host string, port uint16) []byte {
		b := []byte{5, cmdConnect, 0, atypDomain, byte(len(host))}
		b = append(b, host...)
		return append(b, byte(port>>8), byte(port))
	}
	tests := []struct {
		name      string
		greeting  []byte
		request   []byte
		wantMeth  byte
		wantReply byte
	}{
		{name: "refused", greeting: []byte{5, 1, 0}, request: name("refused.ns", 80), wantReply: repConnectionRefused},
		{name: "unknown host", greeting: []byte{5, 1, 0}, request: name("nowhere.ns", 80), wantReply: repHostUnreachable},
		{name: "timeout", greeting: []byte{5, 1, 0}, request: name("slow.ns", 80), wantReply: repHostUnreachable},
		{name: "bind", greeting: []byte{5, 1, 0}, request: []byte{5, 2, 0, atypIPv4, 10, 0, 0, 1, 0, 80}, wantReply: repCommandNotSupported},
		{name: "udp associate", greeting: []byte{5, 1, 0}, request: []byte{5, 3, 0, atypIPv4, 0, 0, 0, 0, 0, 0}, wantReply: repCommandNotSupported},
		{name: "address type", greeting: []byte{5, 1, 0}, request: []byte{5, 1, 0, 9, 1, 2}, wantReply: repAddressTypeNotSupported},
		{name: "empty name", greeting: []byte{5, 1, 0}, request: []byte{5, 1, 0, atypDomain, 0, 0, 80}, wantReply: repGeneralFailure},
		{name: "IPv4", greeting: []byte{5, 2, 2, 0}, request: []byte{5, 1, 0, atypIPv4, 10, 96, 0, 20, 0, 80}, wantReply: repSucceeded},
		{name: "IPv6", greeting: []byte{5, 1, 0}, request: append(append([]byte{5, 1, 0, atypIPv6}, net.ParseIP("fd00::20")...), 0, 80), wantReply: repSucceeded},
		{name: "authentication only", greeting: []byte{5, 1, 2}, wantMeth: methodNoAcceptable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", w.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write(tt.greeting); err != nil {
				t.Fatal(err)
			}
			var m [2]byte
			if _, err := io.ReadFull(c, m[:]); err != nil {
				t.Fatal(err)
			}
			if m != [2]byte{5, tt.wantMeth} {
				t.Fatalf("method selection %v, want [5 %d]", m, tt.wantMeth)
			}
			if tt.request == nil {
				return
			}
			if _, err := c.Write(tt.request); err != nil {
				t.Fatal(err)
			}
			var rep [10]byte
			if _, err := io.ReadFull(c, rep[:]); err != nil {
				t.Fatal(err)
			}
			if rep[0] != 5 || rep[1] != tt.wantReply || rep[3] != atypIPv4 {
				t.Errorf("reply %v, want code %d with an IPv4 bound address", rep, tt.wantReply)
			}
		})
	}
	if diff := cmp.Diff([]string{"refused.ns:80", "nowhere.ns:80", "slow.ns:80", "10.96.0.20:80", "[fd00::20]:80"}, w.pod.addresses()); diff != "" {
		t.Errorf("pod dials mismatch (-want +got):\n%s", diff)
	}
}

func TestSOCKS4Refused(t *testing.T) {
	w := newWorld(t, nil)
	c, err := net.Dial("tcp", w.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = c.Write([]byte{4, 1, 0, 80, 10, 0, 0, 1, 0})
	got, _ := io.ReadAll(c)
	if diff := cmp.Diff([]byte{0, 91, 0, 0, 0, 0, 0, 0}, got); diff != "" {
		t.Errorf("SOCKS4 answer mismatch (-want +got):\n%s", diff)
	}
}

// TestGoClientWithEnv: Go's net/http finds the proxy through the environment Env returns (httpproxy
// is http.ProxyFromEnvironment without its once-per-process cache), for http and https, and keeps
// NO_PROXY destinations away from it.
func TestGoClientWithEnv(t *testing.T) {
	filter, err := egress.NewFilter([]string{"db", "*.example.com", "10.0.0.0/8", "cache:6379"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, filter)
	for _, kv := range Env(w.addr, filter) {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	proxyFor := httpproxy.FromEnvironment().ProxyFunc()
	tr := &http.Transport{
		Proxy:           func(r *http.Request) (*url.URL, error) { return proxyFor(r.URL) },
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for _, u := range []string{"http://web.ns/plain", "https://secure.ns/tls"} {
		resp, err := client.Get(u)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), " GET /") {
			t.Errorf("GET %s: %s %q", u, resp.Status, body)
		}
	}
	tests := []struct {
		url       string
		wantProxy bool
	}{
		{url: "http://web.ns/", wantProxy: true},
		{url: "https://secure.ns/", wantProxy: true},
		{url: "http://db:5432/", wantProxy: false},
		{url: "https://api.example.com/", wantProxy: false},
		{url: "http://10.1.2.3/", wantProxy: false},
		{url: "http://cache:6379/", wantProxy: true}, // the proxy routes rules with a port itself
		{url: "http://localhost:8080/", wantProxy: false},
	}
	for _, tt := range tests {
		u, _ := url.Parse(tt.url)
		p, err := proxyFor(u)
		if err != nil {
			t.Fatal(err)
		}
		if got := p != nil; got != tt.wantProxy {
			t.Errorf("proxy for %s = %v, want proxied %v", tt.url, p, tt.wantProxy)
		}
	}
}

func TestLocalRoutes(t *testing.T) {
	filter, err := egress.NewFilter([]string{"db", "192.168.1.0/24:5432", "*.example.com:443"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, filter)
	lport := ""
	for k := range w.local.hosts {
		if p, ok := strings.CutPrefix(k, "localhost:"); ok {
			lport = p
		}
	}
	for _, target := range []string{"http://db:5432/", "http://192.168.1.7:5432/", "http://localhost:" + lport + "/", "http://127.0.0.1:" + lport + "/"} {
		out, err := curl(t, "--socks5-hostname", w.addr, target)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(out, "local-db GET /") {
			t.Errorf("%s: %q, want the local server", target, out)
		}
	}
	out, err := curl(t, "-k", "-x", "http://"+w.addr, "https://api.example.com/x")
	if err != nil || out != "secure GET /x\n" {
		t.Errorf("CONNECT api.example.com:443: %q, %v", out, err)
	}
	out, err = curl(t, "-x", "http://"+w.addr, "http://web.ns/")
	if err != nil || out != "web GET /\nVia: 1.1 kubectl-trafficlab\n" {
		t.Errorf("web.ns: %q, %v", out, err)
	}
	if diff := cmp.Diff([]string{"web.ns:80"}, w.pod.addresses()); diff != "" {
		t.Errorf("pod dials mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"db:5432", "192.168.1.7:5432", "localhost:" + lport, "127.0.0.1:" + lport, "api.example.com:443"}, w.local.addresses()); diff != "" {
		t.Errorf("local dials mismatch (-want +got):\n%s", diff)
	}
}

// dialSOCKS connects through the proxy with a hand-made SOCKS5 client (x/net/proxy's hides the TCP
// connection, and with it CloseWrite).
func dialSOCKS(t *testing.T, w *world, address string) net.Conn {
	t.Helper()
	host, portStr, _ := net.SplitHostPort(address)
	port, _ := strconv.Atoi(portStr)
	c, err := net.Dial("tcp", w.addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	req := append([]byte{5, 1, 0}, appendRequest(nil, socksRequest{Cmd: cmdConnect, Host: host, Port: uint16(port)})...)
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	var rep [12]byte
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		t.Fatal(err)
	}
	if rep[0] != 5 || rep[1] != 0 || rep[3] != repSucceeded {
		t.Fatalf("SOCKS CONNECT %s: method selection and reply %v", address, rep)
	}
	return c
}

// dialCONNECT opens an HTTP CONNECT tunnel by hand.
func dialCONNECT(t *testing.T, w *world, address string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", w.addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", address, address)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || br.Buffered() != 0 {
		t.Fatalf("CONNECT %s: %s, %d bytes after the head", address, resp.Status, br.Buffered())
	}
	return c
}

// TestHalfClose: the client's write half-close reaches the server, whose answer still comes back.
func TestHalfClose(t *testing.T) {
	w := newWorld(t, nil)
	for name, dial := range map[string]func(*testing.T, *world, string) net.Conn{"socks": dialSOCKS, "connect": dialCONNECT} {
		t.Run(name, func(t *testing.T) {
			c := dial(t, w, "count.ns:7")
			defer c.Close()
			payload := strings.Repeat("x", 100_000)
			if _, err := io.WriteString(c, payload); err != nil {
				t.Fatal(err)
			}
			if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != "got 100000 bytes" {
				t.Errorf("answer %q, want the count after the half-close", got)
			}
		})
	}
}

func TestConcurrentClients(t *testing.T) {
	w := newWorld(t, nil)
	proxyURL, _ := url.Parse("http://" + w.addr)
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), MaxConnsPerHost: 50, MaxIdleConnsPerHost: 50}
	defer tr.CloseIdleConnections()
	socksURL, _ := url.Parse("socks5h://" + w.addr)
	str := &http.Transport{Proxy: http.ProxyURL(socksURL), TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	defer str.CloseIdleConnections()
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 100 {
		wg.Go(func() {
			tr := tr
			u := fmt.Sprintf("http://web.ns/%d", i)
			if i%2 == 1 {
				tr, u = str, fmt.Sprintf("https://secure.ns/%d", i)
			}
			resp, err := (&http.Client{Transport: tr, Timeout: 20 * time.Second}).Get(u)
			if err != nil {
				errs <- err
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(body), fmt.Sprintf(" GET /%d\n", i)) {
				errs <- fmt.Errorf("%s: %q", u, body)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestShutdown: ending Serve's context closes open tunnels and Serve returns.
func TestShutdown(t *testing.T) {
	w := newWorld(t, nil)
	c := dialSOCKS(t, w, "count.ns:7")
	defer c.Close()
	w.cancel()
	select {
	case err := <-w.served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
		w.served <- nil // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("Serve still running with a tunnel open")
	}
	_, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Errorf("tunnel after shutdown: %v", err)
	}
}

// TestUpgrade: an absolute-URI request that upgrades (WebSocket-style) becomes a tunnel, and an open
// upgraded connection does not keep Serve from returning.
func TestUpgrade(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want Upgrade: echo", http.StatusBadRequest)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprint(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		_ = brw.Flush()
		_, _ = io.Copy(c, brw)
	}))
	defer up.Close()
	w := newWorld(t, nil)
	w.pod.hosts["echo.ns:80"] = hostPort(up.URL)

	c, err := net.Dial("tcp", w.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(c, "GET http://echo.ns/ HTTP/1.1\r\nHost: echo.ns\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %s, want 101", resp.Status)
	}
	fmt.Fprint(c, "ping")
	got := make([]byte, 4)
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo through the upgrade: %q, %v", got, err)
	}
	w.cancel()
	select {
	case err := <-w.served:
		w.served <- err
	case <-time.After(10 * time.Second):
		t.Fatal("Serve still running with an upgraded connection open")
	}
}
