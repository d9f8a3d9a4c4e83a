// Package tunnel is the plugin's end of a tunnel to one agent (the session's attachment there): it execs `trafficlab-agent attach`
// for the control channel, opens data connections to the port the agent names, and hands out streams
// that dial from the pod. It sees the cluster only through two one-method interfaces, so the whole
// session runs in tests over in-memory pipes.
package tunnel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// ControlStarter starts the agent's session process and connects its stdin and stdout; it returns when
// the process ends. In the plugin it is an exec into the agent container.
type ControlStarter interface {
	StartControl(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer) error
}

// DataOpener opens one byte stream to 127.0.0.1:port inside the pod: a port-forward stream, or an exec
// relay when port-forward is not allowed.
type DataOpener interface {
	OpenData(ctx context.Context, port int) (io.ReadWriteCloser, error)
}

// Config is what Connect needs.
type Config struct {
	// Control and Data reach the agent; the tunnel calls them again for each reconnect.
	Control ControlStarter
	Data    DataOpener
	// DataConns is how many data connections carry streams; more than one spreads the kubelet's and
	// apiserver's per-connection work over cores. Zero means 1.
	DataConns int
	Version   string
	Tunnel    wire.MuxConfig
	// HeartbeatInterval and HeartbeatDeadline bound how long a cut network goes unnoticed.
	HeartbeatInterval time.Duration
	HeartbeatDeadline time.Duration
	// Compression is offered on TCP streams, best first; nil offers none.
	Compression []wire.Compression
	// HandshakeTimeout bounds the exec start, the Hello and each data preamble.
	HandshakeTimeout time.Duration
	// AgentLog, when set, also receives everything the agent's session process writes to stderr
	// (its log), for -v debugging.
	AgentLog io.Writer
	// User and Host are who runs the session and where, told to the agent for `kubectl trafficlab
	// sessions` (wire.SessionOptions).
	User, Host string
	// ReconnectGrace asks the agent to keep the session this long after the tunnel is lost, and the
	// tunnel then reconnects by itself (new exec, new data connections) and resumes the session. 0:
	// a lost tunnel ends the session.
	ReconnectGrace time.Duration
	// Notify, when set, hears the tunnel go and come back (Event).
	Notify func(Event)
	// RetryMin and RetryMax bound the wait between two reconnect attempts, which doubles from the
	// first to the second; 250 ms and 5 s when zero.
	RetryMin, RetryMax time.Duration
}

// EventKind says what happened to the tunnel.
type EventKind int

// What Notify hears.
const (
	// Reconnecting: the tunnel is lost (Err says how) and is being made again.
	Reconnecting EventKind = iota + 1
	// Reconnected: the session resumed after Away.
	Reconnected
	// Forgotten: the agent no longer has the session (past its grace); the tunnel has ended with
	// ErrForgotten.
	Forgotten
)

// Event is a change of the tunnel's state.
type Event struct {
	Kind EventKind
	// Err is why the tunnel was lost (Reconnecting).
	Err error
	// Away is how long the session was without its tunnel (Reconnected, Forgotten).
	Away time.Duration
	// Grace is the reconnect grace the agent adopted.
	Grace time.Duration
}

// ErrForgotten ends a tunnel whose agent no longer has its session when it reconnects.
var ErrForgotten = errors.New("the agent forgot the session")

// ForgottenError says for how long the session was away before the agent forgot it. Its text is
// the one line the user needs; Cause (the agent's refusal, or the last failed attempt past the
// grace) is logged at -v=2.
type ForgottenError struct {
	Grace time.Duration
	Cause error
}

func (e *ForgottenError) Error() string {
	return fmt.Sprintf("the agent forgot the session after %s away; start it again", e.Grace)
}

// Is matches ErrForgotten.
func (e *ForgottenError) Is(target error) bool { return target == ErrForgotten }

// Unwrap is the cause.
func (e *ForgottenError) Unwrap() error { return e.Cause }

// Tunnel is the live connection of a session to one agent: the control channel and its data
// connections (a link), each carrying a wire.Mux. A resumable tunnel replaces a lost link with a new
// one on the same session.
type Tunnel struct {
	cfg     Config
	welcome wire.Welcome
	// grace and token are the agent's answer to the reconnect grace asked for: zero, nil when it
	// keeps nothing.
	grace  time.Duration
	token  *wire.Secret
	stderr *tailBuffer

	mu   sync.Mutex
	cur  *link         // nil while reconnecting
	up   chan struct{} // closed once cur is set; replaced when it is lost
	next int

	acceptMu  sync.Mutex
	accepting bool
	incoming  chan *wire.Incoming

	runCtx  context.Context
	cancel  context.CancelFunc
	done    chan struct{}
	err     error
	closing sync.Once
	// closed is set first thing in Close: the link it then takes down is not lost, and is not
	// made again.
	closed atomic.Bool
	// pinned is set once a stream that cannot resume (a dump's) runs: the session then
	// ends with its link, as it would without a grace, rather than go on without it.
	pinned atomic.Bool
	// writeInterval is SetWriteInterval's, which a new link's data connections take too.
	writeInterval atomic.Int64
}

// link is one control channel and the data connections opened with it.
type link struct {
	ctrl     *wire.Control
	stdin    *io.PipeWriter
	muxes    []*wire.Mux
	cancel   context.CancelFunc // ends the exec
	execDone chan struct{}      // closed when the exec'd session process has ended
}

// close cuts the link at once; graceful only closes stdin, so that the agent's relay exits and
// the exec stream ends cleanly.
func (l *link) close(graceful bool) {
	for _, t := range l.muxes {
		t.Close()
	}
	l.stdin.Close()
	if !graceful {
		l.cancel()
	}
}

// Connect starts the agent's attachment and the tunnel's data connections. On error nothing is left running.
func Connect(ctx context.Context, cfg Config) (*Tunnel, error) {
	if cfg.DataConns <= 0 {
		cfg.DataConns = 1
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 30 * time.Second
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 250 * time.Millisecond
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 5 * time.Second
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c := &Tunnel{cfg: cfg, stderr: &tailBuffer{max: 4 << 10}, runCtx: runCtx, cancel: cancel, done: make(chan struct{}), up: make(chan struct{})}
	l, w, err := c.dial(ctx, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	c.welcome = w
	if w.ResumeToken != nil {
		c.token, c.grace = w.ResumeToken, w.ReconnectGrace.Std()
	}
	c.setLink(l)
	go c.run(l)
	return c, nil
}

// dial makes a link: the exec'd attachment, the Hello (resuming the session when r is set) and the
// data connections. On error nothing of it is left running.
func (c *Tunnel) dial(ctx context.Context, r *wire.Resume) (*link, wire.Welcome, error) {
	secret, err := wire.NewSecret()
	if err != nil {
		return nil, wire.Welcome{}, err
	}
	execCtx, cancel := context.WithCancel(c.runCtx)
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	l := &link{stdin: inW, cancel: cancel, execDone: make(chan struct{})}
	go func() {
		var stderr io.Writer = c.stderr
		if c.cfg.AgentLog != nil {
			stderr = io.MultiWriter(c.stderr, c.cfg.AgentLog)
		}
		err := c.cfg.Control.StartControl(execCtx, inR, outW, stderr)
		if err == nil {
			err = io.EOF
		}
		outW.CloseWithError(err)
		inR.CloseWithError(err)
		close(l.execDone)
	}()
	l.ctrl = wire.NewControl(outR, inW, wire.ControlConfig{
		Role: wire.RolePlugin, Version: c.cfg.Version,
		HeartbeatInterval: c.cfg.HeartbeatInterval, HeartbeatDeadline: c.cfg.HeartbeatDeadline,
	})
	fail := func(err error) (*link, wire.Welcome, error) {
		l.close(false)
		return nil, wire.Welcome{}, err
	}
	hctx, hcancel := context.WithTimeout(ctx, c.cfg.HandshakeTimeout)
	defer hcancel()
	w, err := l.ctrl.Hello(hctx, wire.Hello{
		Secret: secret, DataConns: c.cfg.DataConns, Resume: r,
		Options: wire.SessionOptions{ReconnectGrace: wire.Millis(c.cfg.ReconnectGrace), User: c.cfg.User, Host: c.cfg.Host},
	})
	if err != nil {
		return fail(c.withAgentOutput(fmt.Errorf("agent session: %w", err)))
	}
	for range c.cfg.DataConns {
		t, err := c.openTunnel(hctx, w, secret)
		if err != nil {
			return fail(err)
		}
		l.muxes = append(l.muxes, t)
	}
	return l, w, nil
}

// openTunnel opens one data connection, by port-forward or the exec relay (whichever DataOpener
// is), and runs the handshake on it: TLS pinned to the key the Welcome named, then the secret.
func (c *Tunnel) openTunnel(ctx context.Context, w wire.Welcome, secret wire.Secret) (*wire.Mux, error) {
	rwc, err := c.cfg.Data.OpenData(ctx, w.DataPort)
	if err != nil {
		return nil, fmt.Errorf("open data connection to the agent's port %d: %w", w.DataPort, err)
	}
	t, err := wire.ClientTunnel(ctx, rwc, w.DataKeyPin, secret, c.cfg.Tunnel)
	if err != nil {
		return nil, fmt.Errorf("data connection handshake: %w", err)
	}
	return t, nil
}

// setLink makes l the live link: streams wait for it no more, and the agent's streams on it are
// accepted.
func (c *Tunnel) setLink(l *link) {
	if d := time.Duration(c.writeInterval.Load()); d > 0 {
		for _, t := range l.muxes {
			t.SetWriteInterval(d)
		}
	}
	c.mu.Lock()
	c.cur = l
	close(c.up)
	c.mu.Unlock()
	c.acceptMu.Lock()
	defer c.acceptMu.Unlock()
	if c.accepting {
		c.acceptOn(l)
	}
}

// dropLinkIf marks the tunnel as reconnecting if l is its live link: new streams wait for the next
// one.
func (c *Tunnel) dropLinkIf(l *link) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == l {
		c.cur = nil
		c.up = make(chan struct{})
	}
}

// resumable says whether a lost link is made again rather than ending the session.
func (c *Tunnel) resumable() bool { return c.token != nil && c.grace > 0 && !c.pinned.Load() }

// run watches the links: a lost one ends the session, or in a resumable session is made again
// until the agent resumes the session or says it forgot it.
func (c *Tunnel) run(l *link) {
	for {
		err := c.watch(l)
		if c.runCtx.Err() != nil || c.closed.Load() {
			return // Close
		}
		if !c.resumable() || errors.Is(err, wire.ErrBye) {
			c.shutdown(err, false)
			return
		}
		c.dropLinkIf(l)
		// Away since the agent was last heard from: a plugin stopped or asleep notices the loss only
		// when it runs again.
		lost := l.ctrl.LastHeard()
		if lost.IsZero() {
			lost = time.Now()
		}
		c.notify(Event{Kind: Reconnecting, Err: err, Grace: c.grace})
		// The old link's control stream stays open until the new one has resumed the session: an
		// agent takes the clean end of a session's exec stream for the plugin's end (a crash), and
		// a resume takes over a stream the agent still holds.
		old := l
		l, err = c.reconnect(lost)
		old.close(false)
		if err != nil {
			if errors.Is(err, ErrForgotten) {
				klog.V(2).InfoS("the agent forgot the session", "cause", errors.Unwrap(err))
				c.notify(Event{Kind: Forgotten, Away: time.Since(lost), Grace: c.grace})
			}
			c.shutdown(err, false)
			return
		}
		if c.closed.Load() {
			l.close(false)
			return
		}
		c.setLink(l)
		c.notify(Event{Kind: Reconnected, Away: time.Since(lost), Grace: c.grace})
	}
}

func (c *Tunnel) notify(e Event) {
	if c.cfg.Notify != nil {
		c.cfg.Notify(e)
	}
}

// watch returns why link l is lost: its control channel's end (heartbeat loss, EOF, Bye), the loss
// of a data connection in a resumable session (the streams on it are gone: resuming makes all of
// them again), or of every data connection otherwise.
func (c *Tunnel) watch(l *link) error {
	ctx, cancel := context.WithCancel(c.runCtx)
	defer cancel()
	lost := make(chan struct{})
	go func() {
		if c.resumable() {
			cases := make([]<-chan struct{}, 0, len(l.muxes))
			for _, t := range l.muxes {
				cases = append(cases, t.Done())
			}
			if waitAny(ctx, cases) {
				close(lost)
			}
			return
		}
		for _, t := range l.muxes {
			select {
			case <-t.Done():
			case <-ctx.Done():
				return
			}
		}
		close(lost)
	}()
	ctrlDone := make(chan error, 1)
	go func() { ctrlDone <- l.ctrl.Run(ctx) }()
	select {
	case err := <-ctrlDone:
		return c.withAgentOutput(fmt.Errorf("agent session ended: %w", err))
	case <-lost:
		if c.resumable() {
			return errors.New("a data connection to the agent is closed")
		}
		return errors.New("agent session ended: every data connection to the agent is closed")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitAny waits for the first of chans to close (true) or for ctx (false).
func waitAny(ctx context.Context, chans []<-chan struct{}) bool {
	first := make(chan struct{}, len(chans))
	for _, ch := range chans {
		go func() {
			select {
			case <-ch:
				first <- struct{}{}
			case <-ctx.Done():
			}
		}()
	}
	select {
	case <-first:
		return true
	case <-ctx.Done():
		return false
	}
}

// reconnect makes a new link that resumes the session, trying again with backoff until the agent
// resumes it, says it no longer has it, or the grace (counted from lost, plus the heartbeat
// deadline by which the agent notices) is over.
func (c *Tunnel) reconnect(lost time.Time) (*link, error) {
	giveUp := lost.Add(c.grace + c.heartbeatDeadline())
	wait := c.cfg.RetryMin
	resume := &wire.Resume{SessionID: c.welcome.SessionID, Token: *c.token}
	for {
		if c.closed.Load() {
			return nil, errClosed
		}
		l, w, err := c.dial(c.runCtx, resume)
		if err == nil && w.SessionID != c.welcome.SessionID {
			l.close(false)
			return nil, fmt.Errorf("the agent resumed session %q instead of %q: %w", w.SessionID, c.welcome.SessionID, wire.ErrMalformed)
		}
		if err == nil {
			return l, nil
		}
		if errors.Is(err, wire.ErrSessionGone) {
			return nil, &ForgottenError{Grace: c.grace, Cause: err}
		}
		if c.runCtx.Err() != nil {
			return nil, c.runCtx.Err()
		}
		if !time.Now().Add(wait).Before(giveUp) {
			return nil, &ForgottenError{Grace: c.grace, Cause: err}
		}
		klog.V(2).InfoS("reconnect to the agent failed, trying again", "in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-c.runCtx.Done():
			t.Stop()
			return nil, c.runCtx.Err()
		}
		wait = min(2*wait, c.cfg.RetryMax)
	}
}

// withAgentOutput adds the last line the agent printed, which usually says why it stopped.
func (c *Tunnel) withAgentOutput(err error) error {
	if line := c.stderr.lastLine(); line != "" {
		return fmt.Errorf("%w (agent: %s)", err, line)
	}
	return err
}

// shutdown ends the session and, unless graceful, the exec stream at once. A graceful end (Close)
// only closes stdin, so that the agent exits and the exec stream ends cleanly; cutting it under a
// reading client-go stream makes client-go log errors the user should not see.
func (c *Tunnel) shutdown(err error, graceful bool) {
	c.closing.Do(func() {
		c.mu.Lock()
		l := c.cur
		c.mu.Unlock()
		c.err = err
		if l != nil {
			l.close(graceful)
		}
		if !graceful {
			c.cancel()
		}
		close(c.done)
	})
}

// Welcome is what the agent said about itself when the session started.
func (c *Tunnel) Welcome() wire.Welcome { return c.welcome }

// ReconnectGrace is how long the agent keeps the session without its tunnel (0: not at all).
func (c *Tunnel) ReconnectGrace() time.Duration { return c.grace }

// Done is closed when the session has ended; Err then says why.
func (c *Tunnel) Done() <-chan struct{} { return c.done }

// Err is why the session ended, nil while it runs.
func (c *Tunnel) Err() error {
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}

// SetWriteInterval spaces the writes of every data connection (wire.Mux.SetWriteInterval), those of
// a later link too.
func (c *Tunnel) SetWriteInterval(d time.Duration) {
	c.writeInterval.Store(int64(d))
	c.mu.Lock()
	l := c.cur
	c.mu.Unlock()
	if l == nil {
		return
	}
	for _, t := range l.muxes {
		t.SetWriteInterval(d)
	}
}

// Close says goodbye, so the agent releases the session at once instead of at the heartbeat deadline
// (or past its grace), and waits (bounded) for the agent's session process to exit.
func (c *Tunnel) Close() error {
	c.closed.Store(true)
	alive := c.Err() == nil
	c.mu.Lock()
	l := c.cur
	c.mu.Unlock()
	// A session closed while it reconnects has no channel to say goodbye on: the agent forgets it
	// past its grace.
	if l != nil {
		// Data first: a goodbye first would make the agent drop the data connections under our last
		// writes, and an exec data path would log the failed write.
		for _, t := range l.muxes {
			t.Close()
		}
		if alive {
			_ = l.ctrl.Bye("plugin closed the session")
		}
	}
	c.shutdown(errClosed, true)
	if l != nil {
		select {
		case <-l.execDone:
		case <-time.After(5 * time.Second):
		}
	}
	c.cancel()
	return nil
}

var errClosed = errors.New("session closed")

// Dial opens a stream through which the agent dials address from the pod. While the tunnel
// reconnects it waits for it, at most until ctx ends or the session does.
func (c *Tunnel) Dial(ctx context.Context, network, address string) (io.ReadWriteCloser, error) {
	req := wire.OpenRequest{Kind: wire.KindDial, Network: network, Address: address}
	if network == wire.NetworkTCP {
		req.Compression = c.cfg.Compression
	}
	s, _, err := c.open(ctx, req)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Steal asks the agent to steal; the returned stream carries the steal's events and ending it (Close)
// ends the steal. The agent answers only once its redirect is in place. In a resumable session the
// stream outlives a reconnect: it is opened again on the new link, and the agent's steal goes on.
func (c *Tunnel) Steal(ctx context.Context, spec wire.StealSpec) (wire.VerbStream, error) {
	return c.openVerb(ctx, wire.OpenRequest{Kind: wire.KindSteal, Steal: &spec})
}

// openVerb opens a verb's own stream (a steal's or a mirror's), which in a resumable session is
// opened again on each new link.
func (c *Tunnel) openVerb(ctx context.Context, req wire.OpenRequest) (wire.VerbStream, error) {
	s, l, err := c.open(ctx, req)
	if err != nil {
		return nil, err
	}
	if !c.resumable() {
		return s, nil
	}
	return newResumingStream(c, req, s, l), nil
}

// Dump asks the agent to capture; the returned stream carries the capture as pcapng. CloseWrite ends
// the capture: the agent then writes its packet counts and closes its side. A capture cannot
// resume (its pcapng stream would have a hole), so a session with one ends with its link.
func (c *Tunnel) Dump(ctx context.Context, spec wire.DumpSpec) (*wire.Stream, error) {
	c.pinned.Store(true)
	s, _, err := c.open(ctx, wire.OpenRequest{Kind: wire.KindDump, Dump: &spec})
	return s, err
}

// Mirror asks the agent to mirror; the agent then opens a KindMirrored stream per copied
// connection. Ending the returned stream ends the mirror; its last line is the agent's counts. In
// a resumable session the stream outlives a reconnect, as a steal's does: it is opened again on
// the new link, and the agent's mirror goes on (dropping and counting the copies meanwhile).
func (c *Tunnel) Mirror(ctx context.Context, spec wire.MirrorSpec) (wire.VerbStream, error) {
	return c.openVerb(ctx, wire.OpenRequest{Kind: wire.KindMirror, Mirror: &spec})
}

// Accept waits for a stream the agent opened (a stolen connection), on any data connection of any
// link. The first call starts accepting; before it, the agent's streams wait in yamux's backlog.
func (c *Tunnel) Accept(ctx context.Context) (*wire.Incoming, error) {
	c.acceptMu.Lock()
	if !c.accepting {
		c.accepting = true
		c.incoming = make(chan *wire.Incoming)
		c.mu.Lock()
		l := c.cur
		c.mu.Unlock()
		if l != nil {
			c.acceptOn(l)
		}
	}
	c.acceptMu.Unlock()
	select {
	case in := <-c.incoming:
		return in, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.done:
		return nil, c.err
	}
}

// acceptOn accepts the agent's streams on l's data connections until they close. Called with
// acceptMu held and accepting set.
func (c *Tunnel) acceptOn(l *link) {
	for _, t := range l.muxes {
		go func() {
			for {
				in, err := t.Accept(context.Background())
				if err != nil {
					return
				}
				select {
				case c.incoming <- in:
				case <-c.done:
					_ = in.Reject(wire.ErrSessionClosed)
					return
				}
			}
		}()
	}
}

// waitLink returns the live link, waiting while the tunnel reconnects, until ctx or the session ends.
func (c *Tunnel) waitLink(ctx context.Context) (*link, error) {
	for {
		c.mu.Lock()
		l, up := c.cur, c.up
		c.mu.Unlock()
		if l != nil {
			return l, nil
		}
		select {
		case <-up:
		case <-ctx.Done():
			return nil, fmt.Errorf("the tunnel to the agent is reconnecting: %w", ctx.Err())
		case <-c.done:
			if err := c.Err(); err != nil {
				return nil, err
			}
			return nil, wire.ErrSessionClosed
		}
	}
}

// open opens a stream of any kind on the least loaded data connection of the live link, waiting for
// it while the tunnel reconnects. In a resumable session an open that fails because its data
// connection has just gone (the link is lost, which run has not seen yet) waits for the next link.
func (c *Tunnel) open(ctx context.Context, req wire.OpenRequest) (*wire.Stream, *wire.Mux, error) {
	for {
		if err := c.Err(); err != nil {
			return nil, nil, err
		}
		l, err := c.waitLink(ctx)
		if err != nil {
			return nil, nil, err
		}
		c.mu.Lock()
		t := wire.LeastLoaded(l.muxes, c.next)
		c.next++
		c.mu.Unlock()
		if t == nil {
			// Every data connection of the link is closed: the link is lost, and a resumable
			// session waits for the next one, as an open that fails on a closed one does.
			if c.resumable() && ctx.Err() == nil {
				c.dropLinkIf(l)
				continue
			}
			return nil, nil, wire.ErrSessionClosed
		}
		s, err := t.Open(ctx, req)
		if err != nil && c.resumable() && ctx.Err() == nil && muxGoing(ctx, t, err, c.heartbeatDeadline()) {
			c.dropLinkIf(l)
			continue
		}
		return s, t, err
	}
}

// heartbeatDeadline is the configured deadline, or the wire default.
func (c *Tunnel) heartbeatDeadline() time.Duration {
	if d := c.cfg.HeartbeatDeadline; d > 0 {
		return d
	}
	return wire.DefaultHeartbeatDeadline
}

// muxGoing says whether an open that failed with err failed because its data connection is going.
// The agent's answer (a RemoteError) is final. Any other error may be the first sign of a cut
// connection: yamux hands a failed write to the stream before it closes the session, so an open
// that races the cut can fail while Done is still open, and would end a local connection that
// should have waited for the next link. The mux is given up to within to show it is closing; a
// live one that refused a stream is left as it is.
func muxGoing(ctx context.Context, t *wire.Mux, err error, within time.Duration) bool {
	if closed(t.Done()) {
		return true
	}
	if _, ok := errors.AsType[*wire.RemoteError](err); ok || errors.Is(err, wire.ErrMalformed) {
		return false
	}
	timer := time.NewTimer(within)
	defer timer.Stop()
	select {
	case <-t.Done():
		return true
	case <-timer.C:
		return false
	case <-ctx.Done():
		return false
	}
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// tailBuffer keeps the last bytes the agent wrote to stderr.
type tailBuffer struct {
	mu  sync.Mutex
	b   []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

// refusedLine marks the agent's count of refused data connections, which anything in the pod can
// cause and which therefore never explains the session's end.
var refusedLine = "msg=" + strconv.Quote(wire.LogDataConnsRefused)

// lastLine is the agent's last word that is not routine: its INFO lines say nothing about a failure,
// and its count of refused data connections is the pod's noise, not the agent's.
func (t *tailBuffer) lastLine() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := bytes.Split(bytes.TrimSpace(t.b), []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(string(lines[i]))
		if l != "" && !strings.Contains(l, "level=INFO") && !strings.Contains(l, "level=DEBUG") && !strings.Contains(l, refusedLine) {
			return l
		}
	}
	return ""
}
