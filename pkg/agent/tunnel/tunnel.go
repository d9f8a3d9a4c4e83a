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
	"time"

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
}

// Tunnel is the live connection of a session to one agent: the control channel and its data
// connections, each carrying a wire.Mux.
type Tunnel struct {
	cfg     Config
	welcome wire.Welcome
	ctrl    *wire.Control
	stdin   *io.PipeWriter
	stderr  *tailBuffer

	muxes []*wire.Mux
	mu    sync.Mutex
	next  int

	acceptOnce sync.Once
	incoming   chan *wire.Incoming

	cancel   context.CancelFunc
	done     chan struct{}
	err      error
	execDone chan struct{} // closed when the exec'd session process has ended
	closing  sync.Once
}

// Connect starts the agent's attachment and the tunnel's data connections. On error nothing is left running.
func Connect(ctx context.Context, cfg Config) (*Tunnel, error) {
	if cfg.DataConns <= 0 {
		cfg.DataConns = 1
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 30 * time.Second
	}
	secret, err := wire.NewSecret()
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	c := &Tunnel{cfg: cfg, stdin: inW, stderr: &tailBuffer{max: 4 << 10}, cancel: cancel, done: make(chan struct{}), execDone: make(chan struct{})}
	go func() {
		var stderr io.Writer = c.stderr
		if cfg.AgentLog != nil {
			stderr = io.MultiWriter(c.stderr, cfg.AgentLog)
		}
		err := cfg.Control.StartControl(runCtx, inR, outW, stderr)
		if err == nil {
			err = io.EOF
		}
		outW.CloseWithError(err)
		inR.CloseWithError(err)
		close(c.execDone)
	}()
	c.ctrl = wire.NewControl(outR, inW, wire.ControlConfig{
		Role: wire.RolePlugin, Version: cfg.Version,
		HeartbeatInterval: cfg.HeartbeatInterval, HeartbeatDeadline: cfg.HeartbeatDeadline,
	})
	fail := func(err error) (*Tunnel, error) {
		c.shutdown(err, false)
		return nil, err
	}
	hctx, hcancel := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	defer hcancel()
	c.welcome, err = c.ctrl.Hello(hctx, wire.Hello{Secret: secret, DataConns: cfg.DataConns, Options: wire.SessionOptions{User: cfg.User, Host: cfg.Host}})
	if err != nil {
		return fail(c.withAgentOutput(fmt.Errorf("agent session: %w", err)))
	}
	for range cfg.DataConns {
		t, err := c.openTunnel(hctx, secret)
		if err != nil {
			return fail(err)
		}
		c.muxes = append(c.muxes, t)
	}
	go c.run(runCtx)
	return c, nil
}

// openTunnel opens one data connection, by port-forward or the exec relay (whichever DataOpener
// is), and runs the handshake on it: TLS pinned to the key the Welcome named, then the secret.
func (c *Tunnel) openTunnel(ctx context.Context, secret wire.Secret) (*wire.Mux, error) {
	rwc, err := c.cfg.Data.OpenData(ctx, c.welcome.DataPort)
	if err != nil {
		return nil, fmt.Errorf("open data connection to the agent's port %d: %w", c.welcome.DataPort, err)
	}
	t, err := wire.ClientTunnel(ctx, rwc, c.welcome.DataKeyPin, secret, c.cfg.Tunnel)
	if err != nil {
		return nil, fmt.Errorf("data connection handshake: %w", err)
	}
	return t, nil
}

// run watches the session: the control channel's end (heartbeat loss, EOF, Bye) or the loss of every
// data connection ends it.
func (c *Tunnel) run(ctx context.Context) {
	allGone := make(chan struct{})
	go func() {
		for _, t := range c.muxes {
			select {
			case <-t.Done():
			case <-ctx.Done():
				return
			}
		}
		close(allGone)
	}()
	ctrlDone := make(chan error, 1)
	go func() { ctrlDone <- c.ctrl.Run(ctx) }()
	var err error
	select {
	case err = <-ctrlDone:
		err = c.withAgentOutput(fmt.Errorf("agent session ended: %w", err))
	case <-allGone:
		err = errors.New("agent session ended: every data connection to the agent is closed")
	case <-ctx.Done():
		err = ctx.Err()
	}
	c.shutdown(err, false)
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
		c.err = err
		for _, t := range c.muxes {
			t.Close()
		}
		c.stdin.Close()
		if !graceful {
			c.cancel()
		}
		close(c.done)
	})
}

// Welcome is what the agent said about itself.
func (c *Tunnel) Welcome() wire.Welcome { return c.welcome }

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

// SetWriteInterval spaces the writes of every data connection (wire.Mux.SetWriteInterval).
func (c *Tunnel) SetWriteInterval(d time.Duration) {
	for _, t := range c.muxes {
		t.SetWriteInterval(d)
	}
}

// Close says goodbye, so the agent releases the session at once instead of at the heartbeat deadline,
// and waits (bounded) for the agent's session process to exit.
func (c *Tunnel) Close() error {
	alive := c.Err() == nil
	// Data first: a goodbye first would make the agent drop the data connections under our last
	// writes, and an exec data path would log the failed write.
	for _, t := range c.muxes {
		t.Close()
	}
	if alive {
		_ = c.ctrl.Bye("plugin closed the session")
	}
	c.shutdown(errClosed, true)
	select {
	case <-c.execDone:
	case <-time.After(5 * time.Second):
	}
	c.cancel()
	return nil
}

var errClosed = errors.New("session closed")

// Dial opens a stream through which the agent dials address from the pod.
func (c *Tunnel) Dial(ctx context.Context, network, address string) (io.ReadWriteCloser, error) {
	req := wire.OpenRequest{Kind: wire.KindDial, Network: network, Address: address}
	if network == wire.NetworkTCP {
		req.Compression = c.cfg.Compression
	}
	s, err := c.open(ctx, req)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Steal asks the agent to steal; the returned stream carries the steal's events and ending it (Close)
// ends the steal. The agent answers only once its redirect is in place.
func (c *Tunnel) Steal(ctx context.Context, spec wire.StealSpec) (*wire.Stream, error) {
	return c.open(ctx, wire.OpenRequest{Kind: wire.KindSteal, Steal: &spec})
}

// Dump asks the agent to capture; the returned stream carries the capture as pcapng. CloseWrite ends
// the capture: the agent then writes its packet counts and closes its side.
func (c *Tunnel) Dump(ctx context.Context, spec wire.DumpSpec) (*wire.Stream, error) {
	return c.open(ctx, wire.OpenRequest{Kind: wire.KindDump, Dump: &spec})
}

// Mirror asks the agent to mirror (sniff mode); the agent then opens a KindMirrored stream per
// connection. Ending the returned stream ends the mirror; its last line is the agent's counts.
func (c *Tunnel) Mirror(ctx context.Context, spec wire.MirrorSpec) (*wire.Stream, error) {
	return c.open(ctx, wire.OpenRequest{Kind: wire.KindMirror, Mirror: &spec})
}

// Accept waits for a stream the agent opened (a stolen connection), on any data connection. The
// first call starts accepting; before it, the agent's streams wait in yamux's backlog.
func (c *Tunnel) Accept(ctx context.Context) (*wire.Incoming, error) {
	c.acceptOnce.Do(func() {
		c.incoming = make(chan *wire.Incoming)
		for _, t := range c.muxes {
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
	})
	select {
	case in := <-c.incoming:
		return in, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.done:
		return nil, c.err
	}
}

// open opens a stream of any kind on the least loaded data connection.
func (c *Tunnel) open(ctx context.Context, req wire.OpenRequest) (*wire.Stream, error) {
	t := c.pick()
	if t == nil {
		if err := c.Err(); err != nil {
			return nil, err
		}
		return nil, wire.ErrSessionClosed
	}
	return t.Open(ctx, req)
}

// pick spreads streams over the data connections, preferring the least loaded and taking turns
// among equals.
func (c *Tunnel) pick() *wire.Mux {
	c.mu.Lock()
	defer c.mu.Unlock()
	best := wire.LeastLoaded(c.muxes, c.next)
	c.next++
	return best
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
