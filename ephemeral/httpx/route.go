package httpx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Route is where one client connection's requests may go, and who hears about them.
type Route struct {
	// Steal decides one request: true sends it to Local. The agent combines its filter (a
	// wire.FilterMatcher over Method, PathQuery and HeaderLines) with the probe rule here (whole-port steal is a Steal that returns true for everything but probes). nil
	// steals nothing. Ignored when Pick is set.
	Steal func(h *RequestHead) bool
	// Pick, when set, decides one request among several sessions (ephemeral/steal's dispatcher):
	// the Target it returns, each with its own Local, or nil for the app. It replaces Steal and
	// Local, and with it a session's upstream (its local server's GOAWAY or close, its dead tunnel)
	// never ends the client's connection: only the app's does, as it would without the proxy.
	Pick func(h *RequestHead) *Target
	// App dials a new connection to the pod's own app (the connection's original destination). As
	// with net.Dialer.DialContext, ctx bounds the dial only: the connection must outlive it.
	App func(ctx context.Context) (net.Conn, error)
	// Local dials a new connection to the developer's process through the tunnel. It fails when that
	// process cannot be reached (the plugin refused the open, or did not answer within OpenTimeout),
	// and only then does the request go to the app, with a warning. Once Local has returned a
	// connection and a request byte may have reached the process, the request never goes to the app:
	// a failure then answers the client 502 (docs/protocol.md, "Fallback"). nil means always down.
	Local func(ctx context.Context) (net.Conn, error)
	// OpenTimeout bounds Local; 0 means wire.IncomingOpenTimeout. Local must honour its context: an
	// open abandoned there must never carry the request later.
	OpenTimeout time.Duration
	// HeadTimeout bounds each request head from its first byte to its end; 0 means
	// wire.DefaultHeadTimeout. A client that is slower gets 408 and its connection closed.
	HeadTimeout time.Duration
	// Drain, once closed, ends the client connection gracefully, as a server going away would:
	// HTTP/1 answers its next response with "Connection: close" and closes after it; HTTP/2 sends
	// GOAWAY (naming the last stream it took) and closes once its streams are done. An HTTP/1
	// connection waiting for its next request is closed once it has waited DrainIdle. nil never
	// drains. A context rather than a channel: an idle HTTP/1 connection registers on it
	// (context.AfterFunc) without a goroutine of its own, so a kept-alive request costs none.
	Drain context.Context
	// Event hears about every request when its response is done, and about warnings when they happen.
	// It is called from the connection's goroutines (HTTP/2: one per stream) and must not block long.
	Event func(Event)
}

// Target is one session's side of a Route with Pick: where the requests Pick gives it go.
type Target struct {
	// Local dials the session's process through its own tunnel, as Route.Local does.
	Local func(ctx context.Context) (net.Conn, error)
}

// Event describes one finished request, or a warning (Warning set; Status, Duration and the byte
// counts are then zero, and the other fields name the request it concerns).
type Event struct {
	Method string
	Path   string // the request target as sent (HTTP/2: :path)
	// Status is the final status the client got: 101 for a spliced upgrade, 502 when no side could
	// be reached, 0 when the exchange broke before any status.
	Status int
	// Stolen means the request went to the local process (false after a fallback to the app).
	Stolen   bool
	Duration time.Duration
	// ReqBytes and RespBytes count heads and bodies as relayed (HTTP/2: bodies only).
	ReqBytes, RespBytes int64
	Warning             string
	Proto               string // "HTTP/1.1", "HTTP/1.0", "h2c" or "grpc"
	// Target is the session the request was picked for (also after a fallback to the app, with
	// Stolen false); nil for the app's requests and for connection-level warnings.
	Target *Target
}

// side is where a request goes within one client connection: sideApp, or a session's slot (sides).
type side int

const sideApp side = 0

func (s side) String() string {
	if s != sideApp {
		return "local process"
	}
	return "app"
}

// sides numbers the Targets one client connection has met: slot 0 is the app, and a Target keeps
// its slot for the connection's life, so that its upstream connections are found by index.
type sides struct {
	mu sync.Mutex
	t  []*Target // t[0] is nil: the app
}

func (ss *sides) slot(t *Target) side {
	if t == nil {
		return sideApp
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if len(ss.t) == 0 {
		ss.t = append(ss.t, nil)
	}
	for i := 1; i < len(ss.t); i++ {
		if ss.t[i] == t {
			return side(i)
		}
	}
	ss.t = append(ss.t, t)
	return side(len(ss.t) - 1)
}

func (ss *sides) target(s side) *Target {
	if s == sideApp {
		return nil
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.t[s]
}

// prepare turns a Steal and Local route into a Pick route with one Target; multi reports whether
// the caller set Pick itself.
func (r *Route) prepare() (multi bool) {
	if r.Pick != nil {
		return true
	}
	t := &Target{Local: r.Local}
	steal := r.Steal
	r.Pick = func(h *RequestHead) *Target {
		if steal != nil && steal(h) {
			return t
		}
		return nil
	}
	return false
}

func (r *Route) dial(ctx context.Context, t *Target) (net.Conn, error) {
	s, d := sideApp, r.App
	if t != nil {
		s, d = 1, t.Local
	}
	if d == nil {
		return nil, fmt.Errorf("no %s to dial", s)
	}
	if s == sideApp {
		c, err := d(ctx)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", s, err)
		}
		return c, nil
	}
	to := r.OpenTimeout
	if to <= 0 {
		to = wire.IncomingOpenTimeout
	}
	dctx, cancel := context.WithTimeout(ctx, to)
	defer cancel()
	c, err := d(dctx)
	if err != nil {
		if ctx.Err() == nil && dctx.Err() != nil {
			return nil, fmt.Errorf("dial %s: no answer within %v: %w", s, to, err)
		}
		return nil, fmt.Errorf("dial %s: %w", s, err)
	}
	return c, nil
}

func (r *Route) headTimeout() time.Duration {
	if r.HeadTimeout > 0 {
		return r.HeadTimeout
	}
	return wire.DefaultHeadTimeout
}

func (r *Route) emit(e Event) {
	if r.Event != nil {
		r.Event(e)
	}
}

func (r *Route) warn(e Event, format string, args ...any) {
	r.emit(Event{Method: e.Method, Path: e.Path, Proto: e.Proto, Target: e.Target, Warning: fmt.Sprintf(format, args...)})
}

// ServeRaw relays client (after replaying pre) to a connection from dial, both ways, until both
// directions end; it closes both connections. It is what a non-HTTP connection gets.
func ServeRaw(ctx context.Context, client net.Conn, pre []byte, dial func(context.Context) (net.Conn, error)) error {
	up, err := dial(ctx)
	if err != nil {
		client.Close()
		return err
	}
	if len(pre) == 0 {
		// The bare connection, so that an abort still resets it (Join only resets a *net.TCPConn).
		return splice(ctx, client, up)
	}
	return splice(ctx, &readerConn{Conn: client, r: io.MultiReader(bytes.NewReader(pre), client)}, up)
}

// splice relays a and b until both directions end or ctx is done, with half-closes carried across.
func splice(ctx context.Context, a, b net.Conn) error {
	stop := context.AfterFunc(ctx, func() {
		a.Close()
		b.Close()
	})
	err := wire.Join(a, b)
	stop()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// readerConn is a connection whose reads come through r (bytes already read, then the connection).
type readerConn struct {
	net.Conn
	r io.Reader
}

func (c *readerConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *readerConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// conns tracks a client connection's connections so that a cancelled context closes them all, from
// whichever goroutine it fires on.
type conns struct {
	mu     sync.Mutex
	closed bool
	set    map[net.Conn]struct{}
}

// add starts tracking c; false means the set is already closed, and c has been closed too.
func (s *conns) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return false
	}
	if s.set == nil {
		s.set = make(map[net.Conn]struct{})
	}
	s.set[c] = struct{}{}
	return true
}

func (s *conns) remove(c net.Conn) {
	s.mu.Lock()
	delete(s.set, c)
	s.mu.Unlock()
	c.Close()
}

func (s *conns) closeAll() {
	s.mu.Lock()
	s.closed = true
	set := s.set
	s.set = nil
	s.mu.Unlock()
	for c := range set {
		c.Close()
	}
}

// errAborted is what dials return after the connection's context ended.
var errAborted = errors.New("connection aborted")

// localFailed is what the client's 502 and the warning say when the local process may have received
// a request and failed it: the request is not sent to the app, which would then act on it twice.
func localFailed(err error) string {
	return fmt.Sprintf("the local process failed (%v); the request was not sent to the app", err)
}
