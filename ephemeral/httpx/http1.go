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
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/internal/httpsyntax"
)

// idleWatchAfter is how long a kept-alive client connection waits for its next request before its
// upstream connections are watched for their close (idle).
const idleWatchAfter = 100 * time.Millisecond

// bodyGrace is how long a finished response waits for the rest of its request body. A server may
// answer before reading the body (413, or a final status to "Expect: 100-continue"); the client then
// either sends the body anyway or closes, and a client that does neither must not pin the connection.
const bodyGrace = 2 * time.Second

// ServeHTTP1 proxies an HTTP/1.x client connection request by request: each request is decided by
// r.Steal and forwarded, head and body byte for byte, on a keep-alive connection to that side, which
// is dialed on first use and reused by later requests for the same side. Responses are relayed raw,
// one per request, so pipelined requests are answered in order. A request whose local process cannot
// be reached goes to the app, with a warning event. A successful upgrade (101, or 2xx to CONNECT) turns
// the connection into a raw relay between the client and that side.
//
// pre is what was already read from client (Peek's Prefix). If the first request is not HTTP after
// all, the connection goes to the app raw, as if the proxy were not there. ServeHTTP1 closes client and
// everything it dialed before it returns; a client that closes between requests is a nil error.
func ServeHTTP1(ctx context.Context, client net.Conn, pre []byte, r Route) error {
	multi := r.prepare()
	c := &h1conn{ctx: ctx, route: r, multi: multi, client: client, pre: bytes.NewReader(pre)}
	c.cr, c.cw = getReader(io.MultiReader(c.pre, client)), getWriter(client)
	c.conns.add(client)
	stop := context.AfterFunc(ctx, c.conns.closeAll)
	err := c.serve()
	stop()
	c.release()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

type h1conn struct {
	ctx    context.Context
	route  Route
	client net.Conn
	pre    *bytes.Reader // the part of Peek's prefix cr has not taken in yet
	cr     *bufio.Reader
	cw     *bufio.Writer
	conns  conns
	// multi: a Pick route of several sessions, whose upstreams never end the client's connection.
	multi  bool
	sides  sides
	ups    []*h1up // by side
	head   []byte  // the current request head; RequestHead.Raw points into it
	rhead  []byte  // the current response head
	served int     // requests forwarded so far
}

// h1up is a keep-alive connection to one side.
type h1up struct {
	conn net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
}

func (c *h1conn) release() {
	for s := range c.ups {
		c.drop(side(s))
	}
	c.conns.closeAll()
	putReader(c.cr)
	putWriter(c.cw)
}

func (c *h1conn) drop(s side) {
	if int(s) >= len(c.ups) {
		return
	}
	u := c.ups[s]
	if u == nil {
		return
	}
	c.ups[s] = nil
	c.conns.remove(u.conn)
	putReader(u.br)
	putWriter(u.bw)
}

func (c *h1conn) serve() error {
	for {
		if c.served > 0 {
			more, err := c.idle()
			if !more || err != nil {
				return err
			}
			c.unpark()
		}
		var err error
		// The deadline runs from the head's first byte (the first request's: from here, Peek having
		// read it) to its empty line, as the app's own slow-header protection would.
		to := c.route.headTimeout()
		_ = c.client.SetReadDeadline(time.Now().Add(to))
		c.head, err = readHead(c.cr, c.head, true)
		_ = c.client.SetReadDeadline(time.Time{})
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				c.route.warn(Event{}, "request head from %s not complete within %v; answered 408 and closed", c.client.RemoteAddr(), to)
				c.reply(http.StatusRequestTimeout, fmt.Sprintf("request head not complete within %v", to))
				return fmt.Errorf("read request: %w", err)
			}
			// A first head that never ends, or that the client broke off, goes to the app as it
			// came, which then answers (or not) as it would without the proxy.
			switch {
			case c.served == 0 && errors.Is(err, ErrHeadTooLarge):
				c.route.warn(Event{}, "first request head larger than 64 KiB; connection relayed raw to the app")
				return c.rawToApp()
			case c.served == 0 && errors.Is(err, io.ErrUnexpectedEOF):
				return c.rawToApp()
			}
			if errors.Is(err, ErrHeadTooLarge) {
				c.reply(http.StatusRequestHeaderFieldsTooLarge, "request head larger than 64 KiB")
			}
			return fmt.Errorf("read request: %w", err)
		}
		h, err := ParseRequestHead(c.head)
		if err != nil {
			if c.served == 0 {
				c.route.warn(Event{}, "first request is not HTTP/1 after all (%v); connection relayed raw to the app", err)
				return c.rawToApp()
			}
			c.reply(http.StatusBadRequest, err.Error())
			return fmt.Errorf("request %d: %w", c.served+1, err)
		}
		keep, err := c.exchange(&h)
		c.served++
		if err != nil || !keep {
			return err
		}
	}
}

// idle waits for the client's next request while it watches the upstream connections the client
// connection keeps. more is false when the connection is to end: the client closed it, or the app
// closed its side (an app closes idle keep-alive connections on its own schedule; the client, had it
// been connected to the app, would have seen that close, so it sees it now), or the local process
// closed its side and no app connection is left to watch. There is no timer of the agent's own: a
// shorter one than the client's pool would break clients that rely on the server's.
//
// The upstream connections are watched only once the client has been idle for idleWatchAfter: a
// watch is a goroutine per upstream connection, and a client that sends its next request sooner,
// as a busy one does, would pay for it on every request. A server closes an idle keep-alive
// connection after seconds, so the client hears of that close at most idleWatchAfter later than it
// would from the server itself; a request that comes first finds the dead connection (alive) and
// goes on a new one.
func (c *h1conn) idle() (more bool, err error) {
	if c.cr.Buffered() > 0 || c.pre.Len() > 0 {
		return true, nil // pipelined: the next request is already here
	}
	w := &idleWatch{client: c.client, multi: c.multi, ups: make([]*h1up, len(c.ups)), dead: make([]bool, len(c.ups))}
	for _, u := range c.ups {
		if u != nil {
			w.live++
		}
	}
	if w.live == 0 && !c.multi {
		// Nothing upstream holds this connection open: the side that answered last closed after
		// its response, and so does the client's side now.
		return false, nil
	}
	c.park()
	ups := slices.Clone(c.ups)
	later := time.AfterFunc(idleWatchAfter, func() {
		for s, u := range ups {
			if u != nil {
				w.start(side(s), u)
			}
		}
	})
	quiet := c.watchDrain()
	_, err = c.cr.Peek(1)
	later.Stop()
	drained := quiet()
	woke := w.stop()
	for s, dead := range w.dead {
		if dead {
			c.drop(side(s))
		}
	}
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, io.EOF), (woke || drained) && errors.Is(err, os.ErrDeadlineExceeded):
		return false, nil
	}
	return false, fmt.Errorf("read request: %w", err)
}

// park returns the buffers of the client's writer and of the upstream connections (readers and
// writers) to their pools while the connection waits for its next request, and unpark takes them
// back: a kept-alive connection waits far longer than it works, and the agent holds thousands of
// them (8 KiB each buffer; the client's reader stays, as the wait reads into it). A buffer that
// still holds bytes stays.
func (c *h1conn) park() {
	if c.cw.Buffered() == 0 {
		putWriter(c.cw)
		c.cw = nil
	}
	for _, u := range c.ups {
		if u == nil {
			continue
		}
		if u.bw.Buffered() == 0 {
			putWriter(u.bw)
			u.bw = nil
		}
		if u.br.Buffered() == 0 {
			putReader(u.br)
			u.br = nil
		}
	}
}

func (c *h1conn) unpark() {
	if c.cw == nil {
		c.cw = getWriter(c.client)
	}
	for _, u := range c.ups {
		if u == nil {
			continue
		}
		if u.bw == nil {
			u.bw = getWriter(u.conn)
		}
		if u.br == nil {
			u.br = getReader(u.conn)
		}
	}
}

// idleWatch watches a client connection's idle upstream connections for their close, and wakes the
// client's read when the client connection should end.
type idleWatch struct {
	client net.Conn
	wg     sync.WaitGroup
	ups    []*h1up
	// multi: only the app's close ends the client's connection (Route.Pick).
	multi bool

	mu        sync.Mutex
	live      int
	stopping  bool
	woke      bool
	appClosed bool
	dead      []bool
}

// start watches u; w.live already counts it. Nothing once stop has begun: start runs from a timer
// (idle) that may fire while the wait ends.
func (w *idleWatch) start(s side, u *h1up) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopping {
		return
	}
	if u.br == nil {
		u.br = getReader(u.conn) // parked: unpark keeps this one
	}
	w.ups[s] = u
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		// Any byte or error ends the wait: a server sends nothing unasked, so bytes mean framing that
		// can no longer be trusted, and a deadline is stop's.
		_, err := u.br.Peek(1)
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.stopping && errors.Is(err, os.ErrDeadlineExceeded) {
			return
		}
		w.dead[s] = true
		w.live--
		w.appClosed = w.appClosed || s == sideApp
		if (w.appClosed || (w.live == 0 && !w.multi)) && !w.woke && !w.stopping {
			w.woke = true
			_ = w.client.SetReadDeadline(time.Unix(1, 0))
		}
	}()
}

// stop ends the watchers and reports whether one of them woke the client's read.
func (w *idleWatch) stop() (woke bool) {
	w.mu.Lock()
	w.stopping = true
	woke = w.woke
	ups := slices.Clone(w.ups) // no start adds to them from here on
	w.mu.Unlock()
	for s, u := range ups {
		if u == nil {
			continue
		}
		if u.conn.SetReadDeadline(time.Unix(1, 0)) != nil {
			// A connection without deadlines can only be stopped by closing it.
			u.conn.Close()
		}
		defer func() {
			w.mu.Lock()
			dead := w.dead[s]
			w.mu.Unlock()
			if !dead {
				_ = u.conn.SetReadDeadline(time.Time{})
			}
		}()
	}
	w.wg.Wait()
	return woke
}

// rawToApp gives a connection whose first bytes were not the HTTP they promised to the app unchanged:
// the proxy should not answer for a protocol it does not speak.
func (c *h1conn) rawToApp() error {
	up, err := c.route.dial(c.ctx, nil)
	if err != nil {
		return err
	}
	if !c.conns.add(up) {
		return errAborted
	}
	head := bytes.Clone(c.head)
	return splice(c.ctx, &readerConn{Conn: c.client, r: io.MultiReader(bytes.NewReader(head), c.cr)}, up)
}

// exchange forwards one request and relays its response; keep says whether the client connection
// carries on.
func (c *h1conn) exchange(h *RequestHead) (keep bool, err error) {
	start := time.Now()
	c.declineH2C(h)
	target := c.route.Pick(h)
	ev := Event{Method: h.Method, Path: h.Target, Proto: h.Proto, Target: target}
	want := c.sides.slot(target)
	hasBody := h.Chunked || h.ContentLength > 0
	var res h1result
	// fallback allows a local process that cannot be reached to send the request to the app; it ends
	// once a connection to the local process has taken the request, which it may have received.
	fallback := true
	for attempt := 0; ; attempt++ {
		u, s, fresh, err := c.upstream(ev, want, fallback)
		if err != nil {
			msg := err.Error()
			if s != sideApp {
				msg = localFailed(err)
			}
			c.route.warn(ev, "%s", msg)
			c.reply(http.StatusBadGateway, "trafficlab: "+msg)
			ev.Stolen = s != sideApp
			ev.Status, ev.Duration = http.StatusBadGateway, time.Since(start)
			c.route.emit(ev)
			return false, err
		}
		ev.Stolen = s != sideApp
		res = c.roundTrip(h, u, hasBody)
		if s != sideApp {
			fallback = false
		}
		// When nothing reached the client and nothing of the client's was spent, a request that is
		// safe to repeat goes once more on a new connection to the same side, when a kept one turned
		// out dead. It never changes sides: a local process that broke mid-request may have acted on
		// it (a DELETE), and the app must not act on it again.
		retry := res.err != nil && !res.relayed && !hasBody && attempt == 0 && c.ctx.Err() == nil &&
			!fresh && replayable(h.Method, h.Get)
		if !retry {
			break
		}
		c.drop(s)
	}
	ev.Status, ev.ReqBytes, ev.RespBytes = res.status, res.reqBytes, res.respBytes
	ev.Duration = time.Since(start)
	if res.err != nil && !res.relayed {
		msg := res.err.Error()
		if res.side != sideApp {
			msg = localFailed(res.err)
			c.route.warn(ev, "%s", msg)
		}
		c.reply(http.StatusBadGateway, "trafficlab: "+msg)
		ev.Status = http.StatusBadGateway
	}
	c.route.emit(ev)
	if res.err != nil {
		return false, res.err
	}
	if res.upgraded {
		return false, c.spliceUpgraded(res.side)
	}
	if res.upClose {
		c.drop(res.side)
	}
	// A response that closes its connection closes the client's too, as the server would have; the
	// client read "Connection: close" in it and will not send more.
	return !h.Close && !res.clientClose && (!res.upClose || res.keptOpen), nil
}

// upstream returns the connection for side want, falling back to the app when the local process
// cannot be reached and fallback allows it.
func (c *h1conn) upstream(ev Event, want side, fallback bool) (u *h1up, s side, fresh bool, err error) {
	for int(want) >= len(c.ups) {
		c.ups = append(c.ups, nil)
	}
	if u := c.ups[want]; u != nil {
		if u.br.Buffered() == 0 && alive(u.conn) {
			return u, want, false, nil
		}
		c.drop(want)
	}
	conn, err := c.route.dial(c.ctx, c.sides.target(want))
	if err != nil && want != sideApp && fallback && c.ctx.Err() == nil {
		c.route.warn(ev, "local process unreachable (%v); request sent to the app", err)
		return c.upstream(ev, sideApp, false)
	}
	if err != nil {
		return nil, want, false, err
	}
	if !c.conns.add(conn) {
		return nil, want, false, errAborted
	}
	u = &h1up{conn: conn, br: getReader(conn), bw: getWriter(conn)}
	c.ups[want] = u
	return u, want, true, nil
}

type h1result struct {
	side                side
	status              int
	reqBytes, respBytes int64
	relayed             bool // response bytes reached the client's buffer
	upgraded            bool
	upClose             bool // the upstream connection cannot be reused
	clientClose         bool // the client connection cannot be reused
	keptOpen            bool // the upstream's close was kept from the client (keepHead)
	err                 error
}

// roundTrip sends the request on u and relays the response. A request body is copied by a goroutine
// of its own while the response is read, because a server may answer (100 Continue, or early with a
// final status) before it has read the body, and a proxy that insisted on sending the whole body first
// would deadlock with it. Bodiless requests, most of them, need no goroutine, and neither does a body
// of known length that the client's reader already holds whole (a small POST comes in the head's
// read): it goes with the head in the same write, since a write that small to a server at a request
// boundary does not wait for the server to read, and the request and its response are then relayed
// on the connection's own goroutine with no hand-off between two (issue 20: each costs wake-ups).
func (c *h1conn) roundTrip(h *RequestHead, u *h1up, hasBody bool) (res h1result) {
	for s, x := range c.ups {
		if x == u {
			res.side = side(s)
		}
	}
	res.reqBytes = int64(len(h.Raw))
	if _, err := u.bw.Write(h.Raw); err != nil {
		res.err = fmt.Errorf("send request to %s: %w", res.side, err)
		return res
	}
	if hasBody && bodyBuffered(h, c.cr) {
		n, err := copyN(u.bw, c.cr, h.ContentLength)
		res.reqBytes += n
		if err != nil {
			// Only the write can fail (the body is in memory): the request is spent and the
			// server's connection is mid-message.
			res.err = fmt.Errorf("send request to %s: %w", res.side, err)
			res.upClose, res.clientClose = true, true
			return res
		}
		hasBody = false
	}
	var body chan bodyResult
	if !hasBody {
		if err := u.bw.Flush(); err != nil {
			res.err = fmt.Errorf("send request to %s: %w", res.side, err)
			return res
		}
	} else {
		body = make(chan bodyResult, 1)
		go func() { body <- c.copyRequestBody(h, u) }()
	}
	c.relayResponse(h, u, &res)
	if body != nil {
		b, ok := c.awaitBody(body, u)
		res.reqBytes += b.n
		switch {
		case !ok:
			res.upClose, res.clientClose = true, true
		case b.err != nil && !isWriteError(b.err):
			if res.err == nil {
				res.err = fmt.Errorf("read request body: %w", b.err)
			}
		case b.err != nil:
			// The server stopped reading the body; its response (if any) has been relayed, but
			// neither connection is at a request boundary now.
			res.upClose, res.clientClose = true, true
		}
	}
	return res
}

// bodyBuffered reports a request body of known length, no larger than a pooled buffer, that br
// holds whole already.
func bodyBuffered(h *RequestHead, br *bufio.Reader) bool {
	return !h.Chunked && h.ContentLength > 0 && h.ContentLength <= bufioSize && h.ContentLength <= int64(br.Buffered())
}

type bodyResult struct {
	n   int64
	err error
}

func (c *h1conn) copyRequestBody(h *RequestHead, u *h1up) bodyResult {
	var n int64
	var err error
	if h.Chunked {
		n, err = copyChunked(u.bw, c.cr)
	} else {
		n, err = copyN(u.bw, c.cr, h.ContentLength)
	}
	if err == nil {
		if ferr := u.bw.Flush(); ferr != nil {
			err = writeError{ferr}
		}
	}
	if err != nil && !isWriteError(err) {
		// The client broke off mid-body: the server would wait for the rest forever, and so would
		// the response reader.
		u.conn.Close()
	}
	return bodyResult{n, err}
}

// awaitBody waits for the request body copy after the response is done; ok is false when it had to
// be cut short, which leaves both connections mid-message.
func (c *h1conn) awaitBody(body chan bodyResult, u *h1up) (bodyResult, bool) {
	select {
	case b := <-body:
		return b, true
	default:
	}
	t := time.NewTimer(bodyGrace)
	defer t.Stop()
	select {
	case b := <-body:
		return b, true
	case <-t.C:
	}
	_ = c.client.SetReadDeadline(time.Now())
	u.conn.Close()
	b := <-body
	_ = c.client.SetReadDeadline(time.Time{})
	return b, false
}

// relayResponse relays interim responses and then the final one to the client.
func (c *h1conn) relayResponse(h *RequestHead, u *h1up, res *h1result) {
	for {
		var err error
		c.rhead, err = readHead(u.br, c.rhead, false)
		if err != nil {
			res.err = fmt.Errorf("read response from %s: %w", res.side, err)
			res.upClose = true
			return
		}
		rh, err := ParseResponseHead(c.rhead)
		if err != nil {
			res.err = fmt.Errorf("response from %s: %w", res.side, err)
			res.upClose = true
			return
		}
		res.relayed = true
		res.status = rh.Status
		tunnel := rh.Status == http.StatusSwitchingProtocols ||
			(h.Method == http.MethodConnect && rh.Status/100 == 2)
		raw := rh.Raw
		switch {
		case !tunnel && rh.Status/100 != 1 && c.route.draining():
			raw, res.clientClose = closeHead(&rh), true
		case c.multi && res.side != sideApp && rh.Close && rh.Status/100 != 1 && !tunnel && !h.Close &&
			rh.Proto == "HTTP/1.1" && (rh.Chunked || rh.ContentLength >= 0 || bodiless(h, &rh)):
			// A session's server that closes its connection ends only that session's upstream:
			// the client, whose connection also carries the app's and other sessions' requests,
			// is not told to close (the response is framed, so nothing needs the close).
			raw, res.keptOpen = keepHead(&rh), true
		}
		res.respBytes += int64(len(raw))
		if _, err := c.cw.Write(raw); err != nil {
			res.err = fmt.Errorf("write response: %w", err)
			return
		}
		if rh.Status/100 == 1 || tunnel {
			if err := c.cw.Flush(); err != nil {
				res.err = fmt.Errorf("write response: %w", err)
				return
			}
			if tunnel {
				res.upgraded = true
				return
			}
			continue
		}
		var n int64
		switch {
		case bodiless(h, &rh):
		case rh.Chunked:
			n, err = copyChunked(c.cw, u.br)
		case rh.ContentLength >= 0:
			n, err = copyN(c.cw, u.br, rh.ContentLength)
		default:
			n, err = copyToEOF(c.cw, u.br)
			res.upClose, res.clientClose = true, true
		}
		res.respBytes += n
		if err == nil {
			err = c.cw.Flush()
		}
		if err != nil {
			res.err = fmt.Errorf("relay response body from %s: %w", res.side, err)
			res.upClose, res.clientClose = true, true
			return
		}
		res.upClose = res.upClose || rh.Close
		return
	}
}

// spliceUpgraded relays the upgraded connection raw; the other sides' connections are no longer
// needed.
func (c *h1conn) spliceUpgraded(s side) error {
	for o := range c.ups {
		if side(o) != s {
			c.drop(side(o))
		}
	}
	u := c.ups[s]
	c.ups[s] = nil
	defer func() {
		putReader(u.br)
		putWriter(u.bw)
	}()
	// Bare connections where nothing is buffered in front of them, so that an abort still resets
	// them (Join only resets a *net.TCPConn).
	a, b := c.client, u.conn
	if c.cr.Buffered() > 0 || c.pre.Len() > 0 {
		a = &readerConn{Conn: c.client, r: c.cr}
	}
	if u.br.Buffered() > 0 {
		b = &readerConn{Conn: u.conn, r: u.br}
	}
	return splice(c.ctx, a, b)
}

// declineH2C removes an "Upgrade: h2c" offer (RFC 7540 3.2) from the request, so that the server
// answers in HTTP/1.1 and the client carries on in HTTP/1.1. Taking the upgrade instead would have
// the proxy answer 101 for an app that may not speak HTTP/2 at all, or speak it only with prior
// knowledge; declining is always valid (the client asked, the server may say no), keeps every later
// request decided on its own, and costs only multiplexing for the rare clients that upgrade (curl
// --http2 on http:// URLs; gRPC uses prior knowledge, which ServeH2C handles). The offer is removed
// whatever the Connection header says, because servers differ on whether they need its "upgrade"
// token (golang.org/x/net/http2/h2c only looks for HTTP2-Settings). It reports whether it changed h.
func (c *h1conn) declineH2C(h *RequestHead) bool {
	offered := false
	var keepUp []string
	for _, f := range h.Header {
		if httpsyntax.EqualFold(f.Name, "Upgrade") {
			for t := range httpsyntax.ListElements(f.Value) {
				if httpsyntax.EqualFold(t, "h2c") {
					offered = true
				} else {
					keepUp = append(keepUp, t)
				}
			}
		}
	}
	if !offered {
		return false
	}
	if h.Upgrade != "" {
		h.Upgrade = strings.Join(keepUp, ", ")
	}
	var b bytes.Buffer
	b.Grow(len(h.Raw))
	b.WriteString(h.Method + " " + h.Target + " " + h.Proto + "\r\n")
	fields := h.Header[:0:0]
	for _, f := range h.Header {
		switch {
		case httpsyntax.EqualFold(f.Name, "HTTP2-Settings"):
			continue
		case httpsyntax.EqualFold(f.Name, "Upgrade"):
			var toks []string
			for t := range httpsyntax.ListElements(f.Value) {
				if !httpsyntax.EqualFold(t, "h2c") {
					toks = append(toks, t)
				}
			}
			if len(toks) == 0 {
				continue
			}
			f.Value = strings.Join(toks, ", ")
		case httpsyntax.EqualFold(f.Name, "Connection"):
			var toks []string
			for t := range httpsyntax.ListElements(f.Value) {
				if !httpsyntax.EqualFold(t, "HTTP2-Settings") && (len(keepUp) > 0 || !httpsyntax.EqualFold(t, "upgrade")) {
					toks = append(toks, t)
				}
			}
			if len(toks) == 0 {
				continue
			}
			f.Value = strings.Join(toks, ", ")
		}
		fields = append(fields, f)
		b.WriteString(f.Name + ": " + f.Value + "\r\n")
	}
	b.WriteString("\r\n")
	h.Header = fields
	h.Raw = b.Bytes()
	return true
}

// bodiless reports a response to h that has no body whatever its head says.
func bodiless(h *RequestHead, rh *ResponseHead) bool {
	return h.Method == http.MethodHead || rh.Status == http.StatusNoContent || rh.Status == http.StatusNotModified
}

// keepHead returns a final response head without its "close" connection option (and the
// Connection field dropped when nothing else is left in it): the client's connection carries on
// while the upstream's ends.
func keepHead(rh *ResponseHead) []byte {
	raw := rh.Raw
	line := bytes.IndexByte(raw, '\n') + 1
	var b bytes.Buffer
	b.Grow(len(raw))
	b.Write(raw[:line])
	for _, f := range rh.Header {
		if httpsyntax.EqualFold(f.Name, "Connection") {
			var keep []string
			for t := range httpsyntax.ListElements(f.Value) {
				if !httpsyntax.EqualFold(t, "close") {
					keep = append(keep, t)
				}
			}
			if len(keep) == 0 {
				continue
			}
			f.Value = strings.Join(keep, ", ")
		}
		b.WriteString(f.Name + ": " + f.Value + "\r\n")
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

// reply answers the client for the proxy itself (its own errors), and ends the connection.
func (c *h1conn) reply(status int, msg string) {
	msg += "\n"
	_, _ = c.cw.WriteString("HTTP/1.1 " + strconv.Itoa(status) + " " + http.StatusText(status) +
		"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: " + strconv.Itoa(len(msg)) +
		"\r\nConnection: close\r\n\r\n" + msg)
	_ = c.cw.Flush()
	// Every answer from the proxy itself ends the connection, often with the client still sending (a
	// head over the limit, a body the upstream never took). Closing a socket with unread data makes the
	// kernel reset the connection, and a reset can destroy the answer before the client reads it; so,
	// as net/http's server does, half-close and read what the client still sends, for a bounded time
	// and amount, before the caller closes.
	if cw, ok := c.client.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.client.SetReadDeadline(time.Now().Add(lingerAfterReply))
	_, _ = io.Copy(io.Discard, io.LimitReader(c.cr, lingerMaxBytes))
}

// lingerAfterReply and lingerMaxBytes bound the read after the proxy's own answer (reply): long
// enough for a client to see the answer and close, short enough that a client which never does
// cannot hold the connection.
const (
	lingerAfterReply = 500 * time.Millisecond
	lingerMaxBytes   = 256 << 10
)
