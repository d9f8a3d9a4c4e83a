package transport

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"k8s.io/client-go/rest"
)

// AgentControl starts `trafficlab-agent attach` in the agent container over exec; it implements
// tunnel.ControlStarter.
type AgentControl struct {
	Exec      Executor
	Namespace string
	Pod       string
	Container string
	Command   []string
}

// StartControl implements tunnel.ControlStarter.
func (a *AgentControl) StartControl(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer) error {
	return a.Exec.Exec(ctx, ExecRequest{
		Namespace: a.Namespace, Pod: a.Pod, Container: a.Container,
		Command: a.Command, Stdin: stdin, Stdout: stdout, Stderr: stderr,
	})
}

// PortForwardData opens each data connection as its own port-forward upgrade, so that parallel data
// connections are parallel TCP connections through the apiserver and kubelet, not streams queued
// behind one another in one SPDY connection. It implements tunnel.DataOpener.
type PortForwardData struct {
	Config    *rest.Config
	Client    rest.Interface
	Namespace string
	Pod       string
	Protocol  Protocol

	mu    sync.Mutex
	used  Protocol
	conns []*PortForward
}

// OpenData implements tunnel.DataOpener.
func (p *PortForwardData) OpenData(ctx context.Context, port int) (io.ReadWriteCloser, error) {
	pf, err := DialPortForward(ctx, p.Config, p.Client, PortForwardRequest{Namespace: p.Namespace, Pod: p.Pod, Port: port, Protocol: p.Protocol})
	if err != nil {
		return nil, err
	}
	s, err := pf.Open()
	if err != nil {
		pf.Close()
		return nil, err
	}
	p.mu.Lock()
	p.used = pf.Protocol()
	p.conns = append(p.conns, pf)
	p.mu.Unlock()
	return &ownedStream{Stream: s, pf: pf}, nil
}

// Used reports the upgrade protocol of the last data connection.
func (p *PortForwardData) Used() Protocol {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.used
}

// Close ends every port-forward connection this opener made.
func (p *PortForwardData) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
	return nil
}

// ownedStream closes its own port-forward connection with it.
type ownedStream struct {
	*Stream
	pf *PortForward
}

func (o *ownedStream) Close() error {
	o.Stream.Close()
	return o.pf.Close()
}

// ExecData is the fallback data path: each data connection is an exec of `trafficlab-agent relay`,
// joined to the agent's loopback port. It implements tunnel.DataOpener.
type ExecData struct {
	Exec      Executor
	Namespace string
	Pod       string
	Container string
	// Binary is the agent binary's path in its image.
	Binary string
}

// OpenData implements tunnel.DataOpener.
func (e *ExecData) OpenData(ctx context.Context, port int) (io.ReadWriteCloser, error) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c := &execConn{r: outR, w: inW, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		err := e.Exec.Exec(ctx, ExecRequest{
			Namespace: e.Namespace, Pod: e.Pod, Container: e.Container,
			Command: []string{e.Binary, "relay", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))},
			Stdin:   inR, Stdout: outW, Stderr: io.Discard,
		})
		if err == nil {
			err = io.EOF
		}
		outW.CloseWithError(err)
		inR.CloseWithError(err)
	}()
	return c, nil
}

// execConn is an exec stream seen as one connection.
type execConn struct {
	r      *io.PipeReader
	w      *io.PipeWriter
	cancel context.CancelFunc
	done   chan struct{}
}

func (c *execConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *execConn) Write(p []byte) (int, error) { return c.w.Write(p) }

// CloseWrite ends the exec's stdin, which the relay reads as EOF.
func (c *execConn) CloseWrite() error { return c.w.Close() }

// Close ends stdin first so the relay exits and the exec ends cleanly; it cuts the stream only if the
// relay does not go within a second.
func (c *execConn) Close() error {
	c.w.Close()
	// Drain what the relay still sends, so its writes do not fail while it shuts down.
	go func() { _, _ = io.Copy(io.Discard, c.r) }()
	select {
	case <-c.done:
	case <-time.After(time.Second):
	}
	c.r.CloseWithError(fmt.Errorf("exec data connection closed: %w", io.ErrClosedPipe))
	c.cancel()
	return nil
}
