package tunnel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// resumingStream is a verb's event stream (JSON lines) that outlives a reconnect: when its data
// connection goes with the tunnel, Read waits for the resumed tunnel and opens the stream again
// there (OpenRequest.Resume), and reading goes on. It hands out whole lines only, so that a line cut
// by the loss is dropped rather than glued to the next.
type resumingStream struct {
	t   *Tunnel
	req wire.OpenRequest

	mu     sync.Mutex
	cur    *wire.Stream
	mux    *wire.Mux
	br     *bufio.Reader
	closed bool
	line   []byte // what Read has not handed out yet of the last whole line
}

func newResumingStream(t *Tunnel, req wire.OpenRequest, s *wire.Stream, m *wire.Mux) *resumingStream {
	req.Resume = true
	return &resumingStream{t: t, req: req, cur: s, mux: m, br: bufio.NewReader(s)}
}

func (r *resumingStream) Read(p []byte) (int, error) {
	for len(r.line) == 0 {
		r.mu.Lock()
		br, m := r.br, r.mux
		r.mu.Unlock()
		line, err := br.ReadBytes('\n')
		if err == nil {
			r.line = line
			break
		}
		if errors.Is(err, io.EOF) || !r.lostWithTunnel(m) {
			return 0, err
		}
		if rerr := r.reopen(); rerr != nil {
			return 0, fmt.Errorf("%w (resume: %w)", err, rerr)
		}
	}
	n := copy(p, r.line)
	r.line = r.line[n:]
	return n, nil
}

// lostWithTunnel says whether the stream ended because its data connection did, which the tunnel
// answers by reconnecting, rather than by the agent's doing.
func (r *resumingStream) lostWithTunnel(m *wire.Mux) bool {
	select {
	case <-m.Done():
		return true
	default:
		return false
	}
}

// reopen opens the stream again on the tunnel's next link.
func (r *resumingStream) reopen() error {
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return wire.ErrSessionClosed
	}
	for {
		s, m, err := r.t.open(context.Background(), r.req)
		if err != nil {
			if m != nil && r.lostWithTunnel(m) {
				continue // lost again before the agent answered
			}
			return err
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.closed {
			s.Close()
			return wire.ErrSessionClosed
		}
		r.cur, r.mux, r.br = s, m, bufio.NewReader(s)
		return nil
	}
}

func (r *resumingStream) CloseWrite() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur.CloseWrite()
}

func (r *resumingStream) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	return r.cur.Close()
}
