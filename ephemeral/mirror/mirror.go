// Package mirror replays a copy of the pod's incoming connections to the developer while the pod's
// app keeps answering them. It sniffs (NET_RAW only): the packets are captured with the port in
// the kernel filter, reassembled into the client's byte stream, and each connection's client bytes
// are written to a stream the plugin joins to the local port; the local answers are read and thrown
// away by the plugin. A copy that cannot keep up is dropped and counted, never the pod's traffic,
// which the capture only observes.
package mirror

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Opener opens a stream to the plugin for one mirrored connection.
type Opener interface {
	OpenIncoming(ctx context.Context, req wire.OpenRequest) (net.Conn, error)
}

// queueLen bounds the chunks of one connection waiting for the tunnel; past it the copy is dropped.
const queueLen = 256

// flushEvery lets the assembler report holes and ends when no packet comes.
const flushEvery = 250 * time.Millisecond

// Stats count what the mirror did.
type Stats struct {
	// Connections is every new connection seen on the ports, Mirrored those copied to the plugin.
	Connections int64 `json:"connections"`
	Mirrored    int64 `json:"mirrored"`
	// Dropped copies, by cause: open before the capture began, bytes the capture lost, a tunnel
	// slower than the traffic, a local process that refused.
	DroppedMidStream   int64 `json:"droppedMidStream"`
	DroppedGap         int64 `json:"droppedGap"`
	DroppedSlow        int64 `json:"droppedSlow"`
	DroppedLocalRefuse int64 `json:"droppedLocalRefused"`
}

// Mirror is one running mirror.
type Mirror struct {
	open  Opener
	log   *slog.Logger
	ports []uint16
	ctx   context.Context
	stats struct {
		connections, mirrored, midStream, gap, slow, refused atomic.Int64
	}
	wg sync.WaitGroup
}

// Run captures with c (already filtered to the mirrored ports) until ctx ends, mirroring each new
// connection's client bytes through open.
func Run(ctx context.Context, c *capture.Capture, ports []int, open Opener, log *slog.Logger) (Stats, error) {
	m := &Mirror{open: open, log: log, ctx: ctx}
	opts := capture.AssemblerOptions{}
	for _, p := range ports {
		m.ports = append(m.ports, uint16(p))
		opts.ServerPorts = append(opts.ServerPorts, uint16(p))
	}
	asm := capture.NewAssembler(m.factory, opts)
	stop := make(chan struct{})
	go func() {
		// Capture timestamps come from this machine's clock, so now is the capture's time too.
		t := time.NewTicker(flushEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-t.C:
				asm.Flush(now)
			}
		}
	}()
	err := c.Run(ctx, func(data []byte, ci gopacket.CaptureInfo) error {
		asm.Feed(data, ci)
		return nil
	})
	close(stop)
	asm.Close()
	m.wg.Wait()
	return m.Stats(), err
}

// Stats is a snapshot of the counts.
func (m *Mirror) Stats() Stats {
	return Stats{
		Connections: m.stats.connections.Load(), Mirrored: m.stats.mirrored.Load(),
		DroppedMidStream: m.stats.midStream.Load(), DroppedGap: m.stats.gap.Load(),
		DroppedSlow: m.stats.slow.Load(), DroppedLocalRefuse: m.stats.refused.Load(),
	}
}

func (m *Mirror) factory(f capture.Flow) capture.StreamHandler {
	ours := false
	for _, p := range m.ports {
		ours = ours || f.Server.Port() == p
	}
	if !ours {
		return nil
	}
	m.stats.connections.Add(1)
	return &conn{m: m, flow: f}
}

// conn mirrors one connection. Its handler methods run on the capture's goroutine and must not
// block: bytes go to a queue that a goroutine of its own writes to the tunnel.
type conn struct {
	m       *Mirror
	flow    capture.Flow
	queue   chan []byte
	dead    bool // the copy was given up; the rest of the connection is ignored
	started bool
}

func (c *conn) Data(dir capture.Direction, data []byte, _ time.Time) {
	if dir != capture.ClientToServer || c.dead {
		return
	}
	if !c.started {
		c.start()
	}
	chunk := append([]byte(nil), data...)
	select {
	case c.queue <- chunk:
	default:
		c.giveUp(&c.m.stats.slow, "the tunnel is slower than the traffic")
	}
}

func (c *conn) Gap(dir capture.Direction, missing int, _ time.Time) {
	if dir != capture.ClientToServer || c.dead {
		return
	}
	if !c.started {
		// A connection open before the capture began: its first bytes are gone, and a replay that
		// starts in the middle of a request would only confuse the local server.
		c.dead = true
		c.m.stats.midStream.Add(1)
		return
	}
	c.giveUp(&c.m.stats.gap, fmt.Sprintf("%d bytes were not captured", missing))
}

func (c *conn) End(dir capture.Direction, _ capture.EndReason, _ time.Time) {
	if dir != capture.ClientToServer || !c.started || c.dead {
		return
	}
	close(c.queue)
	c.dead = true
}

func (c *conn) giveUp(counter *atomic.Int64, why string) {
	counter.Add(1)
	c.m.log.Debug("mirror copy dropped", "client", c.flow.Client.String(), "why", why)
	if c.started {
		close(c.queue)
	}
	c.dead = true
}

func (c *conn) start() {
	c.started = true
	c.queue = make(chan []byte, queueLen)
	c.m.wg.Add(1)
	go c.send()
}

// send opens the plugin's stream and writes the queued client bytes to it. When the local process
// refuses, the rest of the connection is drained and counted.
func (c *conn) send() {
	defer c.m.wg.Done()
	st, err := c.m.open.OpenIncoming(c.m.ctx, wire.OpenRequest{
		Kind: wire.KindMirrored, Network: wire.NetworkTCP, Address: c.flow.Server.String(),
		Port: int(c.flow.Server.Port()), Peer: c.flow.Client.String(), Compression: wire.SupportedCompression(),
	})
	if err != nil {
		c.m.stats.refused.Add(1)
		for range c.queue {
		}
		return
	}
	defer st.Close()
	c.m.stats.mirrored.Add(1)
	// The plugin reads the local answers; whatever it sends back is not ours to keep.
	go func() { _, _ = io.Copy(io.Discard, st) }()
	for chunk := range c.queue {
		if _, err := st.Write(chunk); err != nil {
			for range c.queue {
			}
			return
		}
	}
	if cw, ok := st.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}
