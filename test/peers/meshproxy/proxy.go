package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/netfilter"
)

// The proxy's waits: a first byte from a caller that speaks first (a server-first protocol gets
// passed through after it), a TLS handshake, a dial.
const (
	sniffTimeout     = 5 * time.Second
	handshakeTimeout = 10 * time.Second
	dialTimeout      = 10 * time.Second
	// upstreamIdle is how long a pooled connection to the app may idle: Envoy's default for
	// upstream HTTP connections is one hour.
	upstreamIdle = time.Hour
)

// proxy is one sidecar.
type proxy struct {
	mesh     mesh
	podIP    netip.Addr
	identity string
	creds    credentials
	// origDst reads where a redirected connection was headed (SO_ORIGINAL_DST).
	origDst func(*net.TCPConn) (netip.AddrPort, error)
	// h1 pools HTTP/1.1 keep-alive connections to the app, h2 keeps one h2c connection per app
	// port; both dial from the mesh's upstream source.
	h1, h2 *http.Transport
	// ports are the outbound dials' source ports.
	ports *sourcePorts
}

// The outbound dials' source ports, below the kernel's ephemeral range (32768-60999 by default),
// which the app's connections take theirs from. Sharing one range, the app reused a port of a
// sidecar connection whose conntrack entry (not NATed: the proxy's uid is let out) outlived its
// socket in a state where a new SYN joins the old entry instead of starting one, so the app's
// connection left the pod un-redirected, in clear (seen in about 1 of 500 of the e2e loop's
// requests, without trafficlab). Real sidecars share the range; this test world must not make
// that race part of every mTLS assertion.
const (
	outboundPortFirst = 20000
	outboundPortCount = 12768
)

// sourcePorts hands out the outbound source ports in turn, skipping those in use.
type sourcePorts struct {
	mu   sync.Mutex
	next int
}

func (sp *sourcePorts) take() int {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	port := outboundPortFirst + sp.next
	sp.next = (sp.next + 1) % outboundPortCount
	return port
}

// dial connects to dst from the next free source port of the range.
func (sp *sourcePorts) dial(dst netip.AddrPort) (net.Conn, error) {
	var err error
	for range outboundPortCount {
		d := net.Dialer{Timeout: dialTimeout, LocalAddr: &net.TCPAddr{Port: sp.take()}}
		var c net.Conn
		c, err = d.Dial("tcp", dst.String())
		if errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, syscall.EADDRNOTAVAIL) {
			continue
		}
		return c, err
	}
	return nil, fmt.Errorf("no free source port in %d-%d: %w", outboundPortFirst, outboundPortFirst+outboundPortCount-1, err)
}

func newProxy(m mesh, podIP netip.Addr, id string, creds credentials, origDst func(*net.TCPConn) (netip.AddrPort, error)) *proxy {
	d := &net.Dialer{Timeout: dialTimeout, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(m.upstreamSource(podIP), 0))}
	var h2 http.Protocols
	h2.SetUnencryptedHTTP2(true)
	return &proxy{
		mesh: m, podIP: podIP, identity: id, creds: creds, origDst: origDst, ports: &sourcePorts{},
		h1: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 256, IdleConnTimeout: upstreamIdle, DisableCompression: true},
		h2: &http.Transport{DialContext: d.DialContext, Protocols: &h2, IdleConnTimeout: upstreamIdle, DisableCompression: true},
	}
}

// originalDst is the real SO_ORIGINAL_DST, read as the agent reads it.
func originalDst(c *net.TCPConn) (netip.AddrPort, error) { return netfilter.OriginalDst(c) }

// inConn is an accepted inbound connection after the sidecar looked at it: the bytes it peeked
// are read again, and it knows where the caller was headed and who the caller is.
type inConn struct {
	net.Conn
	r    *bufio.Reader
	orig netip.AddrPort
	// peer is the caller's certificate (mTLS), nil for a plaintext caller.
	peer *x509.Certificate
}

func (c *inConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// CloseWrite passes a relayed caller's end on to the underlying connection.
func (c *inConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// connListener hands the inbound connections that carry HTTP to one http.Server.
type connListener struct {
	addr   net.Addr
	conns  chan net.Conn
	done   chan struct{}
	closer sync.Once
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error   { l.closer.Do(func() { close(l.done) }); return nil }
func (l *connListener) Addr() net.Addr { return l.addr }

func (l *connListener) push(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

type connKey struct{}

// serveInbound takes the connections the inbound capture redirected to ln.
func (p *proxy) serveInbound(ctx context.Context, ln net.Listener) error {
	httpConns := &connListener{addr: ln.Addr(), conns: make(chan net.Conn), done: make(chan struct{})}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           p.inboundHandler(),
		Protocols:         &protos,
		ReadHeaderTimeout: time.Minute,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
		ErrorLog: log.Default(),
	}
	go func() {
		<-ctx.Done()
		srv.Close()
		ln.Close()
	}()
	go func() { _ = srv.Serve(httpConns) }()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("inbound accept: %w", err)
		}
		go p.inbound(c.(*net.TCPConn), httpConns)
	}
}

// inbound reads one inbound connection's original destination, terminates mTLS if the caller
// speaks it, and hands HTTP to the server, anything else to a plain relay.
func (p *proxy) inbound(c *net.TCPConn, httpConns *connListener) {
	orig, err := p.origDst(c)
	if err != nil {
		log.Printf("inbound from %s: %v", c.RemoteAddr(), err)
		c.Close()
		return
	}
	ic := &inConn{Conn: c, r: bufio.NewReader(c), orig: orig}
	first, err := peekFirst(ic)
	if err != nil && !errors.Is(err, errServerFirst) {
		log.Printf("inbound from %s to %s: %v", c.RemoteAddr(), orig, err)
		c.Close()
		return
	}
	// 0x16 is a TLS handshake record: a meshed peer's sidecar.
	if err == nil && first[0] == 0x16 {
		tc := tls.Server(ic, p.creds.server)
		hctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			log.Printf("inbound mTLS from %s to %s: %v", c.RemoteAddr(), orig, err)
			c.Close()
			return
		}
		ic = &inConn{Conn: tc, r: bufio.NewReader(tc), orig: orig, peer: tc.ConnectionState().PeerCertificates[0]}
		first, err = peekFirst(ic)
		if err != nil && !errors.Is(err, errServerFirst) {
			log.Printf("inbound from %s to %s: %v", c.RemoteAddr(), orig, err)
			tc.Close()
			return
		}
	}
	if err == nil && looksHTTP(first) {
		httpConns.push(ic)
		return
	}
	p.relay(ic, orig)
}

var errServerFirst = errors.New("the caller sent nothing yet")

// peekFirst returns what the caller sent first (at least one byte, as much as has arrived), or
// errServerFirst when it sends nothing within sniffTimeout, as a server-first protocol's would.
func peekFirst(c *inConn) ([]byte, error) {
	if err := c.SetReadDeadline(time.Now().Add(sniffTimeout)); err != nil {
		return nil, err
	}
	_, err := c.r.Peek(1)
	if err2 := c.SetReadDeadline(time.Time{}); err == nil {
		err = err2
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil, errServerFirst
	}
	if err != nil {
		return nil, err
	}
	b, _ := c.r.Peek(c.r.Buffered())
	return b, nil
}

// looksHTTP says whether a connection's first bytes are an HTTP/1 request line's method (upper-case
// letters up to a space) or the h2 preface ("PRI * HTTP/2.0"), which starts like one.
func looksHTTP(b []byte) bool {
	n := 0
	for _, c := range b {
		if c == ' ' {
			return n > 0
		}
		if c < 'A' || c > 'Z' {
			return false
		}
		n++
	}
	return n > 0
}

// inboundHandler proxies each request to the app at the connection's original destination, over
// the pooled upstream connections, with the caller's mesh identity in the mesh's header.
func (p *proxy) inboundHandler() http.Handler {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			ic := pr.In.Context().Value(connKey{}).(*inConn)
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = ic.orig.String()
			pr.Out.Host = pr.In.Host
			p.mesh.setPeer(pr.Out.Header, p.identity, ic.peer)
		},
		Transport:     roundTripperFunc(p.upstream),
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			// Envoy's answer when the app's connection fails before the response.
			log.Printf("inbound %s %s from %s: upstream: %v", r.Method, r.URL.Path, r.RemoteAddr, err)
			http.Error(w, "upstream connect error or disconnect/reset before headers. reset reason: "+err.Error(), http.StatusServiceUnavailable)
		},
		ErrorLog: log.Default(),
	}
}

// upstream picks the pool by the caller's protocol: h2 requests go over the port's one h2c
// connection, HTTP/1 requests over the keep-alive pool.
func (p *proxy) upstream(r *http.Request) (*http.Response, error) {
	if r.ProtoMajor == 2 {
		return p.h2.RoundTrip(r)
	}
	return p.h1.RoundTrip(r)
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// relay passes a connection that is not HTTP to the app as it came, from the upstream source.
func (p *proxy) relay(c *inConn, orig netip.AddrPort) {
	d := net.Dialer{Timeout: dialTimeout, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(p.mesh.upstreamSource(p.podIP), 0))}
	up, err := d.Dial("tcp", orig.String())
	if err != nil {
		log.Printf("inbound TCP from %s to %s: %v", c.RemoteAddr(), orig, err)
		c.Close()
		return
	}
	splice(c, up)
}

// serveOutbound takes the app's outgoing connections that the output capture redirected to ln.
func (p *proxy) serveOutbound(ctx context.Context, ln net.Listener) error {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("outbound accept: %w", err)
		}
		go p.outbound(c.(*net.TCPConn))
	}
}

// outbound dials where the app was headed, as this process (the mesh's UID, which the output
// rules let out) and with mTLS; a destination that answers the handshake in something other than
// TLS (no sidecar there) gets the app's bytes in plaintext, as Istio's auto mTLS does for a
// destination without a sidecar.
func (p *proxy) outbound(c *net.TCPConn) {
	orig, err := p.origDst(c)
	if err != nil {
		log.Printf("outbound from %s: %v", c.RemoteAddr(), err)
		c.Close()
		return
	}
	up, err := p.ports.dial(orig)
	if err != nil {
		log.Printf("outbound %s -> %s: %v", c.RemoteAddr(), orig, err)
		c.Close()
		return
	}
	tc := tls.Client(up, p.creds.client)
	hctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	err = tc.HandshakeContext(hctx)
	cancel()
	if err == nil {
		log.Printf("outbound %s -> %s: mTLS, peer %s", c.RemoteAddr(), orig, p.mesh.identityOf(tc.ConnectionState().PeerCertificates[0]))
		splice(c, tc)
		return
	}
	up.Close()
	// Only a destination that answered in something other than TLS has no sidecar; a handshake
	// that broke (reset, timeout) fails the app's connection as a real sidecar's would, rather
	// than sending the app's bytes in clear.
	var rh tls.RecordHeaderError
	if !errors.As(err, &rh) {
		log.Printf("outbound %s -> %s: mTLS handshake: %v", c.RemoteAddr(), orig, err)
		c.Close()
		return
	}
	plain, err2 := p.ports.dial(orig)
	if err2 != nil {
		log.Printf("outbound %s -> %s: %v", c.RemoteAddr(), orig, err2)
		c.Close()
		return
	}
	log.Printf("outbound %s -> %s: plaintext (no mTLS there: %v)", c.RemoteAddr(), orig, err)
	splice(c, plain)
}

// closeWriter is a connection whose sending side closes alone (TCP, TLS's close_notify).
type closeWriter interface{ CloseWrite() error }

// splice copies both ways until both sides are done, passing each side's end on as a half-close.
func splice(a, b net.Conn) {
	var wg sync.WaitGroup
	one := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(closeWriter); ok {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
		}
	}
	wg.Add(2)
	go one(a, b)
	go one(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}
