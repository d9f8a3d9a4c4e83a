// Package attach is a session's attachment to one agent: the agent's main process runs Run for each
// `trafficlab-agent attach` relay that connects to it, reads the plugin's Hello on that connection,
// listens on the pod's loopback for data connections, and serves streams until the control channel
// ends. Several sessions run side by side in the one main process. Everything a session holds
// (listener, muxes, dialed connections, its steal's owned nftables table) is released when Run returns;
// what a failed cleanup leaves in the kernel goes at the latest with the main process.
package attach

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/budget"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/dial"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/netfilter"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/sniff"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/steal"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Config is what one session needs.
type Config struct {
	Version string
	// Control is the attachment's connection, relayed to the exec stream: the plugin's frames arrive on
	// In, ours go to Out. The exec stream carries them to the plugin, and the runtime does not log it.
	In  io.Reader
	Out io.Writer
	Log *slog.Logger
	// ListenAddress is where data connections arrive; the pod's loopback, so that no port opens on the
	// pod IP and only the kubelet's port-forward (or a process in the pod) can reach it.
	ListenAddress string
	Dialer        *dial.Dialer
	Tunnel        wire.MuxConfig
	// PreambleTimeout bounds an unauthenticated connection's handshake.
	PreambleTimeout time.Duration
	// RefusedLogInterval is the least time between two log lines about refused data connections;
	// 10 s when zero.
	RefusedLogInterval time.Duration
	Clock              wire.Clock
	// DataPorts lists the loopback ports of every session's data listener in this agent, which no
	// capture may include (a dump of its own tunnel feeds on itself and records the session); nil
	// means this session's own port.
	DataPorts func() []int
	// ResolvConfPath is the pod's resolver configuration; /etc/resolv.conf when empty.
	ResolvConfPath string
	// WatchDataPorts, when set, calls fn with DataPorts now and at every change until stop: a capture
	// that runs while another session starts leaves that session's data port out too. nil: DataPorts
	// is read once, when the capture opens.
	WatchDataPorts func(fn func([]int)) (stop func())
	// Budget is the agent's memory budget: past it mirror copies are dropped, stolen streams wait and
	// new filtered connections go to the app unread. nil: no budget (tests).
	Budget *budget.Budget
	// Listening, when set, is told the session's data port once it listens, before the Welcome
	// announces it: the main process keeps the live sessions' ports, which no session may capture or
	// steal.
	Listening func(port int)
	// Mesh reads the pod's service mesh each time a steal or redirect mirror of ports starts: how
	// its redirect comes after the sidecar (nil: no mesh), or why the mesh mode cannot be handled,
	// in one line naming it, which refuses the steal before anything changes. hint is what the
	// plugin saw of a mesh in the pod's spec (nil: none). nil Mesh: no mesh is ever looked for.
	Mesh func(hint *wire.Mesh, ports []int) (*netfilter.MeshRedirect, error)
	// Steals is the main process's one dispatcher per pod port, shared by every session's steals
	// and redirect mirrors (ephemeral/steal.Hub). nil: this session gets a hub of its own (tests).
	Steals *steal.Hub
	// Register, when set, is given the session once its Welcome is sent, for `kubectl trafficlab
	// sessions` to list and end it, and unregister when Run returns.
	Register func(*Live) (unregister func())
	// Sessions is the main process's registry of resumable sessions: a session whose Hello asks for a
	// reconnect grace is entered there, and a Hello that resumes one is handed to it. nil: sessions
	// end with their control channel, whatever the Hello asks.
	Sessions *Registry
	// Hangup ends the attachment (closes its connection to the relay, whose exec then ends) when the
	// session lets go of its control channel but goes on, lost and waiting for a resume.
	Hangup func()
}

// mesh is the redirect's mesh for a steal or redirect mirror about to start.
func (s *server) mesh(hint *wire.Mesh, ports []int) (*netfilter.MeshRedirect, error) {
	if s.cfg.Mesh == nil {
		return nil, nil
	}
	m, err := s.cfg.Mesh(hint, ports)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, wire.ErrUnsupported)
	}
	return m, nil
}

// Run serves one session and returns why it ended. A plugin that said Bye or closed stdin is a normal
// end (nil); a lost peer or a broken handshake is an error.
func Run(ctx context.Context, cfg Config) error {
	if cfg.ListenAddress == "" {
		cfg.ListenAddress = "127.0.0.1:0"
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &dial.Dialer{}
	}
	if cfg.PreambleTimeout <= 0 {
		cfg.PreambleTimeout = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Clock == nil {
		cfg.Clock = wire.SystemClock()
	}
	if cfg.RefusedLogInterval <= 0 {
		cfg.RefusedLogInterval = 10 * time.Second
	}
	ctrl := wire.NewControl(cfg.In, cfg.Out, wire.ControlConfig{Role: wire.RoleAgent, Version: cfg.Version, Clock: cfg.Clock})
	hctx, cancelHello := context.WithTimeout(ctx, 30*time.Second)
	hello, err := ctrl.ReadHello(hctx)
	cancelHello()
	if err != nil {
		return fmt.Errorf("session handshake: %w", err)
	}
	if hello.Resume != nil {
		return resume(ctx, cfg, ctrl, hello)
	}
	ln, err := net.Listen("tcp", cfg.ListenAddress)
	if err != nil {
		_ = ctrl.Send(wire.Error{Code: wire.CodeInternal, Message: fmt.Sprintf("agent cannot listen on %s: %v", cfg.ListenAddress, err)})
		return fmt.Errorf("listen for data connections on %q: %w", cfg.ListenAddress, err)
	}
	id, err := newID()
	if err != nil {
		ln.Close()
		return err
	}
	key, err := wire.NewDataKey()
	if err != nil {
		ln.Close()
		_ = ctrl.Send(wire.Error{Code: wire.CodeInternal, Message: fmt.Sprintf("agent cannot make its data key: %v", err)})
		return err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if cfg.Listening != nil {
		cfg.Listening(port)
	}
	// A resume points the session's log at the new attachment's stderr, which the plugin reads.
	logs := newSwitchHandler(cfg.Log.Handler())
	cfg.Log = slog.New(logs)
	if cfg.Steals == nil {
		if cfg.Steals, err = steal.NewHub(steal.Config{Log: cfg.Log, Budget: cfg.Budget}, ""); err != nil {
			ln.Close()
			return err
		}
	}
	s := newServer(cfg, id, hello, key)
	if s.cfg.DataPorts == nil {
		s.cfg.DataPorts = func() []int { return []int{port} }
	}
	welcome := wire.Welcome{
		SessionID:   id,
		DataPort:    port,
		DataKeyPin:  key.Pin(),
		AgentPID:    os.Getpid(),
		Kinds:       []string{wire.KindDial, wire.KindSteal, wire.KindDump, wire.KindMirror},
		Compression: wire.SupportedCompression(),
		ResolvConf:  readResolvConf(s.cfg.ResolvConfPath),
	}
	grace := min(hello.Options.ReconnectGrace.Std(), wire.MaxReconnectGrace)
	if grace > 0 && cfg.Sessions != nil {
		token, err := wire.NewSecret()
		if err != nil {
			ln.Close()
			_ = ctrl.Send(wire.Error{Code: wire.CodeInternal, Message: err.Error()})
			return err
		}
		s.token = token
		welcome.ResumeToken = &token
		welcome.ReconnectGrace = wire.Millis(grace)
		cfg.Sessions.add(s)
		defer cfg.Sessions.remove(s)
	}
	defer close(s.over)
	defer s.refused.flush()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The control channel changes with each resume; another user's end says Bye on the current one.
	var cur atomic.Pointer[wire.Control]
	cur.Store(ctrl)
	bye := func(reason string) error {
		s.ended.Store(true)
		return cur.Load().Bye(reason)
	}
	s.live = newLive(id, hello, time.Now(), ender(bye, cancel, s.log))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.acceptConns(ctx, ln)
	}()
	defer func() {
		cancel()
		ln.Close()
		s.closeAll()
		wg.Wait()
		s.waitStreams(5 * time.Second)
	}()
	if err := ctrl.Welcome(welcome); err != nil {
		return fmt.Errorf("send welcome: %w", err)
	}
	s.log.Info("session started", "data", ln.Addr().String(), "plugin", hello.Version, "reconnectGrace", grace)
	hangup := cfg.Hangup
	// holder is the resuming attachment that holds the control channel now (nil: the first one);
	// letting go of the channel ends it.
	var holder *handoff
	letGo := func() {
		if hangup != nil {
			hangup()
		}
		if holder != nil {
			close(holder.done)
			holder = nil
		}
	}
	defer letGo()
	if cfg.Register != nil {
		defer cfg.Register(s.live)()
	}
	for {
		var next *handoff
		next, err = s.runControl(ctx, ctrl)
		switch {
		case errors.Is(err, wire.ErrBye), ctx.Err() != nil, s.ended.Load():
			s.log.Info("session ended", "why", err)
			return nil
		case errors.Is(err, wire.ErrPeerClosed) && !errors.Is(err, errTakenOver):
			// The exec stream ended cleanly: the plugin's process is gone (a crash, SIGKILL: its
			// kernel closed its connections) or it let go of the stream. A plugin that lost its
			// network or sleeps cannot close it; that shows as missed heartbeats, and only that
			// keeps the session for its grace. So a crashed plugin's claims and redirect go now,
			// not after the grace, and a plugin that reconnects keeps its old stream open until
			// the resume has taken the session over (tunnel.run).
			s.log.Info("session ended", "why", err)
			return nil
		case s.token.IsZero():
			s.log.Warn("session ended", "why", err)
			return err
		}
		// The plugin may be back: keep the session, without it, for the grace.
		s.log.Info("plugin away: the session waits for it", "why", err, "grace", grace)
		letGo()
		s.closeTunnels()
		if next == nil {
			next = s.away(ctx, grace)
		}
		if next == nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Warn("session forgotten: the plugin was away longer than the reconnect grace", "grace", grace)
			return fmt.Errorf("the plugin was away longer than the reconnect grace %v (%w)", grace, err)
		}
		holder, hangup, ctrl = next, next.hangup, next.ctrl
		cur.Store(ctrl)
		if next.log != nil {
			logs.set(next.log)
		}
		s.adopt(next.hello)
		if err := ctrl.Welcome(welcome); err != nil {
			s.log.Warn("resume: send welcome", "err", err)
			continue
		}
		s.log.Info("session resumed", "plugin", next.hello.Version)
	}
}

// runControl runs the control channel until it ends, or until a resume takes the session over: the
// plugin saw the loss first and comes back on a new channel, returned.
func (s *server) runControl(ctx context.Context, ctrl *wire.Control) (*handoff, error) {
	if s.token.IsZero() {
		return nil, ctrl.Run(ctx)
	}
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(rctx) }()
	select {
	case err := <-done:
		return nil, err
	case ho := <-s.handoffs:
		stop()
		s.log.Debug("control channel taken over by a resume", "ended", <-done)
		return ho, errTakenOver
	}
}

func newID() (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("session id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

type server struct {
	cfg Config
	id  string
	log *slog.Logger
	// user and host are the Hello's: who runs the session, for other sessions' messages.
	user, host string
	data       atomic.Pointer[wire.DataServer]
	refused    *refusals
	// maxConns is the Hello's DataConns; admitted counts the connections that showed the secret.
	// Authenticated connections past it are refused: the plugin opens its data connections once (per
	// resume, whose Hello sets both anew).
	maxConns atomic.Int64
	admitted atomic.Int64

	stealing atomic.Bool
	// live is the session as `kubectl trafficlab sessions` shows it.
	live *Live
	// ended: another user ended the session (`sessions end`); it waits for no resume.
	ended atomic.Bool
	// stealResume hands a steal stream that resumes the running steal to it (OpenRequest.Resume).
	stealResume chan *wire.Incoming
	// mirrorResume does the same for a mirror's stream; mirroring says a mirror runs.
	mirrorResume chan *wire.Incoming
	mirroring    atomic.Int32

	// token is what a resume must show (zero: the session cannot be resumed); handoffs receives the
	// resumes; over is closed when the session has ended.
	token    wire.Secret
	handoffs chan *handoff
	over     chan struct{}

	mu       sync.Mutex
	closed   bool
	sessions map[*wire.Mux]struct{}
	mirrors  int // running; while there is one, every tunnel spaces its writes
	streams  sync.WaitGroup
}

func (s *server) acceptConns(ctx context.Context, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				s.log.Error("accept data connection", "err", err)
			}
			return
		}
		s.streams.Add(1)
		go func() {
			defer s.streams.Done()
			s.serveConn(ctx, c)
		}()
	}
}

func newServer(cfg Config, id string, hello wire.Hello, key *wire.DataKey) *server {
	s := &server{cfg: cfg, id: id, log: cfg.Log.With("session", id),
		stealResume: make(chan *wire.Incoming), mirrorResume: make(chan *wire.Incoming), handoffs: make(chan *handoff), over: make(chan struct{}),
		user: hello.Options.User, host: hello.Options.Host}
	s.maxConns.Store(int64(hello.DataConns))
	s.refused = &refusals{log: s.log, clock: cfg.Clock, interval: cfg.RefusedLogInterval}
	s.data.Store(&wire.DataServer{
		Key:     key,
		Secret:  hello.Secret,
		Admit:   s.admit,
		Timeout: cfg.PreambleTimeout,
		Mux:     cfg.Tunnel,
	})
	return s
}

// admit counts a connection that showed the secret, and refuses it past the Hello's DataConns.
func (s *server) admit() error {
	if n, limit := s.admitted.Add(1), s.maxConns.Load(); n > limit {
		return fmt.Errorf("data connection %d, the Hello declared %d: %w", n, limit, wire.ErrDataConnLimit)
	}
	return nil
}

func (s *server) serveConn(ctx context.Context, c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	// Anything in the pod can connect to the loopback port; only the plugin, which holds the secret
	// and checks our key, gets a tunnel.
	t, err := s.data.Load().Accept(s.live.count(c))
	if err != nil {
		s.refused.add(c.RemoteAddr().String(), err)
		return
	}
	if !s.track(t) {
		t.Close()
		return
	}
	defer s.untrack(t)
	for {
		in, err := t.Accept(ctx)
		if err != nil {
			return
		}
		s.streams.Add(1)
		go func() {
			defer s.streams.Done()
			s.serveStream(ctx, in)
		}()
	}
}

func (s *server) track(t *wire.Mux) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.sessions == nil {
		s.sessions = map[*wire.Mux]struct{}{}
	}
	s.sessions[t] = struct{}{}
	t.SetWriteInterval(s.writeInterval())
	return true
}

// writeInterval is what the tunnels' writes are spaced by now (wire.Mux.SetWriteInterval):
// wire.MirrorWriteInterval while a mirror runs, since its copies cross the port-forward chain one
// small frame each. Called with mu held.
func (s *server) writeInterval() time.Duration {
	if s.mirrors > 0 {
		return wire.MirrorWriteInterval
	}
	return 0
}

// mirrorStarted spaces the writes of every tunnel, those that join later included, until the last
// running mirror calls the function it returns.
func (s *server) mirrorStarted() (ended func()) {
	s.adjustMirrors(1)
	return func() { s.adjustMirrors(-1) }
}

func (s *server) adjustMirrors(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mirrors += n
	d := s.writeInterval()
	for t := range s.sessions {
		t.SetWriteInterval(d)
	}
}

func (s *server) untrack(t *wire.Mux) {
	s.mu.Lock()
	delete(s.sessions, t)
	s.mu.Unlock()
	t.Close()
}

// waitStreams lets the streams finish their cleanup before the process exits: a steal removes its
// redirect before it closes its listener, whereas at exit the kernel closes the listener and the
// netlink socket that owns the redirect in no particular order, and a connection arriving between
// the two would be reset. The bound keeps a stuck stream from keeping the process.
func (s *server) waitStreams(limit time.Duration) {
	done := make(chan struct{})
	go func() {
		s.streams.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(limit):
		s.log.Warn("streams still running at session end", "waited", limit)
	}
}

// closeAll ends every tunnel, which ends every stream in it, so Run's wait cannot hang on a stream
// whose peer vanished.
func (s *server) closeAll() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.closeTunnels()
}

func (s *server) serveStream(ctx context.Context, in *wire.Incoming) {
	req := in.Request()
	defer s.live.stream(&req)()
	switch req.Kind {
	case wire.KindSteal:
		s.serveSteal(ctx, in)
		return
	case wire.KindDump:
		s.serveDump(ctx, in)
		return
	case wire.KindMirror:
		s.serveMirror(ctx, in)
		return
	}
	if req.Kind != wire.KindDial {
		_ = in.Reject(fmt.Errorf("stream kind %q: %w", req.Kind, wire.ErrUnsupported))
		return
	}
	c, err := s.cfg.Dialer.Dial(ctx, req.Network, req.Address)
	if err != nil {
		s.log.Info("dial failed", "network", req.Network, "address", req.Address, "err", err)
		_ = in.Reject(err)
		return
	}
	if req.Network == wire.NetworkUDP {
		st, err := in.AcceptWith(wire.CompressionNone)
		if err != nil {
			c.Close()
			return
		}
		relayUDP(st, c)
		return
	}
	if err := in.AcceptJoin(ctx, c); err != nil {
		s.log.Debug("stream ended with an error", "address", req.Address, "err", err)
	}
}

// relayUDP carries datagrams between a stream and a connected UDP socket until either ends.
func relayUDP(st *wire.Stream, c net.Conn) {
	defer st.Close()
	defer c.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, wire.MaxDatagramSize)
		for {
			n, err := c.Read(buf)
			if err != nil {
				st.Close()
				return
			}
			if err := wire.WriteDatagram(st, buf[:n]); err != nil {
				c.Close()
				return
			}
		}
	}()
	buf := make([]byte, wire.MaxDatagramSize)
	for {
		n, err := wire.ReadDatagram(st, buf)
		if err != nil {
			break
		}
		// A lost datagram is UDP's normal life; only the stream's end ends the association.
		_, _ = c.Write(buf[:n])
	}
	c.Close()
	<-done
}

// serveSteal runs the steal the plugin asked for while its stream lives. The stream is accepted only
// once the redirect is in place, so the plugin's "stealing" is true when it prints it. In a
// resumable session a stream lost with the tunnel (aborted, not ended by the plugin) does not end
// the steal: it goes away (steal.Lease.Away) until the resumed plugin opens its stream again
// (resumeSteal), or the session ends.
func (s *server) serveSteal(ctx context.Context, in *wire.Incoming) {
	if in.Request().Resume {
		s.resumeSteal(ctx, in)
		return
	}
	if !s.stealing.CompareAndSwap(false, true) {
		_ = in.Reject(fmt.Errorf("this session already steals: %w", wire.ErrUnsupported))
		return
	}
	defer s.stealing.Store(false)
	spec := *in.Request().Steal
	// Events wait here for the stream; a burst beyond the buffer is dropped and counted rather than
	// slowing the connections that cause it.
	events := make(chan wire.StealEvent, 1024)
	var dropped atomic.Int64
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	mesh, err := s.mesh(spec.Mesh, spec.Ports)
	if err != nil {
		s.log.Warn("steal refused", "ports", spec.Ports, "err", err)
		_ = in.Reject(err)
		return
	}
	// The port's dispatcher is shared with the other sessions that filter it (steal.Hub): this
	// session registers its filter and tunnel there, and its leave ends the redirect if it is last.
	st, err := s.cfg.Steals.Steal(ctx, steal.SessionConfig{
		Session: s.id,
		User:    s.user,
		Host:    s.host,
		Spec:    spec,
		Open:    s,
		Events: func(e wire.StealEvent) {
			s.live.stealEvent(e)
			select {
			case events <- e:
			default:
				dropped.Add(1)
			}
		},
	}, mesh)
	if err != nil {
		s.log.Warn("steal refused", "ports", spec.Ports, "err", err)
		_ = in.Reject(err)
		return
	}
	defer st.Close()
	stream, err := in.AcceptWith(wire.CompressionNone)
	if err != nil {
		return
	}
	s.log.Info("stealing", "ports", spec.Ports, "filtered", !spec.Filter.Empty())
	// The plugin never writes on this stream: its end (EOF) is the steal's end, its abort the
	// tunnel's loss.
	watch := func(st *wire.Stream) <-chan error {
		gone := make(chan error, 1)
		go func() {
			_, err := io.Copy(io.Discard, st)
			gone <- err
		}()
		return gone
	}
	gone := watch(stream)
	w := wire.NewLineWriter[wire.StealEvent](stream)
	// pending is nil while the plugin is away: events wait in their buffer.
	pending := events
	defer func() {
		if stream != nil {
			stream.Close()
		}
	}()
	for {
		select {
		case e := <-pending:
			if n := dropped.Swap(0); n > 0 {
				_ = w.Write(wire.StealEvent{Kind: wire.EventWarning, Message: fmt.Sprintf("%d events dropped: the plugin reads them too slowly", n)})
			}
			if err := w.Write(e); err != nil {
				// The stream is broken: its watch says how.
				pending = nil
			}
		case err := <-gone:
			if err == nil || s.token.IsZero() {
				cancel()
				continue
			}
			stream.Close()
			stream, gone, pending = nil, nil, nil
			if err := st.Away(); err != nil {
				s.log.Warn("steal away", "err", err)
			}
			s.log.Info("steal away: the app answers until the plugin is back", "ports", spec.Ports, "why", err)
		case re := <-s.stealResume:
			// The redirect is back before the plugin hears the steal resumed, as at the start.
			if err := st.Back(); err != nil {
				s.log.Warn("steal back", "err", err)
				_ = re.Reject(err)
				continue
			}
			ns, err := re.AcceptWith(wire.CompressionNone)
			if err != nil {
				continue
			}
			if stream != nil {
				stream.Close()
			}
			stream, gone, pending = ns, watch(ns), events
			w = wire.NewLineWriter[wire.StealEvent](ns)
			s.log.Info("steal resumed", "ports", spec.Ports)
		case <-ctx.Done():
			// Close drains the connections the steal relays to the app; what it reports on the way
			// goes to the plugin for as long as the plugin reads.
			write := func(e wire.StealEvent) {
				if stream != nil {
					_ = w.Write(e)
				}
			}
			closed := make(chan struct{})
			go func() {
				defer close(closed)
				_ = st.Close()
			}()
			for done := false; !done; {
				select {
				case e := <-events:
					write(e)
				case <-closed:
					done = true
				}
			}
			for len(events) > 0 {
				write(<-events)
			}
			s.log.Info("steal ended", "ports", spec.Ports)
			return
		}
	}
}

// resumeSteal hands a resumed plugin's steal stream to the session's running steal.
func (s *server) resumeSteal(ctx context.Context, in *wire.Incoming) {
	handOver(ctx, in, "steal", s.stealing.Load(), s.stealResume)
}

// handOver gives a resumed plugin's stream of a verb (steal, mirror) to the session's running one
// through to, or refuses it: no such verb runs (running false), or it does not take the stream.
func handOver(ctx context.Context, in *wire.Incoming, verb string, running bool, to chan<- *wire.Incoming) {
	if !running {
		_ = in.Reject(fmt.Errorf("this session has no %s to resume: %w", verb, wire.ErrSessionGone))
		return
	}
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case to <- in:
	case <-t.C:
		_ = in.Reject(fmt.Errorf("the session's %s did not take the resumed stream: %w", verb, wire.ErrInternal))
	case <-ctx.Done():
		_ = in.Reject(wire.ErrSessionClosed)
	}
}

// OpenIncoming opens a stream to the plugin for a stolen connection, on the least busy tunnel.
func (s *server) OpenIncoming(ctx context.Context, req wire.OpenRequest) (net.Conn, error) {
	s.mu.Lock()
	best := wire.LeastLoaded(slices.Collect(maps.Keys(s.sessions)), 0)
	s.mu.Unlock()
	if best == nil {
		return nil, fmt.Errorf("no data connection to the plugin: %w", wire.ErrSessionClosed)
	}
	s.live.opened()
	return best.Open(ctx, req)
}

// serveDump captures while the plugin's stream lives and writes the capture on it as pcapng. The
// stream is accepted only once the packet sockets are open, so a missing NET_RAW is the plugin's
// refusal, not a silent empty capture.
func (s *server) serveDump(ctx context.Context, in *wire.Incoming) {
	spec := *in.Request().Dump
	exclude := s.cfg.DataPorts()
	c, err := sniff.Open(spec, exclude)
	if err != nil {
		s.log.Warn("dump refused", "filter", spec.CaptureExpr(exclude), "err", err)
		_ = in.Reject(err)
		return
	}
	defer s.followDataPorts(c, spec)()
	st, err := in.AcceptWith(wire.CompressionNone)
	if err != nil {
		c.Close()
		return
	}
	defer st.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The plugin never writes on this stream: its end is the dump's end.
	go func() {
		_, _ = io.Copy(io.Discard, st)
		cancel()
	}()
	s.log.Info("dumping", "filter", spec.CaptureExpr(exclude))
	stats, err := sniff.Dump(ctx, c, st)
	s.log.Info("dump ended", "received", stats.Received, "dropped", stats.Dropped, "err", err)
	_ = st.CloseWrite()
}

// maxResolvConf bounds what the welcome carries; the kubelet writes a few lines.
const maxResolvConf = 16 << 10

// readResolvConf is the pod's resolver configuration: the runtime mounts the pod's resolv.conf into
// every container, the agent's included. Missing, it is empty and exec says what that means.
func readResolvConf(path string) string {
	if path == "" {
		path = "/etc/resolv.conf"
	}
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(f, maxResolvConf))
	return string(b)
}

// followDataPorts keeps a capture opened by sniff.Open for spec clear of every live session's data
// port, sessions that start later included, until the returned stop.
func (s *server) followDataPorts(c *capture.Capture, spec wire.DumpSpec) (stop func()) {
	if s.cfg.WatchDataPorts == nil {
		return func() {}
	}
	return s.cfg.WatchDataPorts(func(ports []int) {
		if err := sniff.Exclude(c, spec, ports); err != nil {
			s.log.Warn("capture filter not updated for the sessions' data ports", "ports", ports, "err", err)
		}
	})
}
