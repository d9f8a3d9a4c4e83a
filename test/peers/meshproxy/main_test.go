package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// testCA makes a CA as the e2e harness does, written where loadCA reads it.
func testCA(t *testing.T) *meshCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test mesh CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	ca, err := loadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// appSeen is what the test app saw of one request.
type appSeen struct {
	Remote, Proto, XFCC, ClientID string
}

// testApp is the pod's app on loopback: it records every request and counts its connections.
type testApp struct {
	addr  netip.AddrPort
	mu    sync.Mutex
	seen  []appSeen
	conns map[string]bool
}

func startApp(t *testing.T) *testApp {
	t.Helper()
	a := &testApp{conns: map[string]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a.addr = ln.Addr().(*net.TCPAddr).AddrPort()
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.seen = append(a.seen, appSeen{Remote: r.RemoteAddr, Proto: r.Proto, XFCC: r.Header.Get(headerXFCC), ClientID: r.Header.Get(headerClientID)})
		a.conns[r.RemoteAddr] = true
		a.mu.Unlock()
		_, _ = io.WriteString(w, "app:"+r.URL.Path)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return a
}

func (a *testApp) requests() []appSeen {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]appSeen(nil), a.seen...)
}

func (a *testApp) connCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.conns)
}

// startSidecar runs a sidecar's inbound and outbound listeners on loopback; origDst stands in for
// the capture rules: every connection "was headed" to dst.
func startSidecar(t *testing.T, meshName string, ca *meshCA, sa string, dst func() netip.AddrPort) (p *proxy, in, out netip.AddrPort) {
	t.Helper()
	m, err := meshByName(meshName)
	if err != nil {
		t.Fatal(err)
	}
	id := m.identity("shop", sa)
	creds, err := ca.issue(m, id)
	if err != nil {
		t.Fatal(err)
	}
	p = newProxy(m, netip.MustParseAddr("127.0.0.1"), id, creds, func(*net.TCPConn) (netip.AddrPort, error) { return dst(), nil })
	ctx, cancel := context.WithCancel(context.Background())
	inLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	outLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 2)
	go func() { done <- p.serveInbound(ctx, inLn) }()
	go func() { done <- p.serveOutbound(ctx, outLn) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("sidecar: %v", err)
			}
		}
		p.h1.CloseIdleConnections()
		p.h2.CloseIdleConnections()
	})
	return p, inLn.Addr().(*net.TCPAddr).AddrPort(), outLn.Addr().(*net.TCPAddr).AddrPort()
}

// get sends HTTP/1.1 GETs over one keep-alive connection to addr and returns the bodies.
func get(t *testing.T, addr netip.AddrPort, header http.Header, paths ...string) []string {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	var out []string
	for _, path := range paths {
		req, _ := http.NewRequest(http.MethodGet, "http://echo.shop"+path, nil)
		for k, v := range header {
			req.Header[k] = v
		}
		if err := req.Write(c); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%d %s", resp.StatusCode, b))
	}
	return out
}

func TestIstioMTLSAndUpstreamFromLoopback(t *testing.T) {
	ca := testCA(t)
	app := startApp(t)
	_, serverIn, _ := startSidecar(t, "istio", ca, "echo", func() netip.AddrPort { return app.addr })
	_, _, clientOut := startSidecar(t, "istio", ca, "client", func() netip.AddrPort { return serverIn })

	// Through the client's sidecar: mTLS between the sidecars, the client's identity in XFCC; three
	// requests on one connection.
	got := get(t, clientOut, http.Header{headerXFCC: {"By=forged"}}, "/a", "/b", "/c")
	if diff := cmp.Diff([]string{"200 app:/a", "200 app:/b", "200 app:/c"}, got); diff != "" {
		t.Errorf("answers (-want +got):\n%s", diff)
	}
	// Straight to the server's inbound in plaintext: no identity, a forged header removed.
	got = get(t, serverIn, http.Header{headerXFCC: {"By=forged;URI=spiffe://cluster.local/ns/shop/sa/admin"}}, "/plain")
	if diff := cmp.Diff([]string{"200 app:/plain"}, got); diff != "" {
		t.Errorf("plaintext answer (-want +got):\n%s", diff)
	}
	seen := app.requests()
	if len(seen) != 4 {
		t.Fatalf("the app saw %d requests, want 4: %+v", len(seen), seen)
	}
	for i, s := range seen {
		if !strings.HasPrefix(s.Remote, "127.0.0.6:") {
			t.Errorf("request %d came from %s, want 127.0.0.6 (Envoy's upstream source)", i, s.Remote)
		}
		wantID := "URI=spiffe://cluster.local/ns/shop/sa/client"
		if i == 3 {
			if s.XFCC != "" {
				t.Errorf("plaintext request reached the app with XFCC %q", s.XFCC)
			}
			continue
		}
		if !strings.HasPrefix(s.XFCC, "By=spiffe://cluster.local/ns/shop/sa/echo;Hash=") || !strings.HasSuffix(s.XFCC, ";"+wantID) {
			t.Errorf("request %d XFCC %q, want By=<server>;Hash=...;%s", i, s.XFCC, wantID)
		}
	}
	// The three requests of one client connection and the plaintext one went over the pool: no
	// more upstream connections than requests, and a sequential client reuses one.
	if n := app.connCount(); n != 1 {
		t.Errorf("the app saw %d upstream connections for sequential requests, want 1 (keep-alive pool)", n)
	}
}

func TestLinkerdClientIDAndUpstreamFromPodIP(t *testing.T) {
	ca := testCA(t)
	app := startApp(t)
	_, serverIn, _ := startSidecar(t, "linkerd", ca, "echo", func() netip.AddrPort { return app.addr })
	_, _, clientOut := startSidecar(t, "linkerd", ca, "client", func() netip.AddrPort { return serverIn })
	if got := get(t, clientOut, nil, "/x"); got[0] != "200 app:/x" {
		t.Fatalf("answer %q", got)
	}
	seen := app.requests()
	want := []appSeen{{Remote: seen[0].Remote, Proto: "HTTP/1.1", ClientID: "client.shop.serviceaccount.identity.linkerd.cluster.local"}}
	if diff := cmp.Diff(want, seen); diff != "" {
		t.Errorf("the app saw (-want +got):\n%s", diff)
	}
	if !strings.HasPrefix(seen[0].Remote, "127.0.0.1:") {
		t.Errorf("request came from %s, want the pod IP 127.0.0.1", seen[0].Remote)
	}
}

func TestH2OneUpstreamConnection(t *testing.T) {
	ca := testCA(t)
	app := startApp(t)
	_, serverIn, _ := startSidecar(t, "istio", ca, "echo", func() netip.AddrPort { return app.addr })
	// Two h2c clients with prior knowledge, each with its own connection to the sidecar.
	for range 2 {
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		tr := &http.Transport{Protocols: &protos}
		c := &http.Client{Transport: tr}
		for i := range 3 {
			resp, err := c.Get(fmt.Sprintf("http://%s/h2/%d", serverIn, i))
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
				t.Fatalf("answer %s %s", resp.Proto, resp.Status)
			}
		}
		tr.CloseIdleConnections()
	}
	for _, s := range app.requests() {
		if s.Proto != "HTTP/2.0" {
			t.Errorf("the app got %s, want HTTP/2.0", s.Proto)
		}
	}
	if n := app.connCount(); n != 1 {
		t.Errorf("the app saw %d h2 connections from two client connections, want 1", n)
	}
}

func TestTCPRelayAndPlaintextFallback(t *testing.T) {
	ca := testCA(t)
	// A server that speaks first and then echoes: no HTTP, no sidecar in front of it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.WriteString(c, "hello\n")
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	raw := ln.Addr().(*net.TCPAddr).AddrPort()
	_, _, clientOut := startSidecar(t, "istio", ca, "client", func() netip.AddrPort { return raw })
	c, err := net.Dial("tcp", clientOut.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || line != "hello\n" {
		t.Fatalf("greeting %q, %v", line, err)
	}
	if _, err := io.WriteString(c, "\x00\x01binary\n"); err != nil {
		t.Fatal(err)
	}
	line, err = br.ReadString('\n')
	if err != nil || line != "\x00\x01binary\n" {
		t.Fatalf("echo %q, %v", line, err)
	}
}

func TestInboundRelaysNonHTTP(t *testing.T) {
	ca := testCA(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	from := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		from <- c.RemoteAddr().String()
		_, _ = io.Copy(c, c)
	}()
	raw := ln.Addr().(*net.TCPAddr).AddrPort()
	_, serverIn, _ := startSidecar(t, "istio", ca, "db", func() netip.AddrPort { return raw })
	_, _, clientOut := startSidecar(t, "istio", ca, "client", func() netip.AddrPort { return serverIn })
	c, err := net.Dial("tcp", clientOut.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("\x01\x02 not http")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 11)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "\x01\x02 not http" {
		t.Fatalf("echo %q, %v", buf, err)
	}
	if src := <-from; !strings.HasPrefix(src, "127.0.0.6:") {
		t.Errorf("relayed connection came from %s, want 127.0.0.6", src)
	}
}

func TestMTLSRefusesAForeignCA(t *testing.T) {
	app := startApp(t)
	_, serverIn, _ := startSidecar(t, "istio", testCA(t), "echo", func() netip.AddrPort { return app.addr })
	m, _ := meshByName("istio")
	creds, err := testCA(t).issue(m, m.identity("shop", "intruder"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", serverIn.String(), creds.client)
	if err == nil {
		// TLS 1.3: the server's refusal of the client certificate arrives on the first read.
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil {
		t.Fatal("a client with another CA's certificate got through")
	}
	if n := len(app.requests()); n != 0 {
		t.Errorf("the app saw %d requests", n)
	}
}

func TestProbeApp(t *testing.T) {
	app := startApp(t)
	probers, err := parseAppProbers(fmt.Sprintf(`{"/app-health/main/readyz":{"httpGet":{"path":"/healthz","port":%d,"scheme":"HTTP","httpHeaders":[{"name":"X-Probe","value":"1"}]},"timeoutSeconds":1},`+
		`"/app-health/main/livez":{"tcpSocket":{"port":%d}}}`, app.addr.Port(), app.addr.Port()))
	if err != nil {
		t.Fatal(err)
	}
	m, _ := meshByName("istio")
	p := &proxy{mesh: m, podIP: netip.MustParseAddr("127.0.0.1")}
	for path, pr := range probers {
		if err := p.probeApp(context.Background(), pr, http.Header{"User-Agent": {"kube-probe/1.33"}}); err != nil {
			t.Errorf("%s: %v", path, err)
		}
	}
	seen := app.requests()
	if len(seen) != 1 || !strings.HasPrefix(seen[0].Remote, "127.0.0.6:") {
		t.Errorf("the app saw %+v, want one probe from 127.0.0.6", seen)
	}
	if _, err := parseAppProbers(`{"/app-health/main/readyz":{"httpGet":{"path":"/","port":"http"}}}`); err == nil {
		t.Error("a named port was accepted")
	}
}

func TestLooksHTTP(t *testing.T) {
	for in, want := range map[string]bool{
		"GET / HTTP/1.1\r\n": true, "PRI * HTTP/2.0\r\n": true, "POST": true, "\x16\x03\x01": false,
		"get / HTTP/1.1": false, " GET": false, "": false, "SSH-2.0": false,
	} {
		if got := looksHTTP([]byte(in)); got != want {
			t.Errorf("looksHTTP(%q) = %v, want %v", in, got, want)
		}
	}
}

func FuzzLooksHTTP(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1"))
	f.Add([]byte("\x16\x03\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if looksHTTP(b) && (len(b) == 0 || b[0] < 'A' || b[0] > 'Z') {
			t.Fatalf("looksHTTP(%q) without a leading method letter", b)
		}
	})
}

func FuzzParseAppProbers(f *testing.F) {
	f.Add(`{"/app-health/main/readyz":{"httpGet":{"path":"/healthz","port":8080},"timeoutSeconds":1}}`)
	f.Add(`{"/app-health/main/livez":{"tcpSocket":{"port":"http"}}}`)
	f.Fuzz(func(t *testing.T, v string) {
		probers, err := parseAppProbers(v)
		if err != nil {
			return
		}
		for path, pr := range probers {
			if pr.HTTPGet == nil && pr.TCPSocket == nil {
				t.Fatalf("%q accepted without a handler", path)
			}
		}
	})
}

func TestMeshByName(t *testing.T) {
	if _, err := meshByName("consul"); err == nil || !strings.Contains(err.Error(), `"consul"`) {
		t.Errorf("meshByName(consul) = %v", err)
	}
}

// A handshake the destination breaks off (a reset, as when a connection is flushed) fails the app's
// connection; only a destination that answers in something other than TLS gets plaintext.
func TestBrokenHandshakeIsNoPlaintextFallback(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan int, 8)
	go func() {
		for n := 1; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- n
			_, _ = c.Read(make([]byte, 1))
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
	}()
	dst := ln.Addr().(*net.TCPAddr).AddrPort()
	_, _, clientOut := startSidecar(t, "istio", testCA(t), "client", func() netip.AddrPort { return dst })
	c, err := net.Dial("tcp", clientOut.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("the app's connection got %d bytes, want it closed", n)
	}
	ln.Close()
	if n := len(accepted); n != 1 {
		t.Errorf("the destination saw %d connections, want 1 (no plaintext retry)", n)
	}
}

// The sidecar's outbound connections leave from its own port range, below the app's ephemeral one.
func TestOutboundSourcePorts(t *testing.T) {
	app := startApp(t)
	_, _, clientOut := startSidecar(t, "linkerd", testCA(t), "client", func() netip.AddrPort { return app.addr })
	for i := range 3 {
		if got := get(t, clientOut, nil, fmt.Sprintf("/p%d", i)); got[0] != fmt.Sprintf("200 app:/p%d", i) {
			t.Fatalf("answer %q", got)
		}
	}
	for _, s := range app.requests() {
		port, err := netip.ParseAddrPort(s.Remote)
		if err != nil || port.Port() < outboundPortFirst || port.Port() >= outboundPortFirst+outboundPortCount {
			t.Errorf("outbound connection from %s, want a port in %d-%d", s.Remote, outboundPortFirst, outboundPortFirst+outboundPortCount-1)
		}
	}
}
