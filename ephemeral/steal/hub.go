package steal

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/claim"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/netfilter"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Hub is the agent main process's one dispatcher per pod port: the first steal or redirect mirror
// of a port starts a Steal (redirect, listener) for that port alone, later filtered steals and
// redirect mirrors of it register on the same one, and the redirect goes when the last of them
// leaves (drained as Steal.Close says). Each mirror gets a copy of every connection the dispatcher
// accepts while it is registered, taken before the routing: the client's bytes and the answer it
// got, from the app or from the session that stole the request (mirroredConn). Every port a session steals or mirrors
// with a redirect is claimed in the pod's network namespace (ephemeral/claim), and a steal that
// conflicts with a claim (this agent's sessions' or another agent's) is refused before anything
// changes. A zero Hub is not usable: make one with NewHub.
type Hub struct {
	base     Config
	agent    string
	instance string
	now      func() time.Time

	mu     sync.Mutex
	ports  map[int]*Steal
	ending map[int]chan struct{} // ports whose steal is ending: a new one waits for it
}

// NewHub returns the hub of an agent container named agent; base is what every dispatcher starts
// from (Log, Budget, Redirector, ForceUnowned, Flush, windows, InNetns, ListenAddress), its ID,
// Spec, Open, Events, Tee and Mesh being each steal's.
func NewHub(base Config, agent string) (*Hub, error) {
	id, err := randomID()
	if err != nil {
		return nil, err
	}
	return &Hub{base: base, agent: agent, instance: id, now: time.Now, ports: map[int]*Steal{}, ending: map[int]chan struct{}{}}, nil
}

// randomID names a dispatcher's table (netfilter.ValidateID: up to 16 of [a-z0-9]) and the hub's
// instance in claims.
func randomID() (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("steal id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// Lease is one session's steal (or redirect mirror) through a Hub: its registrations, one per port,
// and its claims. Close ends it.
type Lease struct {
	hub    *Hub
	regs   []*Registration
	mirs   []*Mirror // a redirect mirror's, one per port
	claims map[int]*claim.Held
	once   sync.Once
	err    error
}

// Registrations are the lease's registrations, one per stolen port.
func (l *Lease) Registrations() []*Registration { return slices.Clone(l.regs) }

// Away sends the session's requests to the app on every port until Back (a tunnel lost for now):
// a filtered registration is skipped by the routing, a whole-port steal's redirect is lifted; a
// redirect mirror's registration is untouched (its mirror drops the copies meanwhile).
func (l *Lease) Away() error {
	var errs []error
	for _, r := range l.regs {
		r.Away()
		if r.s.whole {
			errs = append(errs, r.s.setAway(true))
		}
	}
	return errors.Join(errs...)
}

// Back routes the session's requests to it again, a whole-port steal's redirect restored first.
func (l *Lease) Back() error {
	var errs []error
	for _, r := range l.regs {
		if r.s.whole {
			errs = append(errs, r.s.setAway(false))
		}
		r.Back()
	}
	return errors.Join(errs...)
}

// Ports are the pod ports a dispatcher steals now (or redirects for a mirror), in order.
func (h *Hub) Ports() []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	ports := slices.Collect(maps.Keys(h.ports))
	slices.Sort(ports)
	return ports
}

func (h *Hub) inNetns(f func() error) error {
	if h.base.InNetns != nil {
		return h.base.InNetns(f)
	}
	return f()
}

// claimsOf lists the claims on each port.
func (h *Hub) claimsOf(ports []int) (map[int][]claim.Claim, error) {
	out := map[int][]claim.Claim{}
	err := h.inNetns(func() error {
		for _, p := range ports {
			cs, err := claim.List(p)
			if err != nil {
				return err
			}
			out[p] = cs
		}
		return nil
	})
	return out, err
}

// waitEnding returns once no port of ports is still ending, with h.mu held; false when ctx ended.
func (h *Hub) lockSettled(ctx context.Context, ports []int) bool {
	for {
		h.mu.Lock()
		var wait chan struct{}
		for _, p := range ports {
			if c, ok := h.ending[p]; ok {
				wait = c
				break
			}
		}
		if wait == nil {
			return true
		}
		h.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return false
		}
	}
}

// check decides want's ports against every claim in the netns; shared are, by port, the sessions
// already filtering it. Called with h.mu held.
func (h *Hub) check(want claim.Claim, ports []int) (map[int][]claim.Claim, error) {
	held, err := h.claimsOf(ports)
	if err != nil {
		return nil, fmt.Errorf("read the pod's port claims: %w", err)
	}
	shared := map[int][]claim.Claim{}
	for _, p := range ports {
		w := want
		w.Port = p
		s, err := claim.Conflict(w, held[p])
		if err != nil {
			return nil, err
		}
		shared[p] = s
	}
	return shared, nil
}

// hold publishes want's claim on each port. Called with h.mu held.
func (h *Hub) hold(want claim.Claim, ports []int) (map[int]*claim.Held, error) {
	held := map[int]*claim.Held{}
	err := h.inNetns(func() error {
		for _, p := range ports {
			c := want
			c.Port = p
			hc, err := claim.Hold(c)
			if err != nil {
				return err
			}
			held[p] = hc
		}
		return nil
	})
	if err != nil {
		for _, hc := range held {
			hc.Close()
		}
		return nil, err
	}
	return held, nil
}

func (h *Hub) claimFor(sc SessionConfig, verb string) claim.Claim {
	return claim.Claim{Agent: h.agent, Instance: h.instance, Session: sc.Session, User: sc.User, Host: sc.Host,
		Verb: verb, Filter: sc.Spec.Filter.Describe(), Since: h.now().UTC()}
}

// Steal registers a session's steal of sc.Spec.Ports: a port no session steals gets its own
// dispatcher (redirect, listener; mesh as Config.Mesh), a port that filtered steals or redirect
// mirrors share gets one more registration (on a port only mirrors held, it routes the
// connections accepted from then on; the dispatcher keeps its first registration's settings). A conflict (claim.Conflict) refuses the whole steal, in one line naming the
// session in the way, before anything changes. The session hears one Ready, then one EventShared
// per port that other sessions filter too.
func (h *Hub) Steal(ctx context.Context, sc SessionConfig, mesh *netfilter.MeshRedirect) (*Lease, error) {
	if err := sc.Spec.Validate(); err != nil {
		return nil, err
	}
	if sc.Events == nil {
		sc.Events = func(wire.StealEvent) {}
	}
	ports := slices.Clone(sc.Spec.Ports)
	if !h.lockSettled(ctx, ports) {
		return nil, ctx.Err()
	}
	defer h.mu.Unlock()
	want := h.claimFor(sc, claim.VerbSteal)
	shared, err := h.check(want, ports)
	if err != nil {
		return nil, err
	}
	claims, err := h.hold(want, ports)
	if err != nil {
		return nil, err
	}
	l := &Lease{hub: h, claims: claims}
	// The session hears one Ready for all its ports.
	var ready []wire.StealEvent
	for _, p := range ports {
		st := h.ports[p]
		var reg *Registration
		if st != nil {
			reg, err = st.newRegistration(sc)
			if err == nil {
				st.add(reg)
				ready = append(ready, st.Ready())
			}
		} else {
			var id string
			id, err = randomID()
			if err == nil {
				cfg := h.base
				cfg.ID, cfg.Mesh, cfg.Tee = id, mesh, nil
				cfg.Spec = sc.Spec
				cfg.Spec.Ports = []int{p}
				st, reg, err = start(ctx, cfg, sc, false)
				if err == nil {
					ready = append(ready, st.Ready())
					h.ports[p] = st
				}
			}
		}
		if err != nil {
			h.mu.Unlock()
			_ = l.Close()
			h.mu.Lock()
			return nil, err
		}
		st.members++
		l.regs = append(l.regs, reg)
	}
	sc.Events(combineReady(ready))
	for _, p := range ports {
		if len(shared[p]) == 0 {
			continue
		}
		ev := wire.StealEvent{Kind: wire.EventShared, Port: p}
		for _, c := range shared[p] {
			ev.Sessions = append(ev.Sessions, c.PortSession())
		}
		sc.Events(ev)
	}
	return l, nil
}

// combineReady is one Ready for several ports' dispatchers: kernel-owned only if all are.
func combineReady(evs []wire.StealEvent) wire.StealEvent {
	out := wire.StealEvent{Kind: wire.EventReady, KernelOwned: len(evs) > 0}
	for _, e := range evs {
		out.KernelOwned = out.KernelOwned && e.KernelOwned
		for _, a := range e.ProbeSources {
			if !slices.Contains(out.ProbeSources, a) {
				out.ProbeSources = append(out.ProbeSources, a)
			}
		}
	}
	return out
}

// Mirror registers a redirect mirror of cfg.Spec.Ports (cfg.Tee set), once no claim on its ports
// is in the way (claim.Conflict): a port's dispatcher, shared with the filtered steals and the
// other mirrors of the port, copies to it every connection it accepts from then on, until Close. A
// port nobody steals or mirrors gets its dispatcher, with cfg's settings (Spec, Mesh). It returns
// the lease and the dispatcher of its first port.
func (h *Hub) Mirror(ctx context.Context, sc SessionConfig, cfg Config) (*Lease, *Steal, error) {
	if cfg.Tee == nil {
		return nil, nil, errors.New("a redirect mirror needs a tee")
	}
	ports := slices.Clone(cfg.Spec.Ports)
	if !h.lockSettled(ctx, ports) {
		return nil, nil, ctx.Err()
	}
	defer h.mu.Unlock()
	sc.Spec = wire.StealSpec{Ports: ports}
	want := h.claimFor(sc, claim.VerbMirror)
	if _, err := h.check(want, ports); err != nil {
		return nil, nil, err
	}
	claims, err := h.hold(want, ports)
	if err != nil {
		return nil, nil, err
	}
	l := &Lease{hub: h, claims: claims}
	var first *Steal
	for _, p := range ports {
		st := h.ports[p]
		var m *Mirror
		if st != nil {
			m = &Mirror{s: st, tee: cfg.Tee}
			st.addMirror(m)
		} else {
			var id string
			id, err = randomID()
			if err == nil {
				base := h.base
				base.ID, base.Spec, base.Open, base.Events, base.Tee, base.Mesh = id, cfg.Spec, cfg.Open, cfg.Events, cfg.Tee, cfg.Mesh
				base.Spec.Ports = []int{p}
				if base.Log == nil {
					base.Log = cfg.Log
				}
				st, _, err = start(ctx, base, SessionConfig{Session: sc.Session, Spec: base.Spec, Open: cfg.Open, Events: cfg.Events}, false)
			}
			if err == nil {
				h.ports[p] = st
				m = st.mirrors()[0]
			}
		}
		if err != nil {
			h.mu.Unlock()
			_ = l.Close()
			h.mu.Lock()
			return nil, nil, err
		}
		if first == nil {
			first = st
		}
		st.members++
		l.mirs = append(l.mirs, m)
	}
	return l, first, nil
}

// Close ends the session's part: it leaves every port (the last session of a port ends its
// dispatcher: drain, then the redirect goes) and releases its claims. It returns once the
// dispatchers it ended are gone. Idempotent.
func (l *Lease) Close() error {
	l.once.Do(func() { l.err = l.close() })
	return l.err
}

// member is a registration a Lease holds on a dispatcher: a steal's or a mirror's.
type member interface {
	steal() *Steal
	leave(last bool) error
}

func (r *Registration) steal() *Steal { return r.s }
func (m *Mirror) steal() *Steal       { return m.s }

func (l *Lease) close() error {
	h := l.hub
	var errs []error
	type ended struct {
		port int
		done chan struct{}
	}
	var last []ended
	var members []member
	for _, r := range l.regs {
		members = append(members, r)
	}
	for _, m := range l.mirs {
		members = append(members, m)
	}
	isLast := make([]bool, len(members))
	h.mu.Lock()
	for i, r := range members {
		s := r.steal()
		s.members--
		if s.members > 0 {
			continue
		}
		isLast[i] = true
		port := s.cfg.Spec.Ports[0]
		if h.ports[port] == s {
			delete(h.ports, port)
			done := make(chan struct{})
			h.ending[port] = done
			last = append(last, ended{port, done})
		}
	}
	h.mu.Unlock()
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i, r := range members {
		wg.Go(func() {
			if err := r.leave(isLast[i]); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for _, c := range l.claims {
		errs = append(errs, c.Close())
	}
	h.mu.Lock()
	for _, e := range last {
		delete(h.ending, e.port)
		close(e.done)
	}
	h.mu.Unlock()
	return errors.Join(errs...)
}
