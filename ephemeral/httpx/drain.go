package httpx

import (
	"bytes"

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
