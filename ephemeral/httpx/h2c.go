package httpx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// h2cOnly is cleartext HTTP/2 with prior knowledge and nothing else: Peek has already seen the
// preface, and upstream connections must not fall back to HTTP/1.
var h2cOnly = func() *http.Protocols {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return p
}()

// dialKey carries the dial function of one side to h2Transport's DialContext.
type dialKey struct{}

// h2Transport only makes the client connections ServeH2C asks for (NewClientConn): one transport for
// all client connections, each dialing through the side's function in its context. Compression is
// off because a proxy must neither add Accept-Encoding nor decode bodies.
var h2Transport = &http.Transport{
	Protocols:          h2cOnly,
	DisableCompression: true,
	DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		dial, ok := ctx.Value(dialKey{}).(func(context.Context) (net.Conn, error))
		if !ok {
			return nil, errors.New("no upstream to dial")
		}
		return dial(ctx)
	},
}

// h2ErrorLog silences net/http's per-connection logging; the agent reports through Route.Event.
var h2ErrorLog = log.New(io.Discard, "", 0)

// ServeH2C proxies a cleartext HTTP/2 client connection (prior knowledge) stream by stream: it is the
// HTTP/2 server to the client, decides each stream with r.Steal, and forwards it on an HTTP/2 client
// connection to that side, dialed on first use and shared by the connection's streams. Bodies stream
// both ways as they come (gRPC client, server and bidirectional streaming), trailers (grpc-status)
// pass through, and a stream whose local process cannot be reached goes to the app with a warning.
// pre is what was already read from client (Peek's Prefix, starting with the preface). ServeH2C
// closes client and everything it dialed, and waits for its streams, before it returns.
//
// Both ends are net/http's own HTTP/2 (Go 1.26: Protocols.UnencryptedHTTP2, Transport.NewClientConn);
// golang.org/x/net/http2's server and transport are deprecated wrappers of the same code.
func ServeH2C(ctx context.Context, client net.Conn, pre []byte, r Route) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	multi := r.prepare()
	p := &h2proxy{ctx: ctx, route: r, multi: multi, upGone: make(chan struct{}), started: make(chan struct{})}
	conn := client
	if len(pre) > 0 {
		conn = &readerConn{Conn: client, r: io.MultiReader(bytes.NewReader(pre), client)}
	}
	// net/http serves listeners, not connections: this one hands out conn once, and the server's
	// ConnState hook says when conn is done.
	ln := &oneConnListener{conn: conn, closed: make(chan struct{})}
	connDone := make(chan struct{})
	var doneOnce sync.Once
	srv := &http.Server{
		Handler:     p,
		Protocols:   h2cOnly,
		ErrorLog:    h2ErrorLog,
		BaseContext: func(net.Listener) context.Context { return ctx },
		// HTTP/1's limits (ServeHTTP1): a header list as large as an HTTP/1 head, not net/http's
		// 1 MiB default; the head deadline, which net/http's HTTP/2 server applies only to the
		// preface (already read by Peek: it has no per-stream header deadline). No IdleTimeout: the
		// client connection ends when the app's does (upGone), never on a timer of the agent's that
		// could be shorter than the client's pool.
		ReadHeaderTimeout: r.headTimeout(),
		MaxHeaderBytes:    MaxHeadSize,
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateClosed || st == http.StateHijacked {
				doneOnce.Do(func() { close(connDone) })
			}
		},
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	var drain <-chan struct{}
	if r.Drain != nil {
		drain = p.drainAfterFirst(r.Drain.Done())
	}
	// shut is the graceful close that follows the app's, or Route.Drain: GOAWAY to the client
	// (net/http names the last stream it took), streams in flight finish, then the connection
	// closes.
	var shut sync.WaitGroup
	select {
	case <-connDone:
	case <-ctx.Done():
	case <-p.upGone:
		shut.Go(func() { _ = srv.Shutdown(ctx) })
	case <-drain:
		shut.Go(func() { _ = srv.Shutdown(ctx) })
	}
	// The connection ends on its own (connDone is closed once), or is cut when the context goes.
	select {
	case <-connDone:
	case <-ctx.Done():
		client.Close()
		<-connDone
	}
	shut.Wait()
	err := context.Cause(ctx)
	ln.Close()
	<-served
	client.Close()
	p.shutdown()
	return err
}

// oneConnListener accepts one connection, then blocks until closed.
type oneConnListener struct {
	mu     sync.Mutex
	conn   net.Conn
	closed chan struct{}
	once   sync.Once
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	c := l.conn
	l.conn = nil
	l.mu.Unlock()
	if c != nil {
		return c, nil
	}
	<-l.closed
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return dummyAddr{} }

type dummyAddr struct{}

func (dummyAddr) Network() string { return "tcp" }
func (dummyAddr) String() string  { return "h2c" }

type h2proxy struct {
	ctx   context.Context
	route Route

	// multi: a Pick route of several sessions, whose upstreams never end the client's connection.
	multi bool
	slots sides

	mu       sync.Mutex
	closed   bool
	handlers sync.WaitGroup
	sides    []*h2side // by side, under mu

	// upGone is closed when the client connection is to end as the app's side did: an app
	// connection closed (an app closes idle connections, or sends GOAWAY to drain, on its own
	// schedule, and the client would have seen that), or the last upstream connection closed.
	upGone     chan struct{}
	upGoneOnce sync.Once
	live       atomic.Int32 // upstream connections not yet closed

	// started is closed when the first stream arrives.
	started     chan struct{}
	startedOnce sync.Once
}

// drainAfterFirst returns a channel closed once drain is and the connection has taken a stream
// (nil when drain is nil: never). A connection that arrives already drained serves what its client
// sent first before its GOAWAY, as an HTTP/1 one serves one request: a GOAWAY naming no stream
// would send the client to a new connection that fares no better.
func (p *h2proxy) drainAfterFirst(drain <-chan struct{}) <-chan struct{} {
	if drain == nil {
		return nil
	}
	now := make(chan struct{})
	go func() {
		for _, c := range []<-chan struct{}{drain, p.started} {
			select {
			case <-c:
			case <-p.ctx.Done():
				return
			}
		}
		close(now)
	}()
	return now
}

// watch ends the client connection after cc, as upGone says.
func (p *h2proxy) watch(s side, cc *http.ClientConn) {
	p.live.Add(1)
	var once sync.Once
	cc.SetStateHook(func(cc *http.ClientConn) {
		if cc.Err() == nil {
			return
		}
		once.Do(func() {
			last := p.live.Add(-1) == 0
			p.mu.Lock()
			ours := p.closed // shutdown closes them
			p.mu.Unlock()
			if !ours && (s == sideApp || (last && !p.multi)) {
				p.upGoneOnce.Do(func() { close(p.upGone) })
			}
		})
	})
}

// h2side holds the client connections to one side. Streams share cur until it cannot take more
// (its peer's stream limit, or a GOAWAY, after which a reused connection would only fail requests),
// then a new one is dialed.
type h2side struct {
	mu  sync.Mutex
	cur *http.ClientConn
	all []*http.ClientConn
}

// side returns the client connections to side s, made on first use.
func (p *h2proxy) side(s side) *h2side {
	p.mu.Lock()
	defer p.mu.Unlock()
	for int(s) >= len(p.sides) {
		p.sides = append(p.sides, nil)
	}
	if p.sides[s] == nil {
		p.sides[s] = &h2side{}
	}
	return p.sides[s]
}

// enter registers a handler; false once the connection is shutting down, so that no handler starts
// after shutdown has begun waiting.
func (p *h2proxy) enter() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.handlers.Add(1)
	return true
}

func (p *h2proxy) shutdown() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	// The client connection is closed, so every stream's context is done and handlers end promptly.
	p.handlers.Wait()
	p.mu.Lock()
	all := p.sides
	p.mu.Unlock()
	for _, sd := range all {
		if sd == nil {
			continue
		}
		sd.mu.Lock()
		for _, cc := range sd.all {
			cc.Close()
		}
		sd.all, sd.cur = nil, nil
		sd.mu.Unlock()
	}
}

func (p *h2proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !p.enter() {
		return
	}
	defer p.handlers.Done()
	p.startedOnce.Do(func() { close(p.started) })
	start := time.Now()
	head := h2Head(r)
	target := p.route.Pick(&head)
	ev := Event{Method: r.Method, Path: head.Target, Proto: "h2c", Target: target}
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		ev.Proto = "grpc"
	}
	resp, s, body, err := p.roundTrip(r, p.slots.slot(target), ev)
	ev.Stolen = s != sideApp
	if err != nil {
		if r.Context().Err() == nil {
			msg := err.Error()
			if s != sideApp {
				msg = localFailed(err)
			}
			p.route.warn(ev, "%s", msg)
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusBadGateway)
			_, _ = io.WriteString(w, "trafficlab: "+msg+"\n")
			ev.Status = http.StatusBadGateway
		}
		ev.Duration = time.Since(start)
		p.route.emit(ev)
		return
	}
	defer resp.Body.Close()
	ev.Status = resp.StatusCode
	n, err := relayH2Response(w, resp)
	ev.RespBytes, ev.ReqBytes = n, body.n.Load()
	ev.Duration = time.Since(start)
	p.route.emit(ev)
	if err != nil {
		// Reset the client's stream rather than end it cleanly: a body cut short (or a gRPC stream
		// without its status) must look broken downstream too.
		panic(http.ErrAbortHandler)
	}
}

// relayH2Response copies resp to w: headers, the body as it arrives, then trailers.
func relayH2Response(w http.ResponseWriter, resp *http.Response) (int64, error) {
	h := w.Header()
	for k, vv := range resp.Header {
		if k != "Trailer" {
			h[k] = vv
		}
	}
	// Nil values stop the server from adding what the upstream did not send.
	for _, k := range []string{"Date", "Content-Type", "Content-Length"} {
		if _, ok := resp.Header[k]; !ok {
			h[k] = nil
		}
	}
	declared := make(map[string]bool, len(resp.Trailer))
	for k := range resp.Trailer {
		declared[k] = true
		h.Add("Trailer", k)
	}
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	// A body of unknown length is a stream (gRPC, server-sent events): headers go out now and every
	// piece as it comes. A response that ended with its headers (ContentLength 0, such as a gRPC
	// trailers-only error) must not be flushed early, or its status would arrive as headers followed
	// by a bare end of stream instead of one HEADERS frame that ends the stream.
	stream := resp.ContentLength < 0
	if stream {
		_ = rc.Flush()
	}
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	var n int64
	for {
		m, err := resp.Body.Read(*bp)
		if m > 0 {
			if _, werr := w.Write((*bp)[:m]); werr != nil {
				return n, fmt.Errorf("write response: %w", werr)
			}
			n += int64(m)
			if stream {
				_ = rc.Flush()
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return n, fmt.Errorf("read response: %w", err)
		}
	}
	for k, vv := range resp.Trailer {
		if declared[k] {
			h[k] = vv
		} else {
			h[http.TrailerPrefix+k] = vv
		}
	}
	return n, nil
}

// roundTrip sends r to side want. When the local process cannot be reached (no connection to it
// could be made) the request goes to the app instead; once a connection to it took the request it
// never does, since the process may have acted on it. A request that is still untouched may go a
// second time to the same side on a new connection, when a reused one turned out dead and the
// request is safe to repeat.
func (p *h2proxy) roundTrip(r *http.Request, want side, ev Event) (*http.Response, side, *h2body, error) {
	fallback := true
	for attempt := 0; ; attempt++ {
		body := &h2body{rc: r.Body}
		out := upstreamRequest(r, body)
		cc, s, fresh, err := p.clientConn(r.Context(), want, ev, fallback)
		if err != nil {
			return nil, s, body, err
		}
		want = s
		if s != sideApp {
			fallback = false
		}
		resp, err := cc.RoundTrip(out)
		if err == nil {
			return resp, s, body, nil
		}
		err = fmt.Errorf("%s: %w", s, err)
		if attempt > 0 || body.n.Load() > 0 || r.Context().Err() != nil {
			return nil, s, body, err
		}
		if !fresh && cc.Err() != nil && replayable(r.Method, r.Header.Get) {
			p.forget(s, cc)
			continue
		}
		return nil, s, body, err
	}
}

// replayable is net/http's rule for resending a request on a new connection after the old one
// failed: idempotent methods, or a client that marked the request with an idempotency key.
func replayable(method string, get func(string) string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return get("Idempotency-Key") != "" || get("X-Idempotency-Key") != ""
}

// clientConn returns a client connection to side want with a stream reserved on it, falling back
// to the app when the local process cannot be reached.
func (p *h2proxy) clientConn(ctx context.Context, want side, ev Event, fallback bool) (cc *http.ClientConn, s side, fresh bool, err error) {
	sd := p.side(want)
	sd.mu.Lock()
	if sd.cur != nil && sd.cur.Reserve() == nil {
		cc = sd.cur
		sd.mu.Unlock()
		return cc, want, false, nil
	}
	// The connection outlives the stream that dials it, so it hangs off the client connection's
	// context; the stream's own context only bounds the wait.
	dialCtx := context.WithValue(p.ctx, dialKey{}, func(ctx context.Context) (net.Conn, error) {
		return p.route.dial(ctx, p.slots.target(want))
	})
	cc, err = dialCC(ctx, dialCtx)
	if err != nil {
		sd.mu.Unlock()
		if want != sideApp && fallback && ctx.Err() == nil {
			p.route.warn(ev, "local process unreachable (%v); request sent to the app", err)
			return p.clientConn(ctx, sideApp, ev, false)
		}
		return nil, want, false, err
	}
	defer sd.mu.Unlock()
	p.watch(want, cc)
	// No need to check for shutdown here: it waits for this handler before closing sd.all.
	live := sd.all[:0]
	for _, old := range sd.all {
		if old.Err() != nil || (old.InFlight() == 0 && old.Available() == 0) {
			old.Close()
			continue
		}
		live = append(live, old)
	}
	live = append(live, cc)
	sd.cur, sd.all = cc, live
	if err := cc.Reserve(); err != nil {
		return nil, want, true, fmt.Errorf("%s: %w", want, err)
	}
	return cc, want, true, nil
}

// dialCC makes a client connection in dialCtx, giving up when ctx (the stream) ends first. The
// connection does not depend on dialCtx once made.
func dialCC(ctx, dialCtx context.Context) (*http.ClientConn, error) {
	dialCtx, cancel := context.WithCancel(dialCtx)
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	return h2Transport.NewClientConn(dialCtx, "http", "upstream:80")
}

// forget drops a client connection that failed a request it should have taken.
func (p *h2proxy) forget(s side, cc *http.ClientConn) {
	sd := p.side(s)
	sd.mu.Lock()
	if sd.cur == cc {
		sd.cur = nil
	}
	sd.mu.Unlock()
	cc.Close()
}

// upstreamRequest is r as it goes upstream: same method, :path, :authority, headers and trailers.
func upstreamRequest(r *http.Request, body *h2body) *http.Request {
	u := &url.URL{Scheme: "http", Host: r.Host}
	path, query, hasQuery := strings.Cut(r.RequestURI, "?")
	if strings.HasPrefix(path, "/") && !strings.HasPrefix(path, "//") || path == "*" {
		// Opaque keeps the path exactly as the client escaped it.
		u.Opaque, u.RawQuery, u.ForceQuery = path, query, hasQuery && query == ""
	} else {
		u.Path, u.RawPath, u.RawQuery = r.URL.Path, r.URL.RawPath, r.URL.RawQuery
	}
	out := &http.Request{
		Method:        r.Method,
		URL:           u,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
		Header:        r.Header.Clone(),
		Host:          r.Host,
		ContentLength: r.ContentLength,
		Trailer:       r.Trailer,
		Body:          body,
	}
	if r.ContentLength == 0 {
		out.Body = http.NoBody
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		// Nil: send none, rather than the transport's "Go-http-client/2.0".
		out.Header["User-Agent"] = nil
	}
	return out.WithContext(r.Context())
}

// h2body counts what the upstream transport reads of a request body. While nothing has been read
// the request can still be sent elsewhere, so Close (which the transport calls on every failure)
// leaves the client's body open until then.
type h2body struct {
	rc io.ReadCloser
	n  atomic.Int64
}

func (b *h2body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func (b *h2body) Close() error {
	if b.n.Load() == 0 {
		return nil
	}
	return b.rc.Close()
}

// h2Head is the RequestHead of an HTTP/2 request, for Steal.
func h2Head(r *http.Request) RequestHead {
	n := 1
	for _, vv := range r.Header {
		n += len(vv)
	}
	h := RequestHead{Method: r.Method, Target: r.RequestURI, Proto: "HTTP/2.0", ContentLength: r.ContentLength,
		Header: make([]HeaderField, 0, n)}
	for k, vv := range r.Header {
		for _, v := range vv {
			h.Header = append(h.Header, HeaderField{Name: k, Value: v})
		}
	}
	h.addHost(r.Host)
	return h
}
