package httpx

import (
	"bytes"
	"context"
	"sync"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/internal/httpsyntax"
)

// draining reports whether Route.Drain has been closed.
func (r *Route) draining() bool {
	return r.Drain != nil && r.Drain.Err() != nil
}

// DrainIdle is how long a drained HTTP/1 connection may wait for its next request before it is
// closed: a client that has left a keep-alive connection unused this long is between bursts, and
// the chance that its next request crosses the close is as small as when a steal resets an idle
// connection at its start (netfilter.IdleAfter). Without it, an idle pooled connection would hold
// the drain until its bound.
const DrainIdle = time.Second

// watchDrain closes the wait for the next request once Route.Drain is closed and the connection
// has waited DrainIdle, by the client's read deadline; stop ends the watch and reports whether it
// fired.
//
// It starts no goroutine while the route does not drain (a registration on Route.Drain and, once
// that fires, a timer): it runs for every wait between two requests on a kept-alive connection.
func (c *h1conn) watchDrain() (stop func() (fired bool)) {
	if c.route.Drain == nil {
		return func() bool { return false }
	}
	since := time.Now()
	var mu sync.Mutex
	var stopped, fired bool
	var t *time.Timer
	// Both callbacks take mu and do nothing once stop has: after stop returns, no deadline is set.
	fire := func() {
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			fired = true
			_ = c.client.SetReadDeadline(time.Unix(1, 0))
		}
	}
	unregister := context.AfterFunc(c.route.Drain, func() {
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			t = time.AfterFunc(time.Until(since.Add(DrainIdle)), fire)
		}
	})
	return func() bool {
		unregister()
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		if t != nil {
			t.Stop()
		}
		return fired
	}
}

// closeHead returns a final response head that tells the client the connection ends after it, as a
// server that is going away says it: every Connection field (and Keep-Alive, which only an open
// connection needs) replaced by "Connection: close". The client then sends its next request on a
// new connection, which no longer passes through the agent; a connection simply closed between
// requests could meet a request already on its way (Envoy answers such a request 503). A head that
// already says close is returned unchanged.
func closeHead(rh *ResponseHead) []byte {
	if rh.Close {
		return rh.Raw
	}
	raw := rh.Raw
	line := bytes.IndexByte(raw, '\n') + 1
	var b bytes.Buffer
	b.Grow(len(raw) + len("Connection: close\r\n"))
	b.Write(raw[:line])
	for _, f := range rh.Header {
		if httpsyntax.EqualFold(f.Name, "Connection") || httpsyntax.EqualFold(f.Name, "Keep-Alive") {
			continue
		}
		b.WriteString(f.Name + ": " + f.Value + "\r\n")
	}
	b.WriteString("Connection: close\r\n\r\n")
	return b.Bytes()
}
