package attach

import (
	"context"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Live is what a running session shows to `kubectl trafficlab sessions`: who runs it (as its plugin
// said), what it does, since when and how much, and the way another session ends it. The agent's main
// process keeps one per attachment (Config.Register).
type Live struct {
	id    string
	user  string
	host  string
	since time.Time

	bytes    atomic.Int64
	conns    atomic.Int64
	requests atomic.Int64

	mu      sync.Mutex
	dialed  bool
	running map[*wire.OpenRequest]struct{}
	end     func(reason string)
}

func newLive(id string, hello wire.Hello, since time.Time, end func(reason string)) *Live {
	return &Live{id: id, user: hello.Options.User, host: hello.Options.Host, since: since,
		running: map[*wire.OpenRequest]struct{}{}, end: end}
}

// ID is the session's id, as its Welcome told the plugin.
func (l *Live) ID() string { return l.id }

// Info is the session as it is now.
func (l *Live) Info() wire.SessionInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	info := wire.SessionInfo{ID: l.id, User: l.user, Host: l.host, Since: l.since,
		Bytes: l.bytes.Load(), Connections: l.conns.Load(), Requests: l.requests.Load()}
	for r := range l.running {
		info.Verbs = append(info.Verbs, r.Kind)
		switch {
		case r.Steal != nil:
			info.Ports = append(info.Ports, r.Steal.Ports...)
			info.Filters = append(info.Filters, r.Steal.Filter.FilterLabels()...)
		case r.Mirror != nil:
			info.Ports = append(info.Ports, r.Mirror.Ports...)
			info.Filters = append(info.Filters, r.Mirror.Filter.FilterLabels()...)
		case r.Dump != nil:
			info.Ports = append(info.Ports, r.Dump.Ports...)
			if r.Dump.Filter != "" {
				info.Filters = append(info.Filters, "expr="+r.Dump.Filter)
			}
		}
	}
	if l.dialed {
		info.Verbs = append(info.Verbs, wire.KindDial)
	}
	slices.Sort(info.Verbs)
	info.Verbs = slices.Compact(info.Verbs)
	slices.Sort(info.Ports)
	info.Ports = slices.Compact(info.Ports)
	slices.Sort(info.Filters)
	info.Filters = slices.Compact(info.Filters)
	return info
}

// End ends the session for reason, which its plugin is told first.
func (l *Live) End(reason string) { l.end(reason) }

// stream records a stream the plugin opened, for as long as it runs; a dial is remembered after its
// end, since a port-forward or exec session dials on demand.
func (l *Live) stream(r *wire.OpenRequest) (done func()) {
	if l == nil {
		return func() {}
	}
	if r.Kind == wire.KindDial {
		l.conns.Add(1)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if r.Kind == wire.KindDial {
		l.dialed = true
		return func() {}
	}
	l.running[r] = struct{}{}
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		delete(l.running, r)
	}
}

// opened counts a connection the agent hands to the plugin (stolen or mirrored).
func (l *Live) opened() {
	if l != nil {
		l.conns.Add(1)
	}
}

// stealEvent counts what a steal delivered to the plugin: a stolen request, or a stolen connection of a
// whole-port steal (the plugin prints one line for each).
func (l *Live) stealEvent(e wire.StealEvent) {
	if l != nil && e.Stolen && (e.Kind == wire.EventRequest || e.Kind == wire.EventConnection) {
		l.requests.Add(1)
	}
}

// mirrorEvent counts what a mirror copied: a request, or a connection of a protocol that is not HTTP.
func (l *Live) mirrorEvent(e wire.MirrorEvent) {
	if l != nil && (e.Kind == wire.EventMirrored || e.Kind == wire.EventCopied) {
		l.requests.Add(1)
	}
}

// count wraps a data connection so that its bytes count as the session's.
func (l *Live) count(c net.Conn) net.Conn {
	if l == nil {
		return c
	}
	return &countedConn{Conn: c, n: &l.bytes}
}

type countedConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// endedGrace bounds how long an ended session waits for its plugin to hang up after the Bye that says
// who ended it: closing first could reach the plugin before the Bye (its data connections take
// another path than its control channel), and it would then report a lost agent, not who ended it.
const endedGrace = 5 * time.Second

// ender makes the End of a session whose Bye is sent by bye (on its current control channel) and whose
// Run is canceled by cancel.
func ender(bye func(reason string) error, cancel context.CancelFunc, log interface{ Info(string, ...any) }) func(string) {
	var once sync.Once
	return func(reason string) {
		once.Do(func() {
			log.Info("session ended by another", "reason", reason)
			if err := bye(reason); err != nil {
				cancel()
				return
			}
			time.AfterFunc(endedGrace, cancel)
		})
	}
}
