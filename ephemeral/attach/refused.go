package attach

import (
	"log/slog"
	"sync"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// refusals logs the data connections the handshake refused, at most one line per interval with
// their count. Anything in the pod can connect to the data port; a line each would let it flood the
// session's log, which the plugin shows at -v.
type refusals struct {
	log      *slog.Logger
	clock    wire.Clock
	interval time.Duration

	mu       sync.Mutex
	count    int // refused since the last line
	all      int // refused in the session
	from     string
	err      error
	lastLine time.Time
}

// add counts one refusal and logs the count when the interval since the last line has passed; the
// ones in between wait for the next line (or flush).
func (r *refusals) add(from string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.count++
	r.all++
	r.from, r.err = from, err
	if now := r.clock.Now(); r.lastLine.IsZero() || now.Sub(r.lastLine) >= r.interval {
		r.lastLine = now
		r.lineLocked()
	}
}

// total is how many connections were refused in the session.
func (r *refusals) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.all
}

// flush logs what is counted and not yet logged; the session's end calls it.
func (r *refusals) flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lineLocked()
}

func (r *refusals) lineLocked() {
	if r.count == 0 {
		return
	}
	r.log.Warn(wire.LogDataConnsRefused, "count", r.count, "last_from", r.from, "last_err", r.err, "per", r.interval)
	r.count = 0
}
