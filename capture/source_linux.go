//go:build linux

package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/pcapgo"
	"golang.org/x/net/bpf"
)

// Capture reads frames from one or more AF_PACKET sockets. It must be opened in the network
// namespace to capture in; after that it can be used from any goroutine.
type Capture struct {
	handles []*handle
	snapLen int

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

type handle struct {
	eth  *pcapgo.EthernetHandle
	ifc  Interface
	skip uint64 // frames queued before the filter was in place, still to be discarded
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
		h, err := openHandle(ifc, opts.Filter, opts.Expr, snapLen)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.handles = append(c.handles, h)
	}
	for _, h := range c.handles {
		c.readers.Add(1)
		go c.read(h)
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

func openHandle(ifc net.Interface, f *Filter, e *Expr, snapLen int) (*handle, error) {
	raw, err := programWith(f, e, uint32(snapLen), ifc.Flags&net.FlagLoopback != 0)
	if err != nil {
		return nil, err
	}
	eth, err := pcapgo.NewEthernetHandle(ifc.Name)
	if err != nil {
		return nil, fmt.Errorf("open packet socket on %q: %w", ifc.Name, err)
	}
	h := &handle{eth: eth, ifc: Interface{Index: ifc.Index, Name: ifc.Name}}
	if err := h.setup(raw, snapLen); err != nil {
		eth.Close()
		return nil, fmt.Errorf("set up packet socket on %q: %w", ifc.Name, err)
	}
	return h, nil
}

// setup installs the filter without letting unfiltered frames through. The socket receives
// frames from the moment it exists, before any filter is attached (the pcapgo constructor even
// receives from all interfaces until it binds), so the frames queued by then are counted under a
// drop-everything filter and discarded later by the reader. libpcap does the same by draining.
func (h *handle) setup(filter []bpf.RawInstruction, snapLen int) error {
	if err := h.eth.SetCaptureLength(snapLen); err != nil {
		return err
	}
	dropAll, err := bpf.Assemble([]bpf.Instruction{bpf.RetConstant{Val: 0}})
	if err != nil {
		return err
	}
	if err := h.eth.SetBPF(dropAll); err != nil {
		return fmt.Errorf("attach drop-all filter: %w", err)
	}
	// PACKET_STATISTICS resets on read, so these counts cover exactly the frames queued
	// before the drop-all filter, and Stats later counts only filtered ones.
	st, err := h.eth.Stats()
	if err != nil {
		return fmt.Errorf("read socket statistics: %w", err)
	}
	h.skip = uint64(st.Packets - st.Drops)
	if err := h.eth.SetBPF(filter); err != nil {
		return fmt.Errorf("attach filter: %w", err)
	}
	return nil
}

func (c *Capture) read(h *handle) {
	defer c.readers.Done()
	for {
		data, ci, err := h.eth.ReadPacketData()
		if err != nil {
			select {
			case <-c.done: // Close closed the socket under the read
			default:
				c.fail(fmt.Errorf("read from %q: %w", h.ifc.Name, err))
			}
			return
		}
		if h.skip > 0 {
			h.skip--
			continue
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
	out := make([]Interface, len(c.handles))
	for i, h := range c.handles {
		out[i] = h.ifc
	}
	return out
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
	return c.stats, c.updateStats()
}

// updateStats adds the counts since the last call; c.mu must be held.
func (c *Capture) updateStats() error {
	var errs []error
	for _, h := range c.handles {
		st, err := h.eth.Stats()
		if err != nil {
			errs = append(errs, fmt.Errorf("read socket statistics of %q: %w", h.ifc.Name, err))
			continue
		}
		// The kernel resets its counters on every read and reports drops inside Packets.
		c.stats.Received += uint64(st.Packets - st.Drops)
		c.stats.Dropped += uint64(st.Drops)
	}
	return errors.Join(errs...)
}

// Close stops the capture and closes its sockets. It is safe to call more than once.
func (c *Capture) Close() error {
	var errs []error
	c.once.Do(func() {
		close(c.done)
		c.mu.Lock()
		// Last chance to read the counters; the sockets take them along.
		_ = c.updateStats()
		c.closed = true
		c.mu.Unlock()
		for _, h := range c.handles {
			// Closing the socket wakes a reader blocked in recvmsg: the fd is non-blocking
			// and parked in the Go netpoller.
			if err := h.eth.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close packet socket on %q: %w", h.ifc.Name, err))
			}
		}
		c.readers.Wait()
	})
	return errors.Join(errs...)
}
