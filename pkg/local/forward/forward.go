package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"

	"k8s.io/klog/v2"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Dialer opens a connection from the pod to address ("host:port", resolved by the pod).
type Dialer interface {
	Dial(ctx context.Context, network, address string) (io.ReadWriteCloser, error)
}

// Forwarder listens on local addresses and carries each accepted TCP connection to the pod.
type Forwarder struct {
	Dialer Dialer
	// Addresses to listen on; "localhost" means 127.0.0.1 and ::1, as kubectl port-forward does.
	Addresses []string
	Out       io.Writer
	ErrOut    io.Writer
}

// Listener is one bound local address for one spec.
type Listener struct {
	Spec Spec
	ln   net.Listener
}

// Addr is the bound local address (the real port when 0 was asked).
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Close releases the address; Serve does it on its own when ctx ends.
func (l *Listener) Close() error { return l.ln.Close() }

// Listen binds every address for every TCP spec before anything is forwarded, so a port already in use
// fails the command at once instead of after the agent is set up. Nothing is printed until Announce:
// scripts wait for "Forwarding from" as they do with kubectl, and it must mean the forward works.
func (f *Forwarder) Listen(specs []Spec) ([]*Listener, error) {
	return bindEach(f.Addresses, specs, "tcp", func(s Spec, addr string) (*Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, err
		}
		return &Listener{Spec: s, ln: ln}, nil
	})
}

// bindEach binds every address for every spec of one protocol. ":PORT" picks one free port and uses it
// on every address, as kubectl does; an address that cannot be bound is skipped (kubectl tolerates a
// missing IPv6 loopback for "localhost") unless none can, which closes everything bound so far.
func bindEach[L interface {
	Addr() net.Addr
	Close() error
}](addrs []string, specs []Spec, proto string, bind func(Spec, string) (L, error)) ([]L, error) {
	var out []L
	for _, s := range specs {
		if s.Protocol != proto {
			continue
		}
		var first L
		bound := 0
		var lastErr error
		for _, host := range expand(addrs) {
			port := s.LocalPort
			if port == 0 && bound > 0 {
				port = portOf(first.Addr())
			}
			l, err := bind(s, net.JoinHostPort(host, strconv.Itoa(port)))
			if err != nil {
				lastErr = err
				continue
			}
			if bound == 0 {
				first = l
			}
			out = append(out, l)
			bound++
		}
		if bound == 0 {
			for _, l := range out {
				l.Close()
			}
			return nil, fmt.Errorf("unable to listen on any of the requested addresses %q for %s: %w", addrs, s, lastErr)
		}
	}
	return out, nil
}

func portOf(a net.Addr) int {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.Port
	case *net.UDPAddr:
		return a.Port
	}
	return 0
}

// Announce prints kubectl's "Forwarding from" line for every bound address.
func (f *Forwarder) Announce(tcp []*Listener, udp []*UDPListener) {
	for _, l := range tcp {
		fmt.Fprintf(f.Out, "Forwarding from %s -> %s\n", l.Addr(), l.Spec)
	}
	for _, l := range udp {
		fmt.Fprintf(f.Out, "Forwarding from %s/udp -> %s\n", l.Addr(), l.Spec)
	}
}

// expand turns kubectl's "localhost" into both loopback addresses.
func expand(addrs []string) []string {
	if len(addrs) == 0 {
		addrs = []string{"localhost"}
	}
	var out []string
	for _, a := range addrs {
		if a == "localhost" {
			out = append(out, "127.0.0.1", "::1")
			continue
		}
		out = append(out, a)
	}
	return out
}

// Serve accepts on every listener until ctx ends; then it closes them and waits for open connections.
func (f *Forwarder) Serve(ctx context.Context, listeners []*Listener) {
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, l := range listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.accept(ctx, l)
		}()
	}
	<-ctx.Done()
	for _, l := range listeners {
		l.ln.Close()
	}
	wg.Wait()
}

func (f *Forwarder) accept(ctx context.Context, l *Listener) {
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				fmt.Fprintf(f.ErrOut, "error: accepting on %s: %v\n", l.ln.Addr(), err)
			}
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			f.handle(ctx, l.Spec, c)
		}()
	}
}

func (f *Forwarder) handle(ctx context.Context, s Spec, local net.Conn) {
	defer local.Close()
	klog.V(2).InfoS("handling connection", "from", local.RemoteAddr(), "to", s.String())
	remote, err := f.Dialer.Dial(ctx, "tcp", s.Remote())
	if err != nil {
		// One failed dial closes one local connection; the session goes on.
		fmt.Fprintf(f.ErrOut, "error: connection from %s to %s: %v\n", local.RemoteAddr(), s, err)
		return
	}
	stop := context.AfterFunc(ctx, func() {
		local.Close()
		remote.Close()
	})
	defer stop()
	if err := wire.Join(local, remote); err != nil {
		klog.V(2).InfoS("connection ended with an error", "from", local.RemoteAddr(), "to", s.String(), "err", err)
	}
}
