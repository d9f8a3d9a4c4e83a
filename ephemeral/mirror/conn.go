package mirror

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/probe"
	"github.com/trafficlab/kubectl-trafficlab/internal/httpsyntax"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// preLimit bounds the client bytes kept until the connection's protocol is known, for the copy of a
// protocol that turns out not to be HTTP. HTTP is recognised from its first line; a connection whose
// client says more than this before the decoder decides is not copied (counted as mid-stream).
const preLimit = 64 << 10

// conn follows one of the pod's connections. Its StreamHandler methods, and the HTTP decoder's
// callbacks they cause, run on the capture's (or the tee's) goroutine and must not block: copies go
// to the replayer's bounded queue.
type conn struct {
	m    *Mirror
	flow capture.Flow
	hf   *capture.HTTPFlow

	proto     string  // "" until known, else one of capture's Proto constants
	sawClient bool    // the client's first byte (or a hole before it) was seen
	ended     [2]bool // per Direction: that direction has ended
	midStream bool    // the capture began after the connection did
	pre       []byte  // client bytes before the protocol was known, reserved in the memory budget
	preLost   bool
	// budgetGap: the tee skipped client bytes for the memory budget, and the copy that breaks was
	// counted as the budget's; the drops that follow from the same gap are not counted again.
	budgetGap bool
	dead      bool // an opaque copy was given up
	rep       *replayer

	mu      sync.Mutex
	pending map[uint64]*pair
}

// pair waits for both answers to one request when --diff compares them.
type pair struct {
	ev    wire.MirrorEvent
	local *answer
	pod   *capture.Exchange
}

func newConn(m *Mirror, f capture.Flow) *conn {
	c := &conn{m: m, flow: f, pending: map[uint64]*pair{}}
	opts := capture.HTTPOptions{
		OnProtocol: c.protocol,
		OnRequest:  c.request,
		MaxBody:    maxBody,
	}
	if m.budget != nil {
		opts.Budget = m.budget
	}
	if m.cfg.Spec.Diff {
		opts.KeepResponses = true
		opts.OnExchange = c.exchange
	}
	c.hf = capture.NewHTTPFlow(f, opts)
	return c
}

func (c *conn) Data(dir capture.Direction, data []byte, t time.Time) {
	if dir == capture.ClientToServer && !c.sawClient {
		c.sawClient = true
	}
	if c.proto == capture.ProtoOpaque {
		if dir == capture.ClientToServer && c.rep != nil && !c.dead {
			if !c.rep.raw(data) {
				c.dead = true
			}
		}
		return
	}
	if c.proto == "" && dir == capture.ClientToServer && !c.midStream && !c.preLost {
		switch {
		case len(c.pre)+len(data) > preLimit:
			c.dropPre()
			c.preLost = true
		case !c.m.budget.Reserve(len(data)):
			c.dropPre()
			c.preLost = true
			if !c.budgetGap {
				c.budgetGap = true
				c.m.stats.overBudget.Add(1)
			}
		default:
			c.pre = append(c.pre, data...)
		}
	}
	c.hf.Data(dir, data, t)
}

// dropPre gives up the bytes kept before the protocol was known.
func (c *conn) dropPre() {
	c.m.budget.Release(len(c.pre))
	c.pre = nil
}

// GapOverBudget is a gap the redirect's tee left because the agent was over its memory budget: the
// copy it breaks is counted once, as the budget's drop, not as bytes lost or a connection copied from
// its middle. Counted when the gap comes: bytes the tee never handed over may hold requests the
// decoder never sees.
func (c *conn) GapOverBudget(dir capture.Direction, missing int, t time.Time) {
	if dir == capture.ClientToServer && !c.budgetGap {
		c.budgetGap = true
		c.m.stats.overBudget.Add(1)
	}
	c.Gap(dir, missing, t)
}

func (c *conn) Gap(dir capture.Direction, missing int, t time.Time) {
	if dir == capture.ClientToServer && !c.sawClient {
		// A connection open before the capture began: fine for HTTP/1, which resynchronises on the
		// next request, but an opaque or h2c stream cannot be replayed from its middle.
		c.sawClient, c.midStream = true, true
	}
	if c.proto == capture.ProtoOpaque {
		if dir == capture.ClientToServer && c.rep != nil && !c.dead {
			c.dead = true
			c.rep.abort(c.gapCounter())
		}
		return
	}
	c.hf.Gap(dir, missing, t)
}

func (c *conn) End(dir capture.Direction, why capture.EndReason, t time.Time) {
	if c.proto == capture.ProtoOpaque {
		if dir == capture.ClientToServer && c.rep != nil {
			c.rep.finish()
		}
		return
	}
	// Marked before the decoder hears of it: the last end settles the protocol of a connection
	// that never showed one, and protocol must know the connection is over.
	c.ended[dir] = true
	c.hf.End(dir, why, t)
	// The server's end can complete a request the client's end left pending, and start the
	// replayer then: finish it on whichever end comes last.
	if c.ended[capture.ClientToServer] && c.rep != nil {
		c.rep.finish()
	}
}

// gapCounter counts a copy a gap broke; nil when the tee left the gap for the budget, which
// GapOverBudget counted.
func (c *conn) gapCounter() *atomic.Int64 {
	if c.budgetGap {
		return nil
	}
	return &c.m.stats.gap
}

// midStreamDrop counts a connection that cannot be copied from its middle, unless the middle is where
// the tee's budget gap left it.
func (c *conn) midStreamDrop() {
	if !c.budgetGap {
		c.m.stats.midStream.Add(1)
	}
}

// protocol is the decoder's verdict on the connection.
func (c *conn) protocol(_ capture.Flow, proto string) {
	if proto != "" && proto != capture.ProtoOpaque {
		c.proto = proto
		c.dropPre()
		if proto == capture.ProtoH2C && c.midStream {
			// HPACK's table is built from the connection's start: the rest cannot be decoded.
			c.midStreamDrop()
		}
		return
	}
	c.proto = capture.ProtoOpaque
	pre := c.pre
	c.dropPre()
	if !c.sawClient && c.ended[capture.ClientToServer] && c.ended[capture.ServerToClient] {
		// The client said nothing before the end (a kubelet tcpSocket probe, or a connection the
		// capture ended between its handshake and its first request): there is nothing to copy,
		// and counting it as a request would take a turn of --percent from a real one.
		return
	}
	c.m.stats.requests.Add(1)
	switch {
	case c.midStream || c.preLost:
		c.midStreamDrop()
		c.dead = true
	case c.m.matcher != nil:
		// A filter selects HTTP requests; a connection of another protocol matches none.
		c.m.stats.unselected.Add(1)
		c.dead = true
	case !c.m.sample():
		c.m.stats.sampledOut.Add(1)
		c.dead = true
	case c.m.dropAway():
		c.m.stats.away.Add(1)
		c.dead = true
	default:
		c.rep = newReplayer(c)
		if len(pre) > 0 && !c.rep.raw(pre) {
			c.dead = true
		}
	}
}

// request is one complete client request.
func (c *conn) request(r *capture.Request) {
	s := &c.m.stats
	s.requests.Add(1)
	if !r.Partial {
		// A budget's gap between requests broke none: the next gap is the capture's own.
		c.budgetGap = false
	}
	switch {
	case c.m.isCopy(r):
		// A copy come back (through a Service that selects the pod): copying it again would loop.
		s.copies.Add(1)
		return
	case r.Partial:
		if n := c.gapCounter(); n != nil {
			n.Add(1)
		}
		return
	case r.OverBudget:
		s.overBudget.Add(1)
		return
	case r.Method == "" || r.Target == "":
		// The decoder leaves out an h2c :method or :path that is not HTTP's syntax.
		s.malformed.Add(1)
		return
	case isUpgrade(r):
		s.upgrade.Add(1)
		return
	case c.m.probes.IsProbe(probeRequest(r)):
		// The kubelet's probes are the pod's business, not the developer's, as in a steal.
		s.probes.Add(1)
		return
	case c.m.matcher != nil && !c.m.matcher.Match(r.Method, r.Target, r.Header):
		s.unselected.Add(1)
		return
	case !c.m.sample():
		s.sampledOut.Add(1)
		return
	case c.m.dropAway():
		s.away.Add(1)
		return
	case r.Truncated || (r.Raw == nil && r.Proto != capture.ProtoH2C):
		s.tooLarge.Add(1)
		return
	}
	if c.rep == nil {
		c.rep = newReplayer(c)
	}
	c.rep.request(r)
}

// exchange is the pod's answer to a request (with --diff only).
func (c *conn) exchange(e capture.Exchange) {
	c.mu.Lock()
	p, ok := c.pending[e.Seq]
	if !ok {
		p = &pair{}
		c.pending[e.Seq] = p
	}
	ex := e
	p.pod = &ex
	done := p.local != nil
	if done {
		delete(c.pending, e.Seq)
	}
	c.mu.Unlock()
	if done {
		c.m.report(p)
	}
}

// answered records the copy's answer; with --diff the event waits for the pod's.
func (c *conn) answered(id uint64, ev wire.MirrorEvent, a *answer) {
	if !c.m.cfg.Spec.Diff || a == nil {
		c.m.cfg.Events(ev)
		return
	}
	c.mu.Lock()
	p, ok := c.pending[id]
	if !ok {
		p = &pair{}
		c.pending[id] = p
	}
	p.ev, p.local = ev, a
	done := p.pod != nil
	if done {
		delete(c.pending, id)
	}
	c.mu.Unlock()
	if done {
		c.m.report(p)
	}
}

// unpaired reports the copies whose pod answer never showed (the connection ended first).
func (c *conn) unpaired() {
	c.mu.Lock()
	var left []*pair
	for id, p := range c.pending {
		if p.local != nil {
			left = append(left, p)
		}
		delete(c.pending, id)
	}
	c.mu.Unlock()
	for _, p := range left {
		p.ev.Message = "the pod's response was not captured"
		c.m.cfg.Events(p.ev)
	}
}

// report compares the two answers and sends the event.
func (m *Mirror) report(p *pair) {
	p.ev.PodStatus = p.pod.Status
	p.ev.Differences = compare(p.local, p.pod, m.cfg.Spec.DiffHeaders)
	if len(p.ev.Differences) > 0 {
		m.stats.differ.Add(1)
	}
	m.cfg.Events(p.ev)
}

// probeRequest is a decoded request as probe.Rule reads it.
func probeRequest(r *capture.Request) probe.Request {
	path, _ := httpsyntax.SplitTarget(r.Target)
	return probe.Request{Source: r.Flow.Client, Port: r.Flow.Server.Port(), Path: path, Header: r.Header}
}

func isUpgrade(r *capture.Request) bool {
	for _, h := range r.Header {
		if _, ok := httpsyntax.FieldLineValue(h, "Upgrade"); ok {
			return true
		}
	}
	return false
}
