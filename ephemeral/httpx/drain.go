package httpx

import (
	"bytes"
	"sync/atomic"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/internal/httpsyntax"
)

// draining reports whether Route.Drain has been closed.
func (r *Route) draining() bool {
	if r.Drain == nil {
		return false
	}
	select {
	case <-r.Drain:
		return true
	default:
		return false
	}
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
func (c *h1conn) watchDrain() (stop func() (fired bool)) {
	if c.route.Drain == nil {
		return func() bool { return false }
	}
	since := time.Now()
	done, finished := make(chan struct{}), make(chan struct{})
	var fired atomic.Bool
	go func() {
		defer close(finished)
		select {
		case <-c.route.Drain:
		case <-done:
			return
		}
		t := time.NewTimer(time.Until(since.Add(DrainIdle)))
		defer t.Stop()
		select {
		case <-t.C:
			fired.Store(true)
			_ = c.client.SetReadDeadline(time.Unix(1, 0))
		case <-done:
		}
	}()
	return func() bool {
		close(done)
		<-finished
		return fired.Load()
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
