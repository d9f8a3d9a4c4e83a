package attach

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Registry is the main process's index of resumable sessions (those whose Hello asked for a
// reconnect grace), by id: an attachment whose Hello carries Resume is handed to the session it
// names. One Registry serves every session of the main process; nil in Config: no session can be
// resumed.
type Registry struct {
	mu       sync.Mutex
	sessions map[string]*server
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{sessions: map[string]*server{}} }

func (r *Registry) add(s *server) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sessions[s.id] = s
}

func (r *Registry) remove(s *server) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sessions[s.id] == s {
		delete(r.sessions, s.id)
	}
}

// Len is how many sessions may be resumed now, for tests.
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sessions)
}

// handoff is a new control channel for a session being resumed: the resuming attachment's Run waits
// on done until the session lets go of it (the channel ended again, or the session is over).
type handoff struct {
	ctrl   *wire.Control
	hello  wire.Hello
	hangup func()
	log    slog.Handler
	done   chan struct{}
}

// resume hands ctrl to the session h names, once its token checks out, and returns when the session
// is done with ctrl. A live session (its old channel not yet seen as lost) is taken over: the token
// proves the plugin is its owner, which is reconnecting because it saw the loss first.
func resume(ctx context.Context, cfg Config, ctrl *wire.Control, h wire.Hello) error {
	var s *server
	if cfg.Sessions != nil {
		cfg.Sessions.mu.Lock()
		s = cfg.Sessions.sessions[h.Resume.SessionID]
		cfg.Sessions.mu.Unlock()
	}
	// An unknown id and a wrong token get the same answer: the refusal must not tell an attacker
	// which sessions exist.
	if s == nil || !s.token.Equal(h.Resume.Token) {
		err := fmt.Errorf("no session %q to resume here (ended, or forgotten past its reconnect grace): %w", h.Resume.SessionID, wire.ErrSessionGone)
		_ = ctrl.Send(wire.Error{Code: wire.CodeSessionGone, Message: err.Error()})
		return err
	}
	if h.DataConns < 1 || h.DataConns > wire.MaxDataConns {
		return fmt.Errorf("resume with %d data connections: %w", h.DataConns, wire.ErrMalformed)
	}
	ho := &handoff{ctrl: ctrl, hello: h, hangup: cfg.Hangup, done: make(chan struct{})}
	if cfg.Log != nil {
		ho.log = cfg.Log.Handler()
	}
	select {
	case s.handoffs <- ho:
	case <-s.over:
		_ = ctrl.Send(wire.Error{Code: wire.CodeSessionGone, Message: fmt.Sprintf("session %q ended", s.id)})
		return fmt.Errorf("session %q ended before it could resume: %w", s.id, wire.ErrSessionGone)
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-ho.done:
	case <-ctx.Done():
	}
	return nil
}

// errTakenOver ends a control channel whose session a resume took over.
var errTakenOver = fmt.Errorf("the plugin resumed the session on a new control channel: %w", wire.ErrPeerClosed)

// away holds the session after its control channel was lost, until a resume hands it a new one
// (returned), the grace is over or ctx ends (nil). Its data connections are closed by then, so
// nothing reaches the plugin: a steal, its stream gone, sends everything to the app
// (serveSteal, steal.Lease.Away), and a mirror drops its copies to the plugin (serveMirror).
func (s *server) away(ctx context.Context, grace time.Duration) *handoff {
	timer := s.cfg.Clock.NewTimer(grace)
	defer timer.Stop()
	select {
	case ho := <-s.handoffs:
		return ho
	case <-timer.C():
		return nil
	case <-ctx.Done():
		return nil
	}
}

// closeTunnels closes the session's data connections and lets new ones in (a resume's), unlike
// closeAll.
func (s *server) closeTunnels() {
	s.mu.Lock()
	ts := make([]*wire.Mux, 0, len(s.sessions))
	for t := range s.sessions {
		ts = append(ts, t)
	}
	s.mu.Unlock()
	for _, t := range ts {
		t.Close()
	}
}

// adopt makes a resume's Hello the session's: its secret and number of data connections are the
// new data connections'.
func (s *server) adopt(h wire.Hello) {
	d := *s.data.Load()
	d.Secret = h.Secret
	s.data.Store(&d)
	s.maxConns.Store(int64(h.DataConns))
	s.admitted.Store(0)
}

// switchHandler is the session's log handler, which a resume points at the new attachment's
// stderr (the plugin reads the session's log there, the old one is gone).
type switchHandler struct {
	cur *atomic.Pointer[slog.Handler]
	ops []func(slog.Handler) slog.Handler
}

func newSwitchHandler(h slog.Handler) switchHandler {
	p := &atomic.Pointer[slog.Handler]{}
	p.Store(&h)
	return switchHandler{cur: p}
}

func (h switchHandler) set(to slog.Handler) { h.cur.Store(&to) }

func (h switchHandler) handler() slog.Handler {
	out := *h.cur.Load()
	for _, op := range h.ops {
		out = op(out)
	}
	return out
}

func (h switchHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.handler().Enabled(ctx, l)
}

func (h switchHandler) Handle(ctx context.Context, r slog.Record) error {
	return h.handler().Handle(ctx, r)
}

func (h switchHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return switchHandler{cur: h.cur, ops: append(h.ops[:len(h.ops):len(h.ops)], func(x slog.Handler) slog.Handler { return x.WithAttrs(attrs) })}
}

func (h switchHandler) WithGroup(name string) slog.Handler {
	return switchHandler{cur: h.cur, ops: append(h.ops[:len(h.ops):len(h.ops)], func(x slog.Handler) slog.Handler { return x.WithGroup(name) })}
}
