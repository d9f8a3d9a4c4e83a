// Package steal runs one steal in the agent: a listener that the session's nftables redirect feeds,
// and for each redirected connection the choice the developer asked for. A whole-port steal sends the
// connection through the tunnel to the developer's process (except the kubelet's probes); a filtered
// steal decides per HTTP request (ephemeral/httpx) and sends the rest to the pod's app, dialed at the
// connection's original destination with the pass-through mark so that it does not loop back here.
// In a pod with a service mesh sidecar (Config.Mesh) the redirect takes the sidecar's plaintext
// connections to the app, and what goes to the app leaves as the sidecar's would have.
package steal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/budget"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/httpx"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/netfilter"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/probe"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// DefaultDetectTimeout is how long a new connection may stay silent before it is taken as a
// server-first protocol: such clients wait for the server's greeting, so they pay this once per
// connection; HTTP clients write at once and pay nothing.
const DefaultDetectTimeout = 500 * time.Millisecond

// Opener opens a connection to the developer's process through the tunnel (a KindIncoming stream).
type Opener interface {
	OpenIncoming(ctx context.Context, req wire.OpenRequest) (net.Conn, error)
}

// Redirector installs the session's redirect and removes it on Close. opts carries the spec's
// consent to an unowned redirect and the listener; a fake may ignore them.
type Redirector interface {
	Redirect(id string, r netfilter.Redirect, opts netfilter.Options) (Redirect, error)
}

// Redirect is an installed redirect.
type Redirect interface {
	io.Closer
	KernelOwned() bool
}

// Config is one steal.
type Config struct {
	// ID names the session's nftables table.
	ID string
	// Tee, when set, makes the first registration a redirect mirror's (Mirror) rather than a
	// steal's: every connection goes to the app unchanged, and a copy of its bytes, both ways, goes
	// to the handler Tee returns for it (nil: no copy). Filtered steals may join it (Hub).
	Tee  func(capture.Flow) capture.StreamHandler
	Spec wire.StealSpec
	Open Opener
	// Budget is the agent container's memory budget. Past it the tee copies nothing more, a stolen
	// stream is no longer read from the tunnel (see paced), and each new connection of a filtered
	// steal goes to the app raw, unparsed, so that the proxy's buffers do not grow (connections
	// already being filtered carry on); the app's connections are relayed as ever. Nil: no budget.
	Budget *budget.Budget
	// Events receives what the steal does; it must not block for long.
	Events func(wire.StealEvent)
	Log    *slog.Logger
	// Redirector defaults to nftables in the current network namespace, after sweeping the
	// tables that dead agents left there (netfilter.SweepStale).
	Redirector Redirector
	// ForceUnowned installs the redirect a kernel without the nftables owner flag gets (tproxy,
	// guarded), on any kernel: kernel tests use it to run that path on a kernel that has the flag.
	ForceUnowned bool
	// Flush resets open connections to the ports (idle ones, and busy ones too when busy); defaults
	// to netfilter.Flush.
	Flush func(ports []uint16, skipMark uint32, busy bool) (map[uint16]netfilter.FlushCounts, int, error)
	// FlushWindow and DrainWindow default to wire.FlushWindow and wire.DrainWindow (flush.go,
	// drain.go).
	FlushWindow, DrainWindow time.Duration
	// InNetns runs f in the pod's network namespace, where the app is dialed; nil runs it as is,
	// as the agent already lives there. Kernel tests, which do not, pass their namespace's.
	InNetns func(f func() error) error
	// ListenAddress defaults to the wildcard address on a free port; the redirect's input rule drops
	// whatever reaches it without having been redirected.
	ListenAddress string
	// Mesh, in a pod with a service mesh sidecar, makes the redirect take the sidecar's plaintext
	// connections to the app instead of the mTLS ones to the pod (netfilter.Redirect.Mesh), and
	// passes connections back to the app the way the sidecar would have, from Mesh.PassSources.
	// nil: no mesh.
	Mesh *netfilter.MeshRedirect
}

// Steal is a running steal: the dispatcher of its ports' redirected connections among the sessions
// registered on it (session.go). Start makes one with one session; a Hub shares one among sessions.
type Steal struct {
	cfg Config
	// whole: the first session steals every connection, and no other session may register.
	whole    bool
	probes   *probe.Rule
	ln       *net.TCPListener
	redirect Redirect
	app      *net.Dialer

	regMu sync.Mutex // serializes the changes of regs and mirrorRegs
	regs  atomic.Pointer[[]*Registration]
	// mirrorRegs are the redirect mirrors copying the port's connections (tee.go).
	mirrorRegs atomic.Pointer[[]*Mirror]
	// members counts the sessions a Hub has registered and not yet let go (under the Hub's mu).
	members int

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	once   sync.Once
	closed atomic.Bool
	ending // drain.go
	// overBudget counts the filtered steal's connections sent to the app raw over the budget; over
	// remembers whether the last one was, so that only the change is reported.
	overBudget atomic.Int64
	over       atomic.Bool
	// away is set while a whole-port steal's redirect is lifted (setAway): nothing is stolen
	// meanwhile.
	away   atomic.Bool
	awayMu sync.Mutex
}

// OverBudgetConns is how many connections went to the app unfiltered because the agent was over
// its memory budget.
func (s *Steal) OverBudgetConns() int64 { return s.overBudget.Load() }

type nftRedirector struct {
	log *slog.Logger
}

func (n nftRedirector) Redirect(id string, r netfilter.Redirect, opts netfilter.Options) (Redirect, error) {
	// Leftovers first: a dead agent's table may hold the same ports, and its redirect would then
	// win over ours. A failed sweep does not stop the steal; Open says what is wrong if anything is.
	deleted, err := netfilter.SweepStale()
	if len(deleted) > 0 {
		n.log.Warn("removed nftables tables of agents that are gone", "tables", deleted)
	}
	if err != nil {
		n.log.Warn("sweep of leftover nftables tables", "err", err)
	}
	o, err := netfilter.Open(id, r, opts)
	if err != nil {
		return nil, err
	}
	if !o.KernelOwned() {
		exe, err := os.Executable()
		if err == nil {
			err = startGuard(exe, id)
		}
		if err != nil {
			_ = o.Close()
			return nil, fmt.Errorf("start the table guard: %w", err)
		}
	}
	return o, nil
}

// guardReadyTimeout bounds the wait for the guard to say it watches this process. It starts as
// fast as the agent itself does; not hearing from it means it is not running.
const guardReadyTimeout = 10 * time.Second

// startGuard runs `trafficlab-agent guard ID PID 3` (exe is the agent's binary) for kernels before
// 5.12, which refuse the owner flag: the guard deletes the table when this process dies, however
// it dies. Its own session (setsid) keeps it out of signals sent to ours. It returns only once the
// guard has written a byte on fd 3, which it does once it watches this process: a guard that fails
// to start, dies at once or cannot watch makes the steal fail, rather than run "guarded" by nobody.
func startGuard(exe, id string) error {
	rd, wr, err := os.Pipe()
	if err != nil {
		return err
	}
	defer rd.Close()
	cmd := exec.Command(exe, "guard", id, strconv.Itoa(os.Getpid()), "3")
	cmd.Stderr = os.Stderr
	cmd.ExtraFiles = []*os.File{wr} // fd 3
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	// The guard holds the write end now; ours must go, or a guard that died would not read as EOF.
	wr.Close()
	if err != nil {
		return err
	}
	_ = rd.SetReadDeadline(time.Now().Add(guardReadyTimeout))
	if _, err := io.ReadFull(rd, make([]byte, 1)); err != nil {
		_ = cmd.Process.Kill()
		err = fmt.Errorf("the table guard is not watching: %w", err)
		if werr := cmd.Wait(); werr != nil {
			err = fmt.Errorf("%w (guard: %w)", err, werr)
		}
		return err
	}
	go func() { _ = cmd.Wait() }()
	return nil
}

// Start listens, installs the redirect, resets open connections if asked, and serves until Close
// or the end of ctx, with cfg's Spec, Open and Events as its one session. When Start fails nothing
// is left in the pod.
func Start(ctx context.Context, cfg Config) (*Steal, error) {
	s, _, err := start(ctx, cfg, SessionConfig{Session: cfg.ID, Spec: cfg.Spec, Open: cfg.Open, Events: cfg.Events}, true)
	if err != nil {
		return nil, err
	}
	context.AfterFunc(ctx, func() { _ = s.Close() })
	return s, nil
}

// start is Start with first as the first registration, and no end tied to ctx: the caller ends it
// (Close, or the last registration's leave). announce sends first the Ready event.
func start(ctx context.Context, cfg Config, first SessionConfig, announce bool) (*Steal, *Registration, error) {
	if err := cfg.Spec.Validate(); err != nil {
		return nil, nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Events == nil {
		cfg.Events = func(wire.StealEvent) {}
	}
	if cfg.Redirector == nil {
		cfg.Redirector = nftRedirector{log: cfg.Log}
	}
	if cfg.Flush == nil {
		cfg.Flush = netfilter.Flush
	}
	if cfg.ListenAddress == "" {
		cfg.ListenAddress = ":0"
	}
	if cfg.Spec.DetectTimeout == 0 {
		cfg.Spec.DetectTimeout = wire.Millis(DefaultDetectTimeout)
	}
	s := &Steal{cfg: cfg, conns: map[net.Conn]struct{}{}, ending: newEnding(), whole: cfg.Tee == nil && first.Spec.Filter.Empty()}
	var reg *Registration
	if cfg.Tee == nil {
		var err error
		reg, err = s.newRegistration(first)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %w", err, wire.ErrBadRequest)
		}
	}
	// The calling thread is in the pod's network namespace (the listener and the redirect are made
	// there too): its route table is the pod's.
	gateways, err := probe.Gateways(probe.RouteFile, probe.IPv6RouteFile)
	if err != nil {
		return nil, nil, err
	}
	s.probes = probe.New(cfg.Spec.Probes, gateways)
	s.app = netfilter.PassDialer(10*time.Second, passSources(cfg.Mesh))
	ln, err := netfilter.PassListenConfig().Listen(ctx, "tcp", cfg.ListenAddress)
	if err != nil {
		return nil, nil, fmt.Errorf("listen for stolen connections: %w", err)
	}
	s.ln = ln.(*net.TCPListener)
	ports := make([]uint16, len(cfg.Spec.Ports))
	for i, p := range cfg.Spec.Ports {
		ports[i] = uint16(p)
	}
	r, err := cfg.Redirector.Redirect(cfg.ID, netfilter.Redirect{
		Ports:      ports,
		ListenPort: uint16(s.ln.Addr().(*net.TCPAddr).Port),
		Mark:       netfilter.PassMark,
		Mesh:       cfg.Mesh,
	}, netfilter.Options{
		AllowUnowned: cfg.Spec.AllowUnownedRedirect,
		ForceUnowned: cfg.ForceUnowned,
		Listener:     s.ln,
	})
	if err != nil {
		s.ln.Close()
		if errors.Is(err, netfilter.ErrOwnerUnsupported) {
			return nil, nil, fmt.Errorf("%w: without it a redirect can outlive an agent container killed outright (an OOM kill takes all its processes at once); pass --allow-unowned-redirect to go ahead: %w", err, wire.ErrUnsupported)
		}
		if errors.Is(err, unix.EPERM) {
			return nil, nil, fmt.Errorf("install the redirect: %w (the agent needs NET_ADMIN): %w", err, wire.ErrForbidden)
		}
		return nil, nil, fmt.Errorf("install the redirect: %w", err)
	}
	s.redirect = r
	// The connections' context outlives ctx: when ctx ends, Close drains them first.
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if reg != nil {
		s.add(reg)
		if announce {
			reg.events(s.Ready())
		}
	} else {
		s.addMirror(&Mirror{s: s, tee: cfg.Tee})
	}
	s.wg.Add(1)
	go s.accept()
	s.startFlush(ports)
	return s, reg, nil
}

// Ready is the event that tells a session the redirect is in place.
func (s *Steal) Ready() wire.StealEvent {
	ready := wire.StealEvent{Kind: wire.EventReady, KernelOwned: s.redirect.KernelOwned()}
	for _, a := range s.probes.Sources() {
		ready.ProbeSources = append(ready.ProbeSources, a.String())
	}
	return ready
}

// passSources are where connections passed back to the app come from.
func passSources(m *netfilter.MeshRedirect) []netip.Addr {
	if m == nil {
		return nil
	}
	return m.PassSources
}

// ListenPort is where redirected connections arrive, for tests.
func (s *Steal) ListenPort() int { return s.ln.Addr().(*net.TCPAddr).Port }

// Close ends the steal without failing what the app's clients have in flight (drain.go, end), and
// returns once the redirect is gone. Idempotent.
func (s *Steal) Close() error {
	var err error
	s.once.Do(func() { err = s.end() })
	return err
}

func (s *Steal) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptTCP()
		if err != nil {
			if !s.closed.Load() {
				s.cfg.Log.Error("accept stolen connection", "err", err)
			}
			return
		}
		if !s.track(c) {
			c.Close()
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			s.serve(c)
		}()
	}
}

func (s *Steal) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Steal) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	stolen := s.stolen[c]
	delete(s.stolen, c)
	s.mu.Unlock()
	c.Close()
	s.connGone(stolen)
}

// conn is what one redirected connection needs to be served.
type conn struct {
	client clientConn
	orig   netip.AddrPort
	peer   string
}

func (s *Steal) serve(c *net.TCPConn) {
	_ = c.SetNoDelay(true)
	orig, err := netfilter.OriginalDst(c)
	if err != nil {
		s.cfg.Log.Warn("stolen connection without an original destination", "peer", c.RemoteAddr().String(), "err", err)
		_ = c.SetLinger(0)
		return
	}
	cn := conn{client: c, orig: orig, peer: c.RemoteAddr().String()}
	s.cfg.Log.Debug("redirected connection", "peer", cn.peer, "to", orig.String())
	// The tee before the routing: the mirrors see the client's connection as it happens.
	if mc := s.mirror(c, orig); mc != nil {
		cn.client = mc
		defer mc.close()
	}
	if !s.whole && len(s.registered()) == 0 {
		// Only mirrors: the connection is the app's, relayed unparsed, as a redirect mirror's
		// always were (no detection delay for a server-first protocol). A filtered steal that
		// joins later takes the connections accepted from then on; these stay with the app.
		s.passThrough(cn, nil)
		return
	}
	var source netip.AddrPort
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		source = netip.AddrPortFrom(a.AddrPort().Addr().Unmap(), a.AddrPort().Port())
	}
	keepProbes := !s.cfg.Spec.StealProbes
	// Behind a sidecar every connection to the port comes from the proxy's source, where the mesh's
	// probes come from too (Istio's pilot-agent, from 127.0.0.6): a source and port tell nothing
	// there, and HTTP probes are still told by their target and headers.
	if keepProbes && s.cfg.Mesh == nil && s.probes.PassConn(source, orig.Port()) {
		// A tcpSocket or HTTPS probe says nothing the agent could read: its source and port tell it.
		s.passThrough(cn, nil)
		return
	}
	filtered := !s.whole
	if filtered && s.cfg.Budget != nil {
		over := s.cfg.Budget.Over()
		if s.over.Swap(over) != over {
			msg := "the agent is back within its memory budget: new connections are filtered again"
			if over {
				msg = "the agent is over its memory budget: new connections go to the app unfiltered"
			}
			s.events(wire.StealEvent{Kind: wire.EventWarning, Port: int(orig.Port()), Message: msg})
		}
		if over {
			s.overBudget.Add(1)
			s.passThrough(cn, nil)
			return
		}
	}
	var pk httpx.Peeked
	if filtered || (keepProbes && s.probes.ReadsHTTP(orig.Port())) {
		pk, err = httpx.Peek(cn.client, s.cfg.Spec.DetectTimeout.Std())
		if err != nil {
			s.cfg.Log.Debug("client went away before its first request", "peer", cn.peer, "err", err)
			return
		}
	}
	if !filtered {
		if pk.First != nil && keepProbes && s.probes.IsProbe(pk.First.ProbeRequest(source, orig)) {
			s.passThrough(cn, pk.Prefix)
			return
		}
		reg := s.wholeSession()
		if reg == nil || !s.markStolen(c) {
			// The steal is ending, or its session is away: the connection is the app's.
			s.passThrough(cn, pk.Prefix)
			return
		}
		s.stealWhole(cn, pk.Prefix, reg)
		return
	}
	ct := &connTargets{cn: cn}
	route := httpx.Route{
		Pick: func(h *httpx.RequestHead) *httpx.Target {
			if r := s.pick(h, source, orig); r != nil {
				return ct.target(r)
			}
			return nil
		},
		App:   func(ctx context.Context) (net.Conn, error) { return s.dialApp(ctx, cn) },
		Event: func(e httpx.Event) { s.requestEvent(cn, ct, e) },
		// The app's slow-header protection, which it cannot apply to heads it never sees.
		HeadTimeout: s.cfg.Spec.HeadTimeout.Std(),
		Drain:       s.drain,
	}
	switch pk.Proto {
	case httpx.ProtoHTTP1:
		err = httpx.ServeHTTP1(s.ctx, cn.client, pk.Prefix, route)
	case httpx.ProtoH2C:
		err = httpx.ServeH2C(s.ctx, cn.client, pk.Prefix, route)
	default:
		// A filter selects HTTP requests; whatever else arrives on the port is the app's.
		s.passThrough(cn, pk.Prefix)
		return
	}
	if err != nil && s.ctx.Err() == nil {
		s.cfg.Log.Debug("filtered connection ended", "peer", cn.peer, "err", err)
	}
}

// wholeSession is the session of a whole-port steal, nil while it is away.
func (s *Steal) wholeSession() *Registration {
	for _, r := range s.registered() {
		if r.live() {
			return r
		}
	}
	return nil
}

// pick is the registration a request goes to: the first live one whose filter matches it, in the
// order they registered (a probe only to one that steals probes); nil for the app.
func (s *Steal) pick(h *httpx.RequestHead, source, orig netip.AddrPort) *Registration {
	regs := s.registered()
	if len(regs) == 0 || s.draining() {
		return nil
	}
	q := h.ProbeRequest(source, orig)
	probeKnown, isProbe := false, false
	for _, r := range regs {
		if !r.live() {
			continue
		}
		if !r.stealProbes {
			if !probeKnown {
				isProbe, probeKnown = s.probes.IsProbe(q), true
			}
			if isProbe {
				continue
			}
		}
		if r.matcher.Match(h.Method, q.Path, q.Header) {
			r.picked()
			return r
		}
	}
	return nil
}

// requestEvent tells a request's session about it (the app's requests: the sessions that asked for
// them), and every session about a connection's warning.
func (s *Steal) requestEvent(cn conn, ct *connTargets, e httpx.Event) {
	var to []*Registration
	switch {
	case e.Target != nil:
		r := ct.registration(e.Target)
		if r != nil && e.Warning == "" {
			// Every picked request ends with one event that is not a warning.
			r.answered()
		}
		if r != nil && (e.Stolen || e.Warning != "" || r.passedEvents) {
			to = append(to, r)
		}
	case e.Warning != "":
		to = s.registered()
	default:
		for _, r := range s.registered() {
			if r.passedEvents {
				to = append(to, r)
			}
		}
	}
	if len(to) == 0 {
		return
	}
	ev := wire.StealEvent{
		Kind: wire.EventRequest, Port: int(cn.orig.Port()), Peer: cn.peer, Proto: e.Proto,
		Method: e.Method, Path: e.Path, Status: e.Status, Stolen: e.Stolen,
		Duration: wire.Millis(e.Duration), BytesIn: e.ReqBytes, BytesOut: e.RespBytes,
	}
	if e.Warning != "" {
		ev.Kind = wire.EventWarning
		ev.Message = e.Warning
	}
	for _, r := range to {
		r.events(ev)
	}
}

func (s *Steal) dialApp(ctx context.Context, cn conn) (net.Conn, error) {
	var c net.Conn
	dial := func() error {
		var err error
		c, err = s.app.DialContext(ctx, "tcp", cn.orig.String())
		return err
	}
	var err error
	if s.cfg.InNetns != nil {
		err = s.cfg.InNetns(dial)
	} else {
		err = dial()
	}
	if err != nil {
		return nil, fmt.Errorf("dial the app at %s: %w", cn.orig, err)
	}
	_ = c.(*net.TCPConn).SetNoDelay(true)
	return c, nil
}

// passThrough hands the whole connection to the app, replaying what detection read.
func (s *Steal) passThrough(cn conn, prefix []byte) {
	app, err := s.dialApp(s.ctx, cn)
	if err != nil {
		s.cfg.Log.Warn("pass-through to the app failed", "peer", cn.peer, "err", err)
		_ = cn.client.SetLinger(0)
		return
	}
	if len(prefix) > 0 {
		if _, err := app.Write(prefix); err != nil {
			app.Close()
			return
		}
	}
	_ = wire.Join(cn.client, app)
}

// stealWhole sends the connection to the developer's process. When that process is down the client
// is reset, as it would be by a port nobody listens on, rather than silently served by the app.
func (s *Steal) stealWhole(cn conn, prefix []byte, reg *Registration) {
	start := time.Now()
	local, err := reg.openLocal(s.ctx, cn)
	if err != nil {
		_ = cn.client.SetLinger(0)
		reg.events(wire.StealEvent{
			Kind: wire.EventWarning, Port: int(cn.orig.Port()), Peer: cn.peer,
			Message: fmt.Sprintf("connection from %s to port %d reset: %v", cn.peer, cn.orig.Port(), err),
		})
		return
	}
	cl := &counted{Conn: local}
	if len(prefix) > 0 {
		if _, err := cl.Write(prefix); err != nil {
			cl.Close()
			_ = cn.client.SetLinger(0)
			return
		}
	}
	s.cfg.Log.Debug("stealing connection", "peer", cn.peer, "port", cn.orig.Port())
	err = wire.Join(cn.client, cl)
	s.cfg.Log.Debug("stolen connection ended", "peer", cn.peer, "err", err)
	reg.events(wire.StealEvent{
		Kind: wire.EventConnection, Port: int(cn.orig.Port()), Peer: cn.peer, Stolen: true,
		Duration: wire.Millis(time.Since(start)), BytesIn: cl.written.Load(), BytesOut: cl.read.Load(),
	})
}

// counted counts what crosses the tunnel side of a stolen connection: written is what the client sent,
// read what it received.
type counted struct {
	net.Conn
	read, written atomic.Int64
}

func (c *counted) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *counted) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

func (c *counted) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}
