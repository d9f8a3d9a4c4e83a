package wire

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Clock is the time source of a Control, injectable so that tests need no sleeps.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer a Control uses.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
	Reset(d time.Duration) bool
}

// SystemClock is the real clock.
func SystemClock() Clock { return systemClock{} }

type systemClock struct{}

func (systemClock) Now() time.Time                 { return time.Now() }
func (systemClock) NewTimer(d time.Duration) Timer { return systemTimer{time.NewTimer(d)} }

type systemTimer struct{ t *time.Timer }

func (t systemTimer) C() <-chan time.Time        { return t.t.C }
func (t systemTimer) Stop() bool                 { return t.t.Stop() }
func (t systemTimer) Reset(d time.Duration) bool { return t.t.Reset(d) }

// Heartbeat defaults and bounds. The bounds keep a bad Hello from making the agent either spin or
// outlive a dead plugin by hours.
const (
	DefaultHeartbeatInterval = time.Second
	DefaultHeartbeatDeadline = 5 * time.Second
	minHeartbeatInterval     = 50 * time.Millisecond
	maxHeartbeatDeadline     = 5 * time.Minute
)

// ControlConfig configures a Control. Zero values mean the defaults.
type ControlConfig struct {
	// Role is which end this is, for error messages.
	Role Role
	// Version is this binary's version string, sent in the handshake.
	Version string
	// HeartbeatInterval is how often we send; HeartbeatDeadline is how long we wait for anything
	// from the peer before declaring it lost. On the agent, the plugin's Hello overrides both.
	HeartbeatInterval time.Duration
	HeartbeatDeadline time.Duration
	Clock             Clock
}

// Control runs one control channel: the handshake, then heartbeats both ways until the session ends.
// It reads from r and writes to w (the exec stream's stdout and stdin on the plugin, stdin and stdout
// on the agent).
type Control struct {
	r   io.Reader
	w   io.Writer
	cfg ControlConfig

	wmu        sync.Mutex
	wroteMagic bool
	readerOnce sync.Once
	frames     chan frameResult
	readerDone chan struct{}
	handshaken bool
	seq        uint64
	// heard is when Run last received a frame, in Unix nanoseconds (LastHeard).
	heard       atomic.Int64
	afterHandle func(FrameType) // test hook: runs in Run's goroutine after each frame
}

type frameResult struct {
	msg Message
	err error
}

// NewControl prepares a control channel; nothing is read or written until the handshake.
func NewControl(r io.Reader, w io.Writer, cfg ControlConfig) *Control {
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if cfg.HeartbeatDeadline <= 0 {
		cfg.HeartbeatDeadline = DefaultHeartbeatDeadline
	}
	if cfg.Clock == nil {
		cfg.Clock = SystemClock()
	}
	return &Control{r: r, w: w, cfg: cfg, frames: make(chan frameResult, 16), readerDone: make(chan struct{})}
}

// HeartbeatInterval and HeartbeatDeadline are the values in force (after a Hello on the agent).
func (c *Control) HeartbeatInterval() time.Duration { return c.cfg.HeartbeatInterval }
func (c *Control) HeartbeatDeadline() time.Duration { return c.cfg.HeartbeatDeadline }

// LastHeard is when Run last received a frame from the peer (zero before Run): a plugin that was
// stopped or asleep learns from it how long its session has really been without it.
func (c *Control) LastHeard() time.Time {
	if n := c.heard.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Send writes one message. Writes are serialized, and the first one is preceded by ControlMagic.
func (c *Control) Send(m Message) error {
	buf := make([]byte, 0, 256)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.wroteMagic {
		buf = append(buf, ControlMagic...)
	}
	buf, err := AppendFrame(buf, m)
	if err != nil {
		return err
	}
	if _, err := c.w.Write(buf); err != nil {
		return fmt.Errorf("control channel: write %v: %w", m.FrameType(), err)
	}
	c.wroteMagic = true
	return nil
}

// Bye tells the peer the session is over.
func (c *Control) Bye(reason string) error { return c.Send(Bye{Reason: reason}) }

// startReader runs the only goroutine that reads r. Reads cannot be canceled, so it lives until r
// fails; the caller closes the transport when it is done with the session.
func (c *Control) startReader() {
	c.readerOnce.Do(func() {
		go func() {
			defer close(c.readerDone)
			var magic [len(ControlMagic)]byte
			if _, err := io.ReadFull(c.r, magic[:]); err != nil {
				c.frames <- frameResult{err: c.readErr(err, true)}
				return
			}
			if string(magic[:]) != ControlMagic {
				c.frames <- frameResult{err: fmt.Errorf("control channel starts with %q, want %q (is the other end a trafficlab %s?): %w",
					magic[:], ControlMagic, c.peer(), ErrBadMagic)}
				return
			}
			for {
				m, err := ReadMessage(c.r)
				if err != nil {
					c.frames <- frameResult{err: c.readErr(err, false)}
					return
				}
				c.frames <- frameResult{msg: m}
			}
		}()
	})
}

func (c *Control) peer() Role {
	if c.cfg.Role == RoleAgent {
		return RolePlugin
	}
	return RoleAgent
}

func (c *Control) readErr(err error, first bool) error {
	if errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		if first {
			return fmt.Errorf("control channel closed before the %s said anything: %w", c.peer(), ErrPeerClosed)
		}
		return ErrPeerClosed
	}
	return fmt.Errorf("control channel: %w", err)
}

func (c *Control) next(ctx context.Context) (Message, error) {
	c.startReader()
	select {
	case f := <-c.frames:
		return f.msg, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Hello is the plugin's handshake: it sends h (Protocol and Version are filled in) and returns the
// agent's Welcome, or a *MismatchError that says which side to upgrade.
func (c *Control) Hello(ctx context.Context, h Hello) (Welcome, error) {
	h.Protocol = Protocol
	if h.Version == "" {
		h.Version = c.cfg.Version
	}
	if h.Options.HeartbeatInterval == 0 {
		h.Options.HeartbeatInterval = Millis(c.cfg.HeartbeatInterval)
	}
	if h.Options.HeartbeatDeadline == 0 {
		h.Options.HeartbeatDeadline = Millis(c.cfg.HeartbeatDeadline)
	}
	if err := c.Send(h); err != nil {
		return Welcome{}, err
	}
	m, err := c.next(ctx)
	if err != nil {
		return Welcome{}, fmt.Errorf("wait for the agent's welcome: %w", err)
	}
	switch m := m.(type) {
	case Welcome:
		if m.Protocol != Protocol {
			return Welcome{}, &MismatchError{Local: RolePlugin, LocalProtocol: Protocol, RemoteProtocol: m.Protocol, RemoteVersion: m.Version}
		}
		c.handshaken = true
		return m, nil
	case Error:
		if m.Code == CodeProtocolMismatch {
			return Welcome{}, &MismatchError{Local: RolePlugin, LocalProtocol: Protocol, RemoteProtocol: m.Protocol, RemoteVersion: m.Version}
		}
		return Welcome{}, fmt.Errorf("agent refused the session: %w", &RemoteError{Code: m.Code, Message: m.Message})
	}
	return Welcome{}, fmt.Errorf("expected welcome, got %v: %w", m.FrameType(), ErrMalformed)
}

// ReadHello is the agent's first half of the handshake. On a protocol mismatch it tells the plugin
// (with an Error frame carrying our protocol) and returns a *MismatchError. On success the Hello's
// heartbeat options take effect, clamped to sane bounds; the caller then calls Welcome.
func (c *Control) ReadHello(ctx context.Context) (Hello, error) {
	m, err := c.next(ctx)
	if err != nil {
		return Hello{}, fmt.Errorf("wait for the plugin's hello: %w", err)
	}
	h, ok := m.(Hello)
	if !ok {
		return Hello{}, fmt.Errorf("expected hello, got %v: %w", m.FrameType(), ErrMalformed)
	}
	if h.Protocol != Protocol {
		merr := &MismatchError{Local: RoleAgent, LocalProtocol: Protocol, RemoteProtocol: h.Protocol, RemoteVersion: h.Version}
		_ = c.Send(Error{Code: CodeProtocolMismatch, Message: merr.Error(), Protocol: Protocol, Version: c.cfg.Version})
		return Hello{}, merr
	}
	if d := h.Options.HeartbeatInterval.Std(); d > 0 {
		c.cfg.HeartbeatInterval = max(d, minHeartbeatInterval)
	}
	if d := h.Options.HeartbeatDeadline.Std(); d > 0 {
		c.cfg.HeartbeatDeadline = min(max(d, 2*c.cfg.HeartbeatInterval), maxHeartbeatDeadline)
	}
	return h, nil
}

// Welcome completes the agent's handshake. Protocol and Version are filled in.
func (c *Control) Welcome(w Welcome) error {
	w.Protocol = Protocol
	if w.Version == "" {
		w.Version = c.cfg.Version
	}
	if err := c.Send(w); err != nil {
		return err
	}
	c.handshaken = true
	return nil
}

// Run sends heartbeats and watches the peer until the session ends, and returns why: ErrBye (as a
// *ByeError) when the peer said goodbye, ErrPeerClosed at EOF, ErrPeerLost (as a *PeerLostError) when
// nothing arrived for the deadline, a *RemoteError for a peer's Error frame, or ctx's error. Loss is
// reported at the deadline exactly, measured from the last frame received, even if our own writes
// are stuck. Run does not close r or w; after it returns, close the transport to free the reader.
func (c *Control) Run(ctx context.Context) error {
	if !c.handshaken {
		return fmt.Errorf("control channel: run before handshake: %w", ErrInternal)
	}
	clk := c.cfg.Clock
	interval, deadline := c.cfg.HeartbeatInterval, c.cfg.HeartbeatDeadline
	c.startReader()

	// Heartbeats go out from their own goroutine so that a write blocked on a cut network cannot
	// delay the deadline check below.
	beat := make(chan struct{}, 1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-beat:
				c.seq++
				if err := c.Send(Heartbeat{Seq: c.seq}); err != nil {
					return // the reader or the deadline will report the failure
				}
			case <-stop:
				return
			}
		}
	}()

	last := clk.Now()
	c.heard.Store(last.UnixNano())
	hb := clk.NewTimer(interval)
	defer hb.Stop()
	dl := clk.NewTimer(deadline)
	defer dl.Stop()
	handle := func(f frameResult) error {
		if f.err != nil {
			return f.err
		}
		last = clk.Now()
		c.heard.Store(last.UnixNano())
		var err error
		switch m := f.msg.(type) {
		case Heartbeat:
		case Bye:
			err = &ByeError{Reason: m.Reason}
		case Error:
			err = &RemoteError{Code: m.Code, Message: m.Message}
		default:
			err = fmt.Errorf("unexpected %v on the control channel: %w", m.FrameType(), ErrMalformed)
		}
		if c.afterHandle != nil {
			c.afterHandle(f.msg.FrameType())
		}
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case f := <-c.frames:
			if err := handle(f); err != nil {
				return err
			}
		case <-hb.C():
			select {
			case beat <- struct{}{}:
			default: // the previous heartbeat is still being written
			}
			hb.Reset(interval)
		case <-dl.C():
			// A frame that arrived before the timer fired counts, even if select chose the timer.
			for drained := false; !drained; {
				select {
				case f := <-c.frames:
					if err := handle(f); err != nil {
						return err
					}
				default:
					drained = true
				}
			}
			silence := clk.Now().Sub(last)
			if silence >= deadline {
				return &PeerLostError{Silence: silence, Deadline: deadline}
			}
			dl.Reset(deadline - silence)
		}
	}
}
