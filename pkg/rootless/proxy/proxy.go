// Package proxy is the proxy of `kubectl trafficlab exec --proxy` (and of systems without network
// namespaces): one local listener that speaks SOCKS5 and HTTP proxying, and dials every destination
// through the pod, except those the egress filter keeps on this machine. Clients find it through the
// environment Env returns.
package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/egress"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

const (
	// handshakeTimeout bounds what a client sends before its connection is tunneled: the first byte,
	// the SOCKS greeting and request, the HTTP request head.
	handshakeTimeout = 30 * time.Second
	// dialTimeout is a safety net above the dialers' own timeouts (the agent's is 10 s).
	dialTimeout = 30 * time.Second
	// idleTimeout closes an HTTP keep-alive connection from a client that sends no next request.
	idleTimeout = 2 * time.Minute
)

// Dialer opens TCP connections; address is "host:port" with host a name or an IP literal, as the
// client gave it.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Router decides where a destination goes; *egress.Filter is one.
type Router interface {
	RouteName(host string, port uint16) egress.Route
}

// Server proxies through Remote or Local as Router decides. Its fields must not change once it serves.
type Server struct {
	// Remote dials from the pod; names are resolved there, with the pod's search domains.
	Remote Dialer
	// Local dials from this machine; nil is a net.Dialer.
	Local Dialer
	// Router picks the dialer per destination; nil sends everything through the pod. Loopback
	// destinations (localhost, 127.0.0.0/8, ::1) always stay on this machine: with a proxy the
	// command runs here, and its localhost is where its own listeners are.
	Router Router
}

// Serve proxies the connections accepted from ln until ctx ends; then it closes ln and every
// connection still open, and returns nil. A failing Accept ends it with that error.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st := &serving{Server: s, ctx: ctx, conns: map[net.Conn]struct{}{}}
	st.transport = &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return st.dial(ctx, addr) },
		// Bodies pass through as the server sent them.
		DisableCompression:  true,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	httpLn := &chanListener{addr: ln.Addr(), conns: make(chan net.Conn), done: make(chan struct{})}
	hs := &http.Server{
		Handler:           st,
		ReadHeaderTimeout: handshakeTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          log.New(klogWriter{}, "", 0),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = hs.Serve(httpLn) })
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	var err error
	for {
		c, aerr := ln.Accept()
		if aerr != nil {
			if ctx.Err() == nil {
				err = fmt.Errorf("accepting proxy clients on %s: %w", ln.Addr(), aerr)
			}
			break
		}
		wg.Go(func() { st.detect(c, httpLn) })
	}
	// Cancelling first ends what the HTTP server runs on its own, such as upgraded (WebSocket)
	// connections, which ReverseProxy closes when the request's context ends.
	cancel()
	stop()
	ln.Close()
	st.closeAll()
	hs.Close()
	wg.Wait()
	st.handlers.Wait()
	st.transport.CloseIdleConnections()
	return err
}

// serving is one Serve call's state.
type serving struct {
	*Server
	ctx       context.Context
	transport *http.Transport

	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	closed   bool
	handlers sync.WaitGroup
}

// enter counts an HTTP handler in, so that Serve waits for it (hijacked tunnels outlive the HTTP
// server's own bookkeeping); false means Serve is ending.
func (st *serving) enter() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.closed {
		return false
	}
	st.handlers.Add(1)
	return true
}

// track registers a connection that Serve must close at the end (the HTTP server closes its own, but
// not SOCKS connections or hijacked CONNECT tunnels); false means Serve is ending.
func (st *serving) track(c net.Conn) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.closed {
		return false
	}
	st.conns[c] = struct{}{}
	return true
}

func (st *serving) untrack(c net.Conn) {
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.conns, c)
}

func (st *serving) closeAll() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.closed = true
	for c := range st.conns {
		c.Close()
	}
}

// detect tells SOCKS from HTTP by the first byte: SOCKS starts with its version (5, or 4 for the old
// protocol, refused), an HTTP request with a method's first letter.
func (st *serving) detect(c net.Conn, httpLn *chanListener) {
	if !st.track(c) {
		c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(handshakeTimeout))
	br := bufio.NewReader(c)
	first, err := br.Peek(1)
	if err != nil {
		st.untrack(c)
		c.Close()
		return
	}
	pc := &peekedConn{Conn: c, r: br}
	switch first[0] {
	case socksVersion:
		defer st.untrack(c)
		defer c.Close()
		st.serveSOCKS(pc)
	case 4:
		// SOCKS4 request rejected (VN 0, CD 91): clients say so instead of "connection closed".
		_, _ = c.Write([]byte{0, 91, 0, 0, 0, 0, 0, 0})
		klog.V(2).InfoS("proxy: SOCKS4 client refused, only SOCKS5 is served", "from", c.RemoteAddr())
		st.untrack(c)
		c.Close()
	default:
		st.untrack(c)
		_ = c.SetReadDeadline(time.Time{})
		select {
		case httpLn.conns <- pc:
		case <-httpLn.done:
			c.Close()
		}
	}
}

// dialError is a failed dial with where it was tried, for a one-line reason to the client.
type dialError struct {
	address string
	route   egress.Route
	err     error
}

func (e *dialError) Error() string {
	where := "through the pod"
	if e.route == egress.Local {
		where = "from this machine"
	}
	return fmt.Sprintf("cannot reach %q %s: %v", e.address, where, e.err)
}

func (e *dialError) Unwrap() error { return e.err }

func (st *serving) route(host string, port uint16) egress.Route {
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return egress.Local
	}
	if a, err := netip.ParseAddr(host); err == nil && a.Unmap().IsLoopback() {
		return egress.Local
	}
	if st.Router == nil {
		return egress.Remote
	}
	return st.Router.RouteName(host, port)
}

// dial opens a TCP connection to address ("host:port") where the router says.
func (st *serving) dial(ctx context.Context, address string) (net.Conn, error) {
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return nil, &dialError{address: address, err: fmt.Errorf("%w: %w", err, wire.ErrBadRequest)}
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, &dialError{address: address, err: fmt.Errorf("port %q: %w", portStr, wire.ErrBadRequest)}
	}
	route := st.route(host, uint16(port))
	d := st.Remote
	if route == egress.Local {
		d = st.Local
		if d == nil {
			d = &net.Dialer{Timeout: 10 * time.Second}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", address)
	if err != nil {
		klog.V(2).InfoS("proxy: dial failed", "address", address, "route", route, "err", err)
		return nil, &dialError{address: address, route: route, err: err}
	}
	klog.V(4).InfoS("proxy: dialed", "address", address, "route", route)
	if tc, ok := c.(*net.TCPConn); ok {
		// Every hop of a relay adds Nagle's delay otherwise.
		_ = tc.SetNoDelay(true)
	}
	return c, nil
}

// tunnel joins a client connection, whose handshake is done, to the dialed destination, with
// half-closes passed both ways, until both directions end or Serve ends.
func (st *serving) tunnel(client *peekedConn, dest net.Conn) {
	if !st.track(dest) {
		dest.Close()
		return
	}
	defer st.untrack(dest)
	_ = client.SetDeadline(time.Time{})
	if err := wire.Join(bare(client), dest); err != nil {
		klog.V(4).InfoS("proxy: tunnel ended with an error", "from", client.RemoteAddr(), "err", err)
	}
}

// bare strips the read-ahead wrappers that hold no bytes any more, so that Join gets the
// *net.TCPConn and can reset it when the other side fails: a reset stays visible end to end.
func bare(c net.Conn) net.Conn {
	for {
		pc, ok := c.(*peekedConn)
		if !ok || pc.r.Buffered() > 0 {
			return c
		}
		c = pc.Conn
	}
}

// peekedConn is a client connection whose first bytes were read ahead into r.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite passes a half-close on to the TCP connection underneath.
func (c *peekedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// chanListener hands the HTTP server the connections detect recognized as HTTP.
type chanListener struct {
	addr  net.Addr
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// klogWriter sends net/http's server log (client errors, mostly) to klog, instead of stderr.
type klogWriter struct{}

func (klogWriter) Write(p []byte) (int, error) {
	klog.V(2).InfoS("proxy: http server", "msg", strings.TrimSpace(string(p)))
	return len(p), nil
}

// isTimeout is for picking a status or reply code.
func isTimeout(err error) bool {
	return wire.CodeFor(err) == wire.CodeTimeout || errors.Is(err, context.DeadlineExceeded)
}
