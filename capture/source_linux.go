//go:build linux

package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/afpacket"
	"golang.org/x/net/bpf"
)

const (
	// pollTimeout is how long a reader waits in poll(2) for a block before it looks whether
	// the capture was closed: Close waits for the readers, because unmapping a ring under one
	// would crash it. It also ends the drain at open (see drain), so it must stay well above
	// twice blockTimeout.
	pollTimeout = 100 * time.Millisecond
	// blockTimeout is how long the kernel keeps filling a block before it hands it over
	// anyway, so that light traffic still shows up promptly (a dump flushes every 100 ms).
	// The price is a block per timeout under a trickle, hence minRingBlocks.
	blockTimeout = 10 * time.Millisecond
)

// Capture reads frames from one or more AF_PACKET sockets, each with a memory-mapped TPACKET_V3
// ring. It must be opened in the network namespace to capture in; after that it can be used from
// any goroutine.
type Capture struct {
	rings []*ring
	// ifcs are the interfaces present at open; a capture of every interface reads those that
	// come later too, with the kernel's index in CaptureInfo all the same.
	ifcs    []Interface
	snapLen int
	// program compiles a filter expression for the rings as Open did, for SetExpr.
	program func(e *Expr) ([]bpf.RawInstruction, error)

	packets chan packet
	done    chan struct{} // closed by Close
	once    sync.Once
	readers sync.WaitGroup

	mu     sync.Mutex
	err    error // first read error; ends the capture
	failed chan struct{}
	stats  Stats
	closed bool
}

type ring struct {
	tp  *afpacket.TPacket
	ifc Interface
	// last is what afpacket's sums of the socket's counters said at the last counts call.
	last afpacket.SocketStatsV3
}

type packet struct {
	data []byte
	ci   gopacket.CaptureInfo
}

// Open starts capturing. Call Close to release the sockets.
func Open(opts Options) (*Capture, error) {
	snapLen := opts.SnapLen
	if snapLen == 0 {
		snapLen = DefaultSnapLen
	}
	if snapLen < 0 || snapLen > DefaultSnapLen {
		return nil, fmt.Errorf("snap length %d out of range 1-%d", snapLen, DefaultSnapLen)
	}
	if opts.Filter != nil {
		if err := opts.Filter.Validate(); err != nil {
			return nil, err
		}
	}
	if opts.Expr != nil && opts.Expr.root == nil {
		return nil, errors.New("empty filter expression: use ParseExpr")
	}
	blockSize, blocks, err := ringGeometry(snapLen, opts.RingSize)
	if err != nil {
		return nil, err
	}
	ifcs, err := interfaces(opts.Interface)
	if err != nil {
		return nil, err
	}

	c := &Capture{
		snapLen: snapLen,
		packets: make(chan packet, queueLen),
		done:    make(chan struct{}),
		failed:  make(chan struct{}),
	}
	for _, ifc := range ifcs {
		c.ifcs = append(c.ifcs, Interface{Index: ifc.Index, Name: ifc.Name})
	}
	// Every interface is read through one socket bound to none, with one ring: a ring per
	// interface would cost RingSize of kernel memory per interface, and in a node's network
	// namespace (a hostNetwork pod) every pod on the node has an interface there.
	var ringIfcs []net.Interface
	if opts.Interface == "" {
		ringIfcs = []net.Interface{{Name: ""}}
		c.program = func(e *Expr) ([]bpf.RawInstruction, error) { return programAny(opts.Filter, e, uint32(snapLen)) }
	} else {
		loopback := ifcs[0].Flags&net.FlagLoopback != 0
		ringIfcs = ifcs
		c.program = func(e *Expr) ([]bpf.RawInstruction, error) {
			return programWith(opts.Filter, e, uint32(snapLen), loopback)
		}
	}
	f, err := c.program(opts.Expr)
	if err != nil {
		return nil, err
	}
	filters := [][]bpf.RawInstruction{f}
	for _, ifc := range ringIfcs {
		r, err := openRing(ifc, blockSize, blocks)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.rings = append(c.rings, r)
	}
	// The drains wait out a poll timeout each, so they run side by side.
	errs := make([]error, len(c.rings))
	var drains sync.WaitGroup
	for i, r := range c.rings {
		drains.Go(func() { errs[i] = r.drain() })
	}
	drains.Wait()
	for i, r := range c.rings {
		if errs[i] == nil {
			errs[i] = r.start(filters[i])
		}
	}
	if err := errors.Join(errs...); err != nil {
		c.Close()
		return nil, err
	}
	for _, r := range c.rings {
		c.readers.Go(func() { c.read(r) })
	}
	return c, nil
}

// interfaces resolves Options.Interface.
func interfaces(name string) ([]net.Interface, error) {
	if name != "" {
		ifc, err := net.InterfaceByName(name)
		if err != nil {
			return nil, fmt.Errorf("capture interface %q: %w", name, err)
		}
		if !ethernetFramed(*ifc) {
			return nil, fmt.Errorf("capture interface %q: not an Ethernet or loopback interface", name)
		}
		return []net.Interface{*ifc}, nil
	}
	all, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []net.Interface
	for _, ifc := range all {
		if ethernetFramed(ifc) {
			out = append(out, ifc)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no Ethernet or loopback interface to capture on")
	}
	return out, nil
}

// ethernetFramed reports whether the interface's frames start with an Ethernet header, which
// the filter and the file's link type assume. Loopback frames carry an all-zero one; a tun
// device's bare IP packets do not.
func ethernetFramed(ifc net.Interface) bool {
	return len(ifc.HardwareAddr) == 6 || ifc.Flags&net.FlagLoopback != 0
}

// openRing opens a packet socket on ifc with its ring, and shuts it with a drop-all filter: until
// drain and start run, the ring keeps only what arrived unfiltered.
func openRing(ifc net.Interface, blockSize, blocks int) (*ring, error) {
	name := ifc.Name
	if name == "" {
		name = "every interface"
	}
	dropAll, err := bpf.Assemble([]bpf.Instruction{bpf.RetConstant{Val: 0}})
	if err != nil {
		return nil, fmt.Errorf("assemble drop-all filter: %w", err)
	}
	// afpacket binds the socket and maps its ring before anything else can be done with it, so
	// it receives every frame of ifc from then until a filter is attached.
	tp, err := afpacket.NewTPacket(
		afpacket.OptInterface(ifc.Name),
		afpacket.TPacketVersion3,
		afpacket.OptBlockSize(blockSize),
		afpacket.OptNumBlocks(blocks),
		afpacket.OptBlockTimeout(blockTimeout),
		afpacket.OptPollTimeout(pollTimeout),
	)
	if err != nil {
		return nil, fmt.Errorf("open packet socket on %q: %w", name, err)
	}
	if err := tp.SetBPF(dropAll); err != nil {
		tp.Close()
		return nil, fmt.Errorf("attach drop-all filter on %q: %w", name, err)
	}
	return &ring{tp: tp, ifc: Interface{Index: ifc.Index, Name: name}}, nil
}

// drain discards the frames that reached the ring before the drop-all filter. Their number is
// unknown (afpacket clears the socket's counters after the ring is mapped, and frames can arrive
// in between), so drain reads until the ring stays empty for a whole poll timeout. That proves it
// empty: nothing passes the drop-all filter, and the kernel hands over the last, partly filled
// block within two block timeouts. libpcap, which can see the blocks, filters them in user space
// instead.
func (r *ring) drain() error {
	for {
		_, _, err := r.tp.ZeroCopyReadPacketData()
		if errors.Is(err, afpacket.ErrTimeout) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("drain packet socket on %q: %w", r.ifc.Name, err)
		}
	}
}

// start takes the counts of the unfiltered frames out of the socket's statistics, so that Stats
// counts only filtered ones, and attaches the filter.
func (r *ring) start(filter []bpf.RawInstruction) error {
	if _, err := r.counts(); err != nil {
		return err
	}
	if err := r.tp.SetBPF(filter); err != nil {
		return fmt.Errorf("attach filter on %q: %w", r.ifc.Name, err)
	}
	return nil
}

// SetExpr replaces the capture's filter expression while it runs (nil: none); the port filter given
// to Open stays. The kernel swaps a socket's filter in one step, so every frame is matched by either
// the old or the new one. The agent uses it when a session starts or ends, so that no capture ever
// holds another session's data connection, whenever that session began.
func (c *Capture) SetExpr(e *Expr) error {
	if e != nil && e.root == nil {
		return errors.New("empty filter expression: use ParseExpr")
	}
	f, err := c.program(e)
	if err != nil {
		return err
	}
	// Under mu, which Close takes before it closes the sockets: a closed capture's descriptors may
	// already belong to someone else.
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	for _, r := range c.rings {
		if err := r.tp.SetBPF(f); err != nil {
			return fmt.Errorf("replace filter on %q: %w", r.ifc.Name, err)
		}
	}
	return nil
}

// counts returns the socket's counts since the last call: frames placed in the ring, frames
// dropped because it was full, and the times it filled up.
func (r *ring) counts() (Stats, error) {
	_, now, err := r.tp.SocketStats()
	if err != nil {
		return Stats{}, fmt.Errorf("read socket statistics of %q: %w", r.ifc.Name, err)
	}
	// afpacket's sums are 32-bit and wrap; differences of them stay right. The kernel counts
	// the drops in packets too.
	packets := uint32(now.Packets()) - uint32(r.last.Packets())
	drops := uint32(now.Drops()) - uint32(r.last.Drops())
	freezes := uint32(now.QueueFreezes()) - uint32(r.last.QueueFreezes())
	r.last = now
	return Stats{Received: uint64(packets - drops), Dropped: uint64(drops), RingFull: uint64(freezes)}, nil
}

func (c *Capture) read(r *ring) {
	for {
		// ReadPacketData copies the frame out of the ring: the block it is in goes back to
		// the kernel once the next one is read.
		data, ci, err := r.tp.ReadPacketData()
		if errors.Is(err, afpacket.ErrTimeout) {
			select {
			case <-c.done:
				return
			default:
				continue
			}
		}
		if err != nil {
			c.fail(fmt.Errorf("read from %q: %w", r.ifc.Name, err))
			return
		}
		select {
		case c.packets <- packet{data: data, ci: ci}:
		case <-c.done:
			return
		}
	}
}

func (c *Capture) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
		close(c.failed)
	}
}

// Interfaces lists what the capture reads from; CaptureInfo.InterfaceIndex refers to these.
func (c *Capture) Interfaces() []Interface {
	return slices.Clone(c.ifcs)
}

// SnapLen is the most bytes of a frame the capture keeps.
func (c *Capture) SnapLen() int { return c.snapLen }

// ReadPacketData returns the next captured frame. It blocks until one arrives, and returns
// io.EOF once the capture is closed and the error of a failed socket if one fails.
func (c *Capture) ReadPacketData() ([]byte, gopacket.CaptureInfo, error) {
	select {
	case p := <-c.packets:
		return p.data, p.ci, nil
	case <-c.done:
		return nil, gopacket.CaptureInfo{}, io.EOF
	case <-c.failed:
		c.mu.Lock()
		defer c.mu.Unlock()
		return nil, gopacket.CaptureInfo{}, c.err
	}
}

// Run passes every captured frame to fn until ctx is done, fn fails or a socket fails, then
// closes the capture. It returns nil when ctx ended it.
func (c *Capture) Run(ctx context.Context, fn func(data []byte, ci gopacket.CaptureInfo) error) error {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	for {
		data, ci, err := c.ReadPacketData()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(data, ci); err != nil {
			return err
		}
	}
}

// Stats returns the kernel's counts since the capture opened; after Close, the final counts.
func (c *Capture) Stats() (Stats, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return c.stats, nil
	}
	// Not one return statement: Go leaves open whether c.stats would be read before the call.
	err := c.updateStats()
	return c.stats, err
}

// updateStats adds the counts since the last call; c.mu must be held.
func (c *Capture) updateStats() error {
	var errs []error
	for _, r := range c.rings {
		st, err := r.counts()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		c.stats.Received += st.Received
		c.stats.Dropped += st.Dropped
		c.stats.RingFull += st.RingFull
	}
	return errors.Join(errs...)
}

// Close stops the capture and closes its sockets, within a poll timeout (100 ms). It is safe to
// call more than once.
func (c *Capture) Close() error {
	c.once.Do(func() {
		close(c.done)
		// A reader in poll(2) notices done when the poll times out; the rings stay mapped
		// until then.
		c.readers.Wait()
		c.mu.Lock()
		// Last chance to read the counters; the sockets take them along.
		_ = c.updateStats()
		c.closed = true
		c.mu.Unlock()
		for _, r := range c.rings {
			r.tp.Close()
		}
	})
	return nil
}
