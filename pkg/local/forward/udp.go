package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// UDPIdleTimeout ends a datagram association nobody used for this long, as conntrack forgets a UDP
// flow; the next datagram from that client starts a new one.
const UDPIdleTimeout = 2 * time.Minute

// UDPListener is one bound local UDP address for one spec.
type UDPListener struct {
	Spec Spec
	pc   net.PacketConn
}

// Addr is the bound local address.
func (l *UDPListener) Addr() net.Addr { return l.pc.LocalAddr() }

// Close releases the address; ServeUDP does it on its own when ctx ends.
func (l *UDPListener) Close() error { return l.pc.Close() }

// ListenUDP binds every address for every UDP spec; Announce prints them.
func (f *Forwarder) ListenUDP(specs []Spec) ([]*UDPListener, error) {
	return bindEach(f.Addresses, specs, "udp", func(s Spec, addr string) (*UDPListener, error) {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, err
		}
		return &UDPListener{Spec: s, pc: pc}, nil
	})
}

// ServeUDP relays datagrams until ctx ends: one tunnel stream per local client address, so replies
// find their way back to the client that asked.
func (f *Forwarder) ServeUDP(ctx context.Context, listeners []*UDPListener) {
	var wg sync.WaitGroup
	for _, l := range listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.serveUDP(ctx, l)
		}()
	}
	<-ctx.Done()
	for _, l := range listeners {
		l.pc.Close()
	}
	wg.Wait()
}

type association struct {
	stream io.ReadWriteCloser
	timer  *time.Timer
}

func (f *Forwarder) serveUDP(ctx context.Context, l *UDPListener) {
	var mu sync.Mutex
	assocs := map[string]*association{}
	var wg sync.WaitGroup
	defer func() {
		mu.Lock()
		for _, a := range assocs {
			a.stream.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	buf := make([]byte, wire.MaxDatagramSize)
	for {
		n, from, err := l.pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				fmt.Fprintf(f.ErrOut, "error: reading %s: %v\n", l.pc.LocalAddr(), err)
			}
			return
		}
		key := from.String()
		mu.Lock()
		a := assocs[key]
		mu.Unlock()
		if a == nil {
			st, err := f.Dialer.Dial(ctx, "udp", l.Spec.Remote())
			if err != nil {
				fmt.Fprintf(f.ErrOut, "error: datagrams from %s to %s: %v\n", from, l.Spec, err)
				continue
			}
			klog.V(2).InfoS("new udp association", "from", key, "to", l.Spec.String())
			a = &association{stream: st}
			a.timer = time.AfterFunc(UDPIdleTimeout, func() { st.Close() })
			mu.Lock()
			assocs[key] = a
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				reply := make([]byte, wire.MaxDatagramSize)
				for {
					m, err := wire.ReadDatagram(st, reply)
					if err != nil {
						break
					}
					a.timer.Reset(UDPIdleTimeout)
					_, _ = l.pc.WriteTo(reply[:m], from)
				}
				st.Close()
				mu.Lock()
				if assocs[key] == a {
					delete(assocs, key)
				}
				mu.Unlock()
			}()
		}
		a.timer.Reset(UDPIdleTimeout)
		if err := wire.WriteDatagram(a.stream, buf[:n]); err != nil {
			a.stream.Close()
		}
	}
}
