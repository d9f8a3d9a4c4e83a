package netstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/fdbased"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
	"k8s.io/klog/v2"
)

const (
	nicID = 1

	// maxInFlight bounds TCP handshakes waiting for their dial; SYNs beyond it are dropped and the
	// command's kernel retransmits them.
	maxInFlight = 1024

	// copyBufSize is what each direction of a connection reads at once. The TUN's large MTU lets
	// one segment carry 64 KiB, so a smaller buffer would split segments into several writes to the
	// Dialer's conn; it is also the largest UDP datagram.
	copyBufSize = 64 << 10

	// tcpBufferSize is the default send and receive buffer of every terminated connection. On a
	// link with no delay 1 MiB keeps the window open at several GB/s; the maximum lets gVisor's
	// auto-tuning grow buffers of busy connections.
	tcpBufferSize    = 1 << 20
	tcpMaxBufferSize = 8 << 20

	// udpReceiveBufferSize absorbs bursts a slow Dialer has not taken yet.
	udpReceiveBufferSize = 1 << 20
)

// Stack is gVisor's stack on one TUN descriptor. Close ends it.
type Stack struct {
	cfg   Config
	stack *stack.Stack
	fd    int
	bufs  sync.Pool

	ctx    context.Context
	cancel context.CancelFunc

	// mu guards closed against wg.Add, so no handler starts once Close waits.
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// New starts the stack on tun, a TUN device (IFF_TUN|IFF_NO_PI) whose MTU is cfg.MTU. It uses a
// duplicate of the descriptor, so the caller may close tun once New returns.
func New(tun *os.File, cfg Config) (*Stack, error) {
	if cfg.Dialer == nil {
		return nil, errors.New("netstack: no dialer")
	}
	if cfg.MTU < header.IPv6MinimumMTU || cfg.MTU > 65535 {
		return nil, fmt.Errorf("netstack: MTU %d outside [%d, 65535]", cfg.MTU, header.IPv6MinimumMTU)
	}
	fd, err := dup(tun)
	if err != nil {
		return nil, err
	}
	s := &Stack{cfg: cfg.withDefaults(), fd: fd}
	s.bufs.New = func() any { b := make([]byte, copyBufSize); return &b }
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.start(); err != nil {
		s.cancel()
		unix.Close(fd)
		return nil, err
	}
	return s, nil
}

func dup(f *os.File) (int, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("netstack: TUN descriptor: %w", err)
	}
	fd := -1
	var dupErr error
	// Control, not Fd: Fd would switch the caller's file to blocking mode.
	if err := raw.Control(func(u uintptr) { fd, dupErr = unix.FcntlInt(u, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, fmt.Errorf("netstack: TUN descriptor: %w", err)
	}
	if dupErr != nil {
		return -1, fmt.Errorf("netstack: duplicate TUN descriptor: %w", dupErr)
	}
	return fd, nil
}

func (s *Stack) start() error {
	link, err := fdbased.New(&fdbased.Options{
		FDs: []int{s.fd},
		MTU: uint32(s.cfg.MTU),
		// The packets come from the kernel of the same machine, which has already checksummed them;
		// verifying again would cost a pass over every 64 KiB segment.
		RXChecksumOffload: true,
	})
	if err != nil {
		return fmt.Errorf("netstack: link endpoint: %w", err)
	}
	st := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	s.stack = st
	if err := setTCPOptions(st); err != nil {
		st.Destroy()
		return err
	}
	// Handlers go in before the NIC: the NIC starts reading at once.
	fwd := tcp.NewForwarder(st, 0, maxInFlight, s.handleTCP)
	st.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
	st.SetTransportProtocolHandler(udp.ProtocolNumber, udp.NewForwarder(st, s.handleUDP).HandlePacket)

	if terr := st.CreateNIC(nicID, link); terr != nil {
		st.Destroy()
		return fmt.Errorf("netstack: create NIC: %s", terr)
	}
	// Promiscuous: accept packets to any address, as the command may connect anywhere. Spoofing:
	// answer from that address.
	if terr := st.SetPromiscuousMode(nicID, true); terr != nil {
		st.Destroy()
		return fmt.Errorf("netstack: promiscuous mode: %s", terr)
	}
	if terr := st.SetSpoofing(nicID, true); terr != nil {
		st.Destroy()
		return fmt.Errorf("netstack: spoofing: %s", terr)
	}
	st.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	return nil
}

func setTCPOptions(st *stack.Stack) error {
	// SACK lets a burst lost to a full TUN queue be repaired in one round trip.
	sack := tcpip.TCPSACKEnabled(true)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcpBufferSize, Max: tcpMaxBufferSize}
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcpBufferSize, Max: tcpMaxBufferSize}
	for _, opt := range []tcpip.SettableTransportProtocolOption{&sack, &rcv, &snd} {
		if terr := st.SetTransportProtocolOption(tcp.ProtocolNumber, opt); terr != nil {
			return fmt.Errorf("netstack: TCP option %T: %s", opt, terr)
		}
	}
	return nil
}

// Close stops the stack: it resets every relayed connection, ends every UDP flow and pending dial,
// and returns once all of the stack's goroutines have ended.
func (s *Stack) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.stack.Destroy()
	return unix.Close(s.fd)
}

// enter registers a handler goroutine; it is false once Close has begun.
func (s *Stack) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

func (s *Stack) dial(network string, id stack.TransportEndpointID) (net.Conn, string, error) {
	addr, _ := netip.AddrFromSlice(id.LocalAddress.AsSlice())
	dst := netip.AddrPortFrom(addr, id.LocalPort).String()
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
	defer cancel()
	c, err := s.cfg.Dialer.DialContext(ctx, network, dst)
	return c, dst, err
}

// handleTCP runs for each new SYN. It dials before completing the handshake, so the command's
// connect() fails as it would outside the sandbox when the destination refuses.
func (s *Stack) handleTCP(r *tcp.ForwarderRequest) {
	if !s.enter() {
		r.Complete(true)
		return
	}
	defer s.wg.Done()
	remote, dst, err := s.dial("tcp", r.ID())
	if err != nil {
		klog.V(2).InfoS("outgoing connection failed", "to", dst, "err", err)
		r.Complete(true)
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	r.Complete(false)
	if terr != nil {
		// The command gave up (its SYN is gone) while the dial ran.
		klog.V(2).InfoS("outgoing connection abandoned", "to", dst, "err", terr)
		remote.Close()
		return
	}
	klog.V(3).InfoS("outgoing connection", "to", dst)
	s.splice(gonet.NewTCPConn(&wq, ep), ep, remote)
}

// splice copies both ways with half-closes until both directions end. An error on either side
// resets both, so the command sees a reset where the remote end failed, not a clean end of data.
func (s *Stack) splice(local *gonet.TCPConn, ep tcpip.Endpoint, remote net.Conn) {
	var once sync.Once
	abort := func() {
		once.Do(func() {
			ep.Abort()
			if tc, ok := remote.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			remote.Close()
		})
	}
	stop := context.AfterFunc(s.ctx, abort)
	defer stop()

	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.copyHalf(local, remote); err != nil {
			abort()
		}
	}()
	if err := s.copyHalf(remote, local); err != nil {
		abort()
	}
	<-done
	local.Close()
	remote.Close()
}

// copyHalf copies src to dst until src ends, then half-closes dst.
func (s *Stack) copyHalf(dst, src net.Conn) error {
	buf := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(buf)
	// The wrappers hide ReadFrom/WriteTo, which would allocate their own buffers.
	if _, err := io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *buf); err != nil {
		return err
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return dst.Close()
}

type writerOnly struct{ io.Writer }

type readerOnly struct{ io.Reader }

// handleUDP runs for a datagram that belongs to no flow yet. It registers the flow at once, so the
// next datagrams queue in its endpoint instead of starting more flows, and dials in the background:
// the stack's packet processing must not wait for the Dialer.
func (s *Stack) handleUDP(r *udp.ForwarderRequest) bool {
	if !s.enter() {
		return false
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		s.wg.Done()
		klog.V(2).InfoS("udp flow not created", "id", r.ID(), "err", terr)
		return false
	}
	ep.SocketOptions().SetReceiveBufferSize(udpReceiveBufferSize, true)
	id := r.ID()
	go func() {
		defer s.wg.Done()
		s.relayUDP(id, gonet.NewUDPConn(&wq, ep))
	}()
	return true
}

// relayUDP carries one flow until it is idle for the timeout, either side fails, or the stack closes.
func (s *Stack) relayUDP(id stack.TransportEndpointID, local *gonet.UDPConn) {
	remote, dst, err := s.dial("udp", id)
	if err != nil {
		klog.V(2).InfoS("outgoing udp flow failed", "to", dst, "err", err)
		local.Close()
		return
	}
	idle := s.cfg.UDPIdleTimeout
	if id.LocalPort == 53 {
		idle = s.cfg.DNSIdleTimeout
	}

	// Closing both ends both pumps; the ends are closed once the pumps are done either way.
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	done := make(chan struct{}, 2)
	go func() { s.pumpUDP(remote, local, &last); done <- struct{}{} }()
	go func() { s.pumpUDP(local, remote, &last); done <- struct{}{} }()

	// One timer per flow, re-armed only when it fires, instead of a deadline per datagram.
	timer := time.NewTimer(idle)
	defer timer.Stop()
	pending := 2
	for running := true; running; {
		select {
		case <-done:
			pending--
			running = false
		case <-s.ctx.Done():
			running = false
		case <-timer.C:
			if quiet := time.Since(time.Unix(0, last.Load())); quiet < idle {
				timer.Reset(idle - quiet)
			} else {
				running = false
			}
		}
	}
	local.Close()
	remote.Close()
	for ; pending > 0; pending-- {
		<-done
	}
}

// pumpUDP moves datagrams from src to dst until either fails.
func (s *Stack) pumpUDP(dst, src net.Conn, last *atomic.Int64) {
	buf := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(buf)
	for {
		n, err := src.Read(*buf)
		if err != nil {
			return
		}
		last.Store(time.Now().UnixNano())
		if _, err := dst.Write((*buf)[:n]); err != nil {
			return
		}
	}
}
