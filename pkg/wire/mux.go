package wire

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// MuxConfig tunes the yamux session both ends run on a data connection.
type MuxConfig struct {
	// KeepAliveInterval is how often yamux pings; a ping that gets no answer within WriteTimeout
	// closes the session. The control channel's heartbeat is what notices a lost peer quickly; this
	// only reaps data connections that port-forward left half-dead.
	KeepAliveInterval time.Duration
	// WriteTimeout bounds one write to the connection before yamux gives up on it.
	WriteTimeout time.Duration
	// StreamWindow is the most one stream may have in flight unread. It is the back-pressure bound per
	// stream (memory) and the throughput bound per stream (window / round-trip time).
	StreamWindow uint32
	// AcceptBacklog is how many opened streams may wait for Accept before new ones are reset.
	AcceptBacklog int
	// OpenTimeout bounds the open handshake of one stream (request to reply).
	OpenTimeout time.Duration
	// Log receives yamux's own diagnostics. Nil means io.Discard. Never pass os.Stdout: on the agent,
	// stdout is the control channel.
	Log io.Writer
}

// DefaultMuxConfig is tuned for port-forward: a 4 MiB window carries ~400 MiB/s per stream at a
// 10 ms round trip, and a thousand idle streams still cost nothing because yamux buffers lazily.
func DefaultMuxConfig() MuxConfig {
	return MuxConfig{
		KeepAliveInterval: 15 * time.Second,
		WriteTimeout:      30 * time.Second,
		StreamWindow:      4 << 20,
		AcceptBacklog:     1024,
		OpenTimeout:       30 * time.Second,
	}
}

// PluginStreamWindow is the plugin's stream window, larger than DefaultMuxConfig's: a receive
// window is what the peer may have in flight towards us, and the apiserver, kubelet and runtime
// proxies on the way buffer several MiB. Measured on the local cluster: 4 MiB ~185 MiB/s, 16 MiB
// ~220 MiB/s for one download stream. The memory is the developer's, not the pod's; the agent keeps
// the default for uploads.
const PluginStreamWindow = 16 << 20

func (c MuxConfig) yamux() *yamux.Config {
	d := DefaultMuxConfig()
	if c.KeepAliveInterval <= 0 {
		c.KeepAliveInterval = d.KeepAliveInterval
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = d.WriteTimeout
	}
	if c.StreamWindow < 256<<10 {
		c.StreamWindow = d.StreamWindow
	}
	if c.AcceptBacklog <= 0 {
		c.AcceptBacklog = d.AcceptBacklog
	}
	log := c.Log
	if log == nil {
		log = io.Discard
	}
	return &yamux.Config{
		AcceptBacklog:          c.AcceptBacklog,
		EnableKeepAlive:        true,
		KeepAliveInterval:      c.KeepAliveInterval,
		ConnectionWriteTimeout: c.WriteTimeout,
		MaxStreamWindowSize:    c.StreamWindow,
		StreamOpenTimeout:      c.WriteTimeout,
		// Zero: yamux would reset the stream when the peer has not closed within the timeout, and
		// the peer closes only once its reader has drained our last bytes, so any timeout would
		// destroy the tail of a transfer to a slow consumer. Our framing tells a finish from an
		// abort instead, and the session's end reaps whatever a broken peer leaves behind.
		StreamCloseTimeout: 0,
		LogOutput:          log,
	}
}

// Mux is one yamux session over one data connection. Either end may open streams: the plugin
// opens dial, steal, dump and mirror streams, the agent incoming and mirrored ones.
type Mux struct {
	mux      *yamux.Session
	batcher  *batcher
	codecs   *codecs
	openTO   time.Duration
	incoming chan *Incoming
	done     chan struct{}
	once     sync.Once
	acceptWG sync.WaitGroup
}

// Client starts the plugin's end of a mux on the data connection conn, after ClientPreamble succeeded on it.
func Client(conn io.ReadWriteCloser, cfg MuxConfig) (*Mux, error) {
	b := newBatcher(conn)
	m, err := yamux.Client(newCoalescer(b), cfg.yamux())
	if err != nil {
		return nil, fmt.Errorf("start tunnel client: %w", err)
	}
	return newMux(m, b, cfg), nil
}

// Server starts the agent's end of a mux on the data connection conn, after ServerPreamble succeeded on it.
func Server(conn io.ReadWriteCloser, cfg MuxConfig) (*Mux, error) {
	b := newBatcher(conn)
	m, err := yamux.Server(newCoalescer(b), cfg.yamux())
	if err != nil {
		return nil, fmt.Errorf("start tunnel server: %w", err)
	}
	return newMux(m, b, cfg), nil
}

func newMux(m *yamux.Session, b *batcher, cfg MuxConfig) *Mux {
	openTO := cfg.OpenTimeout
	if openTO <= 0 {
		openTO = DefaultMuxConfig().OpenTimeout
	}
	backlog := cfg.AcceptBacklog
	if backlog <= 0 {
		backlog = DefaultMuxConfig().AcceptBacklog
	}
	s := &Mux{
		mux:      m,
		batcher:  b,
		codecs:   newCodecs(),
		openTO:   openTO,
		incoming: make(chan *Incoming, backlog),
		done:     make(chan struct{}),
	}
	s.acceptWG.Add(1)
	go s.acceptLoop()
	return s
}

// acceptLoop reads each new stream's open request in its own goroutine, so one slow opener cannot
// hold up the others.
func (s *Mux) acceptLoop() {
	defer s.acceptWG.Done()
	for {
		ys, err := s.mux.AcceptStream()
		if err != nil {
			return
		}
		go s.readOpen(ys)
	}
}

func (s *Mux) readOpen(ys *yamux.Stream) {
	_ = ys.SetReadDeadline(time.Now().Add(s.openTO))
	msg, err := ReadMessage(ys)
	_ = ys.SetReadDeadline(time.Time{})
	if err != nil {
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !isTimeout(err) {
			// The request arrived but is wrong: say why, for the opener's error message.
			_ = WriteMessage(ys, OpenReply{Code: replyCode(err), Message: err.Error()})
		}
		_ = ys.Close()
		return
	}
	req, ok := msg.(OpenRequest)
	if !ok {
		_ = WriteMessage(ys, OpenReply{Code: CodeBadRequest, Message: fmt.Sprintf("expected an open request, got %v", msg.FrameType())})
		_ = ys.Close()
		return
	}
	in := &Incoming{ys: ys, req: req, sess: s}
	select {
	case s.incoming <- in:
	case <-s.done:
		_ = ys.Close()
	case <-s.mux.CloseChan():
		_ = ys.Close()
	}
}

func replyCode(err error) Code {
	c := CodeFor(err)
	if c == CodeInternal && errors.Is(err, ErrMalformed) {
		return CodeBadRequest
	}
	return c
}

// Open opens a stream, sends req and waits for the peer's reply. A refusal comes back as a
// *RemoteError, so errors.Is(err, ErrRefused) and the like work. ctx bounds the whole handshake.
func (s *Mux) Open(ctx context.Context, req OpenRequest) (*Stream, error) {
	if err := req.validate(); err != nil {
		return nil, err
	}
	ys, err := s.mux.OpenStream()
	if err != nil {
		if s.mux.IsClosed() {
			return nil, ErrSessionClosed
		}
		return nil, fmt.Errorf("open stream: %w", err)
	}
	deadline := time.Now().Add(s.openTO)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = ys.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = ys.SetDeadline(time.Unix(1, 0)) })
	reply, err := s.openHandshake(ys, req)
	if !stop() {
		err = ctx.Err()
	}
	if err != nil {
		_ = ys.Close()
		return nil, err
	}
	_ = ys.SetDeadline(time.Time{})
	return newStream(ys, reply.Compression, s.codecs, req), nil
}

func (s *Mux) openHandshake(ys *yamux.Stream, req OpenRequest) (OpenReply, error) {
	if err := WriteMessage(ys, req); err != nil {
		return OpenReply{}, fmt.Errorf("open %s %s %q: %w", req.Kind, req.Network, req.Address, err)
	}
	msg, err := ReadMessage(ys)
	if err != nil {
		return OpenReply{}, fmt.Errorf("open %s %s %q: read reply: %w", req.Kind, req.Network, req.Address, err)
	}
	reply, ok := msg.(OpenReply)
	if !ok {
		return OpenReply{}, fmt.Errorf("open %s %s %q: got %v instead of a reply: %w", req.Kind, req.Network, req.Address, msg.FrameType(), ErrMalformed)
	}
	if reply.Code != CodeOK {
		code := reply.Code
		if code >= codeMax {
			code = CodeInternal
		}
		return OpenReply{}, &RemoteError{Code: code, Message: reply.Message}
	}
	if reply.Compression != CompressionNone && !contains(req.Compression, reply.Compression) {
		return OpenReply{}, fmt.Errorf("peer chose codec %q that was not offered: %w", reply.Compression, ErrMalformed)
	}
	return reply, nil
}

func contains(list []Compression, c Compression) bool {
	for _, x := range list {
		if x == c {
			return true
		}
	}
	return false
}

// Accept waits for the peer to open a stream and returns its request, which the caller must answer
// with Incoming.Accept or Incoming.Reject.
func (s *Mux) Accept(ctx context.Context) (*Incoming, error) {
	select {
	case in := <-s.incoming:
		return in, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.mux.CloseChan():
		return nil, ErrSessionClosed
	case <-s.done:
		return nil, ErrSessionClosed
	}
}

// Ping measures the round trip over the data connection.
func (s *Mux) Ping() (time.Duration, error) { return s.mux.Ping() }

// NumStreams is how many streams are open, for metrics and pool balancing.
func (s *Mux) NumStreams() int { return s.mux.NumStreams() }

// LeastLoaded returns the open session with the fewest open streams, nil when none is open. Among
// equally loaded ones the first counting from index start wins (wrapping around), so a caller that
// advances start on every pick spreads short-lived streams round-robin instead of piling them on
// the first connection. Both ends spread their streams with it: the plugin its dials, the agent
// its stolen and mirrored connections.
func LeastLoaded(sessions []*Mux, start int) *Mux {
	if len(sessions) == 0 {
		return nil
	}
	start %= len(sessions)
	if start < 0 {
		start += len(sessions)
	}
	var best *Mux
	bestN := 0
	for i := range sessions {
		s := sessions[(start+i)%len(sessions)]
		if s.IsClosed() {
			continue
		}
		if n := s.NumStreams(); best == nil || n < bestN {
			best, bestN = s, n
		}
	}
	return best
}

// Done is closed when the session ends, for whatever reason.
func (s *Mux) Done() <-chan struct{} { return s.mux.CloseChan() }

// SetWriteInterval sets the least time between two writes to the data connection; the frames that
// come meanwhile share the next write. Every write is a message that each hop of the port-forward
// chain handles, so many small frames a second (a mirror's copies and their answers) cost the
// apiserver, the kubelet and the runtime far less as fewer, larger writes, at the price of up to d
// more latency, and only while frames come faster than one per d. Zero, the default, writes as soon
// as the previous write returned.
func (s *Mux) SetWriteInterval(d time.Duration) { s.batcher.interval.Store(int64(d)) }

// WriteInterval is the interval SetWriteInterval set.
func (s *Mux) WriteInterval() time.Duration { return time.Duration(s.batcher.interval.Load()) }

// IsClosed reports whether the session has ended.
func (s *Mux) IsClosed() bool { return s.mux.IsClosed() }

// Close ends the session and every stream in it, and the underlying connection.
func (s *Mux) Close() error {
	var err error
	s.once.Do(func() {
		close(s.done)
		err = s.mux.Close()
		s.acceptWG.Wait()
		s.codecs.close()
	})
	return err
}

// Incoming is a stream the peer opened, waiting for an answer.
type Incoming struct {
	ys       *yamux.Stream
	req      OpenRequest
	sess     *Mux
	answered bool
}

// Request is what the peer asked for.
func (in *Incoming) Request() OpenRequest { return in.req }

// Accept answers CodeOK, choosing the first offered codec this build supports, and returns the
// stream. The agent calls it only after its own dial succeeded, so the plugin's Open reports the
// dial's outcome.
func (in *Incoming) Accept() (*Stream, error) {
	return in.AcceptWith(chooseCompression(in.req.Compression))
}

// AcceptJoin accepts the stream and joins it to c, the connection the answering end dialed for it,
// until both directions end or ctx is done (both are closed then, so a session's end does not wait
// for a quiet connection). c is closed whatever happens; the error is Accept's or Join's.
func (in *Incoming) AcceptJoin(ctx context.Context, c io.ReadWriteCloser) error {
	st, err := in.Accept()
	if err != nil {
		c.Close()
		return err
	}
	stop := context.AfterFunc(ctx, func() {
		st.Close()
		c.Close()
	})
	defer stop()
	return Join(st, c)
}

// AcceptWith is Accept with the codec chosen by the caller, which must be CompressionNone or one the
// peer offered; a UDP association, for instance, gains nothing from compression.
func (in *Incoming) AcceptWith(c Compression) (*Stream, error) {
	if in.answered {
		return nil, fmt.Errorf("stream %d already answered: %w", in.ys.StreamID(), ErrInternal)
	}
	in.answered = true
	if c != CompressionNone && !contains(in.req.Compression, c) {
		c = CompressionNone
	}
	if err := WriteMessage(in.ys, OpenReply{Code: CodeOK, Compression: c}); err != nil {
		_ = in.ys.Close()
		return nil, err
	}
	return newStream(in.ys, c, in.sess.codecs, in.req), nil
}

// Reject answers with the code CodeFor(reason) and reason's text, then closes the stream.
func (in *Incoming) Reject(reason error) error {
	if in.answered {
		return nil
	}
	in.answered = true
	code := CodeFor(reason)
	if code == CodeOK {
		code = CodeInternal
	}
	msg := code.String()
	if reason != nil {
		msg = reason.Error()
	}
	err := WriteMessage(in.ys, OpenReply{Code: code, Message: msg})
	_ = in.ys.Close()
	return err
}
