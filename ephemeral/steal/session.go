package steal

import (
	"context"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/httpx"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Registration is one session on a steal's dispatcher: its filter, its tunnel (Open) and its events.
// A filtered steal's dispatcher routes each request to the first registration whose filter matches
// it, in the order they registered, and the rest to the app; a whole-port steal has one.
type Registration struct {
	s *Steal
	// Session, User, Host and Filter say who this is, for the other sessions' messages.
	Session, User, Host string
	Filter              *wire.HTTPFilter
	Since               time.Time

	matcher      *wire.FilterMatcher // nil: whole port
	stealProbes  bool
	passedEvents bool
	open         Opener
	events       func(wire.StealEvent)
	pacer        *pacer
	// away: the session's tunnel is gone for now (Away); its requests go to the app meanwhile.
	away atomic.Bool
	left atomic.Bool
	// inFlight counts the requests picked for this session whose event has not come yet; done
	// hears each end, for a leave that waits for them.
	inFlight atomic.Int64
	done     chan struct{}
}

// SessionConfig is what a session brings to a dispatcher.
type SessionConfig struct {
	Session, User, Host string
	// Spec is the session's steal: its Filter, StealProbes and PassedEvents are its own; the rest
	// (ports, probes, timeouts, flush) is the dispatcher's, set by its first session.
	Spec   wire.StealSpec
	Open   Opener
	Events func(wire.StealEvent)
}

func (s *Steal) newRegistration(sc SessionConfig) (*Registration, error) {
	m, err := sc.Spec.Filter.Compile()
	if err != nil {
		return nil, err
	}
	events := sc.Events
	if events == nil {
		events = func(wire.StealEvent) {}
	}
	return &Registration{
		s: s, Session: sc.Session, User: sc.User, Host: sc.Host, Filter: sc.Spec.Filter, Since: time.Now(),
		matcher: m, stealProbes: sc.Spec.StealProbes, passedEvents: sc.Spec.PassedEvents,
		open: sc.Open, events: events, pacer: newPacer(s.cfg.Budget, events), done: make(chan struct{}, 1),
	}, nil
}

// registered is the current registrations, in the order they came; never modified in place.
func (s *Steal) registered() []*Registration {
	if p := s.regs.Load(); p != nil {
		return *p
	}
	return nil
}

func (s *Steal) setRegistered(regs []*Registration) { s.regs.Store(&regs) }

// add registers r after the others.
func (s *Steal) add(r *Registration) {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	s.setRegistered(append(slices.Clone(s.registered()), r))
}

// remove unregisters r.
func (s *Steal) remove(r *Registration) {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	s.setRegistered(slices.DeleteFunc(slices.Clone(s.registered()), func(x *Registration) bool { return x == r }))
}

// events tells every registered session what the steal as a whole does (ready, flush, drain, the
// budget's warnings).
func (s *Steal) events(e wire.StealEvent) {
	for _, r := range s.registered() {
		r.events(e)
	}
}

// Away sends the session's requests to the app until Back, without unregistering it: its tunnel
// is gone for now and may come back (a whole-port steal's connections go to the app too).
func (r *Registration) Away() { r.away.Store(true) }

// Back routes the session's requests to it again after Away.
func (r *Registration) Back() { r.away.Store(false) }

// Others are the sessions registered before r on its steal, in their order: they take a request
// their filter matches before r does.
func (r *Registration) Others() []*Registration {
	regs := r.s.registered()
	i := slices.Index(regs, r)
	if i < 0 {
		return nil
	}
	return slices.Clone(regs[:i])
}

// Steal is the dispatcher r is registered on.
func (r *Registration) Steal() *Steal { return r.s }

// leave unregisters r. The last registration's leave (last, as its Hub counts them) ends the steal
// (drain, redirect removed) and returns once it has ended; r stays registered meanwhile, so that
// it hears about the drain. Idempotent.
func (r *Registration) leave(last bool) error {
	if r.left.Swap(true) {
		return nil
	}
	if !last {
		// The others keep the port: no drain, but the requests this session is answering finish
		// before its tunnel goes (bounded by the drain window).
		r.s.remove(r)
		r.waitRequests()
		return nil
	}
	err := r.s.Close()
	r.s.remove(r)
	return err
}

// picked and answered count a request routed to r, from Pick to its event.
func (r *Registration) picked() { r.inFlight.Add(1) }

func (r *Registration) answered() {
	r.inFlight.Add(-1)
	select {
	case r.done <- struct{}{}:
	default:
	}
}

// waitRequests waits for r's requests in flight to end, for up to the drain window.
func (r *Registration) waitRequests() {
	window := r.s.cfg.DrainWindow
	if window <= 0 {
		window = wire.DrainWindow
	}
	t := time.NewTimer(window)
	defer t.Stop()
	for r.inFlight.Load() > 0 {
		select {
		case <-r.done:
		case <-t.C:
			return
		}
	}
}

// live reports whether r takes requests now.
func (r *Registration) live() bool { return !r.away.Load() && !r.left.Load() }

func (r *Registration) openLocal(ctx context.Context, cn conn) (net.Conn, error) {
	c, err := r.open.OpenIncoming(ctx, wire.OpenRequest{
		Kind: wire.KindIncoming, Network: wire.NetworkTCP, Address: cn.orig.String(),
		Port: int(cn.orig.Port()), Peer: cn.peer, Compression: wire.SupportedCompression(),
	})
	if err != nil {
		return nil, err
	}
	return r.pacer.wrap(r.s.ctx, c), nil
}

// connTargets are one client connection's httpx Targets, one per registration it has routed a
// request to: a Target's Local opens through that session's tunnel with this connection's
// addresses, and an event's Target names the session to tell.
type connTargets struct {
	cn conn
	mu sync.Mutex
	t  map[*Registration]*httpx.Target
}

func (ct *connTargets) target(r *Registration) *httpx.Target {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	if t, ok := ct.t[r]; ok {
		return t
	}
	if ct.t == nil {
		ct.t = map[*Registration]*httpx.Target{}
	}
	cn := ct.cn
	t := &httpx.Target{Local: func(ctx context.Context) (net.Conn, error) { return r.openLocal(ctx, cn) }}
	ct.t[r] = t
	return t
}

func (ct *connTargets) registration(t *httpx.Target) *Registration {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	for r, x := range ct.t {
		if x == t {
			return r
		}
	}
	return nil
}
