package mirror

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/internal/httpsyntax"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// item is one thing to copy: a request, or bytes of an opaque connection.
type item struct {
	req  *capture.Request
	raw  []byte
	size int
}

// answer is the copy's response to one request.
type answer struct {
	status  int
	header  http.Header
	body    []byte
	trailer http.Header
}

// replayer copies one of the pod's connections to one connection (HTTP/1, opaque) or one HTTP/2
// client (h2c) of the destination, in the order the pod's client sent them. HTTP/1 requests are
// pipelined: the next one is written without waiting for the answer to the one before, which is read
// in order by the pipe's own reader. A copy's round trip crosses the port-forward chain twice, so
// waiting for each answer would bound a connection's copies to one per round trip.
type replayer struct {
	c      *conn
	q      chan *item
	once   sync.Once
	closed atomic.Bool

	sink    net.Conn // an opaque copy's connection
	pipe    *pipe    // an HTTP/1 copy's connection
	pipeMu  sync.Mutex
	refused atomic.Bool // set by the h2c client's dials too
	h2sem   chan struct{}
	h2wg    sync.WaitGroup
	h2      *http.Client
	sent    int64
	got     atomic.Int64
	rawDone chan struct{}
}

func newReplayer(c *conn) *replayer {
	r := &replayer{c: c, q: make(chan *item, queueLen)}
	c.m.wg.Add(1)
	go r.run()
	return r
}

// request queues a request; a full queue or budget drops it. Called on the capture goroutine.
func (r *replayer) request(req *capture.Request) {
	n := len(req.Raw) + len(req.Body)
	if drop := r.offer(&item{req: req, size: n}); drop != nil {
		drop.Add(1)
	}
}

// raw queues bytes of an opaque connection; false means the copy was given up.
func (r *replayer) raw(p []byte) bool {
	if drop := r.offer(&item{raw: p, size: len(p)}); drop != nil {
		r.abort(drop)
		return false
	}
	return true
}

// offer queues it, or returns the counter of why it was dropped. An item's bytes are copied only once
// they are reserved.
func (r *replayer) offer(it *item) *atomic.Int64 {
	if r.closed.Load() {
		return &r.c.m.stats.slow
	}
	if drop := r.c.m.reserve(it.size); drop != nil {
		return drop
	}
	if it.raw != nil {
		it.raw = append([]byte(nil), it.raw...)
	}
	select {
	case r.q <- it:
		return nil
	default:
		r.c.m.release(it.size)
		return &r.c.m.stats.slow
	}
}

// abort gives an opaque copy up: counted once, as the connection's drop (nil: counted already).
func (r *replayer) abort(counter *atomic.Int64) {
	if r.closed.Load() {
		return
	}
	if counter != nil {
		counter.Add(1)
	}
	r.finish()
}

// finish ends the queue; what is queued is still copied.
func (r *replayer) finish() {
	r.once.Do(func() {
		r.closed.Store(true)
		close(r.q)
	})
}

func (r *replayer) run() {
	defer r.c.m.wg.Done()
	ctx := r.c.m.ctx
	stop := context.AfterFunc(ctx, func() {
		r.pipeMu.Lock()
		defer r.pipeMu.Unlock()
		if r.sink != nil {
			r.sink.Close()
		}
		if r.pipe != nil {
			r.pipe.conn.Close()
		}
	})
	defer stop()
	opaque := false
	start := time.Now()
	for {
		var it *item
		var ok bool
		// Once the mirror is closed, a connection whose end was never seen (the capture stopped
		// first) must not hold Close: its queue may never be closed.
		select {
		case it, ok = <-r.q:
		case <-ctx.Done():
		}
		if !ok {
			break
		}
		r.c.m.release(it.size)
		if ctx.Err() != nil {
			continue
		}
		switch {
		case it.req == nil:
			opaque = true
			r.copyRaw(ctx, it.raw)
		case it.req.Proto == capture.ProtoH2C:
			r.replayH2Async(ctx, it.req)
		default:
			r.replayH1(ctx, it.req)
		}
	}
	if opaque {
		r.endRaw(start)
	}
	r.closePipe()
	if r.sink != nil {
		r.sink.Close()
	}
	r.h2wg.Wait()
	if r.h2 != nil {
		r.h2.CloseIdleConnections()
	}
	r.c.unpaired()
}

// open dials the destination once per connection; after a refusal the rest of the connection is
// counted as refused without dialing again.
func (r *replayer) open(ctx context.Context) (net.Conn, error) {
	if r.refused.Load() {
		return nil, errRefused
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := r.c.m.dial(dctx, r.c.flow)
	if err != nil {
		r.refused.Store(true)
		r.c.m.cfg.Log.Debug("mirror destination refused", "client", r.c.flow.Client.String(), "err", err)
		return nil, fmt.Errorf("%w: %w", errRefused, err)
	}
	return c, nil
}

var errRefused = errors.New("the copy's destination refused the connection")

func (r *replayer) event(req *capture.Request) wire.MirrorEvent {
	return wire.MirrorEvent{
		Kind: wire.EventMirrored, Port: int(r.c.flow.Server.Port()), Peer: r.c.flow.Client.String(),
		Proto: req.Proto, Method: req.Method, Path: req.Target, BytesIn: int64(len(req.Body)),
	}
}

// pipelineDepth bounds the requests written to one copy connection and not answered yet; past it,
// the connection's next copy waits for an answer (and the queue behind it may fill and drop).
const pipelineDepth = 64

// pipe is one HTTP/1 copy connection: the requests written to it whose answers are still to come,
// in order, for its reader.
type pipe struct {
	conn     net.Conn
	inflight chan *flight
	done     chan struct{} // the reader has finished
	broken   atomic.Bool   // the connection ended or failed: nothing more is written to it
}

// end marks the pipe ended and closes its connection; it reports whether it had ended already.
func (p *pipe) end() bool {
	ended := p.broken.Swap(true)
	p.conn.Close()
	return ended
}

// flight is one request written to a pipe.
type flight struct {
	req   *capture.Request
	ev    wire.MirrorEvent
	start time.Time
}

// replayH1 writes the request's bytes as captured; the pipe's reader reads the copy's response.
func (r *replayer) replayH1(ctx context.Context, req *capture.Request) {
	m := r.c.m
	for attempt := 1; ; attempt++ {
		if r.pipe != nil && r.pipe.broken.Load() {
			r.closePipe()
		}
		if r.pipe == nil {
			c, err := r.open(ctx)
			if err != nil {
				m.stats.refused.Add(1)
				return
			}
			p := &pipe{conn: c, inflight: make(chan *flight, pipelineDepth), done: make(chan struct{})}
			r.pipeMu.Lock()
			r.pipe = p
			r.pipeMu.Unlock()
			go r.readAnswers(p)
		}
		p := r.pipe
		f := &flight{req: req, ev: r.event(req), start: time.Now()}
		_ = p.conn.SetWriteDeadline(f.start.Add(answerTimeout))
		if _, err := p.conn.Write(req.Raw); err != nil {
			// The reader closes the connection after an answer that ends it (Connection: close):
			// then the request goes on a new connection, as the pod's client would have sent it.
			if p.end() && attempt == 1 {
				continue
			}
			m.stats.refused.Add(1)
			return
		}
		m.stats.mirrored.Add(1)
		select {
		case p.inflight <- f:
		case <-ctx.Done():
			m.stats.failed.Add(1)
		}
		if endsConnection(req) {
			// The destination closes after answering it; the next request needs a new connection.
			r.closePipe()
		}
		return
	}
}

// endsConnection reports whether the server closes the connection after answering req: HTTP/1.1
// with "Connection: close", or HTTP/1.0 without keep-alive.
func endsConnection(req *capture.Request) bool {
	line, _, _ := bytes.Cut(req.Raw, []byte("\n"))
	http10 := bytes.HasSuffix(bytes.TrimRight(line, "\r"), []byte("HTTP/1.0"))
	for _, h := range req.Header {
		value, ok := httpsyntax.FieldLineValue(h, "Connection")
		if !ok {
			continue
		}
		for tok := range httpsyntax.ListElements(value) {
			switch {
			case httpsyntax.EqualFold(tok, "close"):
				return true
			case httpsyntax.EqualFold(tok, "keep-alive"):
				http10 = false
			}
		}
	}
	return http10
}

// readAnswers reads the pipe's answers in the order its requests were written. Once the connection
// fails or the destination closes it after an answer, the requests still in flight were not served:
// they are counted as failed, and the next request opens a new connection.
func (r *replayer) readAnswers(p *pipe) {
	defer close(p.done)
	m := r.c.m
	// Small: one reader per copied connection, and an overloaded pod's clients open thousands
	// (13,234 in one 9,000 requests/s run); answers are mostly a few hundred bytes.
	br := bufio.NewReaderSize(p.conn, 4<<10)
	for f := range p.inflight {
		ev := f.ev
		var (
			a    *answer
			n    int64
			keep bool
			err  = errPipeEnded
		)
		if !p.broken.Load() {
			_ = p.conn.SetReadDeadline(time.Now().Add(answerTimeout))
			a, n, keep, err = readH1Response(br, f.req.Method, m.cfg.Spec.Diff)
			ev.Duration = wire.Millis(time.Since(f.start))
		}
		if err != nil {
			p.end()
			m.stats.failed.Add(1)
			ev.Error = err.Error()
			r.c.answered(f.req.Seq, ev, nil)
			continue
		}
		if !keep {
			p.end()
		}
		m.stats.answered.Add(1)
		ev.Status, ev.BytesOut = a.status, n
		r.c.answered(f.req.Seq, ev, a)
	}
}

var errPipeEnded = errors.New("the copy's destination closed the connection before answering")

// closePipe ends the current HTTP/1 copy connection once its reader has had the answers in flight.
func (r *replayer) closePipe() {
	p := r.pipe
	if p == nil {
		return
	}
	close(p.inflight)
	<-p.done
	p.conn.Close()
	r.pipeMu.Lock()
	r.pipe = nil
	r.pipeMu.Unlock()
}

// readH1Response reads one final response (skipping 1xx interim ones), keeping the body for a diff.
func readH1Response(br *bufio.Reader, method string, keep bool) (*answer, int64, bool, error) {
	for {
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			return nil, 0, false, fmt.Errorf("read the copy's response: %w", err)
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		a := &answer{status: resp.StatusCode, header: resp.Header}
		n, body, err := readBody(resp.Body, keep)
		resp.Body.Close()
		if err != nil {
			return nil, n, false, fmt.Errorf("read the copy's response body: %w", err)
		}
		a.body, a.trailer = body, resp.Trailer
		return a, n, !resp.Close, nil
	}
}

func readBody(rd io.Reader, keep bool) (int64, []byte, error) {
	if !keep {
		n, err := io.Copy(io.Discard, rd)
		return n, nil, err
	}
	var b bytes.Buffer
	n, err := io.Copy(&b, io.LimitReader(rd, maxBody))
	if err != nil {
		return n, nil, err
	}
	rest, err := io.Copy(io.Discard, rd)
	return n + rest, b.Bytes(), err
}

// h2Concurrency bounds the requests of one h2c connection copied at once: HTTP/2 multiplexes them
// on the copy's connection as the pod's client did on its own, so one slow answer (or the tunnel's
// round trip) does not hold back the requests behind it.
const h2Concurrency = 64

// replayH2Async copies an h2c request on its own goroutine; past h2Concurrency it waits, and the
// connection's queue fills behind it.
func (r *replayer) replayH2Async(ctx context.Context, req *capture.Request) {
	if r.h2 == nil {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		r.h2 = &http.Client{Transport: &http.Transport{
			Protocols: &p,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return r.open(ctx)
			},
		}}
		r.h2sem = make(chan struct{}, h2Concurrency)
	}
	select {
	case r.h2sem <- struct{}{}:
	case <-ctx.Done():
		return
	}
	r.h2wg.Add(1)
	go func() {
		defer r.h2wg.Done()
		defer func() { <-r.h2sem }()
		r.replayH2(ctx, req)
	}()
}

// replayH2 sends the decoded request over an h2c client of the destination; HPACK state cannot be
// copied from the pod's connection, so the request is encoded afresh.
func (r *replayer) replayH2(ctx context.Context, req *capture.Request) {
	m := r.c.m
	if r.refused.Load() {
		m.stats.refused.Add(1)
		return
	}
	hreq, err := h2Request(ctx, req)
	if err != nil {
		m.stats.failed.Add(1)
		return
	}
	ev := r.event(req)
	start := time.Now()
	rctx, cancel := context.WithTimeout(ctx, answerTimeout)
	defer cancel()
	resp, err := r.h2.Do(hreq.WithContext(rctx))
	if err != nil {
		if errors.Is(err, errRefused) {
			m.stats.refused.Add(1)
			return
		}
		m.stats.mirrored.Add(1)
		m.stats.failed.Add(1)
		ev.Error = err.Error()
		r.c.answered(req.Seq, ev, nil)
		return
	}
	m.stats.mirrored.Add(1)
	a := &answer{status: resp.StatusCode, header: resp.Header}
	n, body, err := readBody(resp.Body, m.cfg.Spec.Diff)
	resp.Body.Close()
	ev.Duration = wire.Millis(time.Since(start))
	if err != nil {
		m.stats.failed.Add(1)
		ev.Error = err.Error()
		r.c.answered(req.Seq, ev, nil)
		return
	}
	a.body, a.trailer = body, resp.Trailer
	m.stats.answered.Add(1)
	ev.Status, ev.BytesOut = a.status, n
	r.c.answered(req.Seq, ev, a)
}

// h2Request rebuilds a captured HTTP/2 request.
func h2Request(ctx context.Context, req *capture.Request) (*http.Request, error) {
	u := &url.URL{Scheme: "http", Host: req.Host, Opaque: req.Target}
	if !strings.HasPrefix(req.Target, "/") {
		u.Opaque = "/" + req.Target
	}
	hreq, err := http.NewRequestWithContext(ctx, req.Method, "http://"+req.Host+"/", bytes.NewReader(req.Body))
	if err != nil {
		return nil, fmt.Errorf("rebuild request %s %q: %w", req.Method, req.Target, err)
	}
	hreq.URL = u
	hreq.Host = req.Host
	hreq.ContentLength = int64(len(req.Body))
	for _, line := range req.Header {
		name, value, ok := httpsyntax.SplitFieldLine(line)
		if !ok {
			continue
		}
		switch strings.ToLower(name) {
		case "host", "content-length", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			continue
		case "te":
			if !strings.EqualFold(value, "trailers") {
				continue
			}
		}
		hreq.Header.Add(name, value)
	}
	if len(req.Trailer) > 0 {
		hreq.Trailer = http.Header{}
		for _, line := range req.Trailer {
			if name, value, ok := httpsyntax.SplitFieldLine(line); ok {
				hreq.Trailer.Add(name, value)
			}
		}
		hreq.ContentLength = -1
	}
	return hreq, nil
}

// copyRaw writes bytes of an opaque connection; the answers are read and counted by a reader of
// their own, since such protocols need not alternate.
func (r *replayer) copyRaw(ctx context.Context, p []byte) {
	if r.refused.Load() {
		return
	}
	if r.sink == nil {
		c, err := r.open(ctx)
		if err != nil {
			r.c.m.stats.refused.Add(1)
			return
		}
		r.pipeMu.Lock()
		r.sink = c
		r.pipeMu.Unlock()
		r.c.m.stats.mirrored.Add(1)
		r.rawDone = make(chan struct{})
		go func() {
			defer close(r.rawDone)
			n, _ := io.Copy(io.Discard, c)
			r.got.Add(n)
		}()
	}
	_ = r.sink.SetWriteDeadline(time.Now().Add(answerTimeout))
	if _, err := r.sink.Write(p); err != nil {
		r.refused.Store(true)
		return
	}
	r.sent += int64(len(p))
}

// endRaw half-closes an opaque copy, gives the destination a moment to finish, and reports it.
func (r *replayer) endRaw(start time.Time) {
	if r.sink == nil {
		return
	}
	if cw, ok := r.sink.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = r.sink.SetReadDeadline(time.Now().Add(2 * time.Second))
	<-r.rawDone
	r.c.m.stats.answered.Add(1)
	r.c.m.cfg.Events(wire.MirrorEvent{
		Kind: wire.EventCopied, Port: int(r.c.flow.Server.Port()), Peer: r.c.flow.Client.String(),
		Proto: capture.ProtoOpaque, BytesIn: r.sent, BytesOut: r.got.Load(), Duration: wire.Millis(time.Since(start)),
	})
}
