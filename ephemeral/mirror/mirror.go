// Package mirror replays a copy of the pod's incoming traffic while the pod's app keeps answering it.
// The traffic comes either from a capture (sniff mode: the packets are reassembled per connection,
// NET_RAW only) or from the steal's redirect (redirect mode: the agent relays every byte to the app
// and hands a copy here); both arrive as capture.StreamHandler calls. HTTP is copied per request, so
// filters, sampling and --diff work on keep-alive connections and on connections open before the
// mirror began; other protocols are copied per connection from their first byte. The copy goes to
// the developer (a KindMirrored stream per connection) or to an address the pod reaches. A copy that
// cannot keep up is dropped and counted, never the pod's traffic.
package mirror

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/budget"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/probe"
	"github.com/trafficlab/kubectl-trafficlab/internal/httpsyntax"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Opener opens a stream to the plugin for one mirrored connection.
type Opener interface {
	OpenIncoming(ctx context.Context, req wire.OpenRequest) (net.Conn, error)
}

// Dialer dials the copy's destination from the pod (--to).
type Dialer interface {
	Dial(ctx context.Context, network, address string) (net.Conn, error)
}

const (
	// queueLen bounds the requests of one connection waiting for the copy; past it they are dropped.
	// At 64, the 5,000 requests/s bench lost 96 of 150,040 copies to bursts while the copy path
	// stalled for a moment; 256 lost none. The queue holds pointers, so it costs 2 KiB per
	// connection whatever the depth.
	queueLen = 256
	// maxQueued bounds the bytes waiting for copies across the whole mirror, so that a slow
	// destination costs the agent a fixed amount of memory, not the pod's traffic.
	maxQueued = 64 << 20
	// maxBody is the largest request (and, for --diff, response) body kept; larger requests are
	// not mirrored, and larger responses are compared by their first maxBody bytes.
	maxBody = 8 << 20
	// answerTimeout bounds the wait for the copy's response to one request.
	answerTimeout = 30 * time.Second
	// flushEvery lets the assembler report holes and ends when no packet comes.
	flushEvery = 250 * time.Millisecond
)

// Config is one mirror.
type Config struct {
	Spec wire.MirrorSpec
	// Session is the agent's session id: the value of wire.MirrorHeader on every HTTP copy, so that
	// whoever receives a copy can tell which session sent it.
	Session string
	// Open reaches the plugin; Dial reaches Spec.To.
	Open Opener
	Dial Dialer
	// Events receives what the mirror did; it must not block.
	Events func(wire.MirrorEvent)
	Log    *slog.Logger
	// Budget is the agent container's memory budget: past it, copies are dropped and counted
	// (DroppedOverBudget) while the pod's traffic goes on. Nil: no budget but the mirror's own bounds.
	Budget *budget.Budget
}

// Mirror is one running mirror.
type Mirror struct {
	cfg     Config
	ctx     context.Context
	cancel  context.CancelFunc
	matcher *wire.FilterMatcher
	// probes decides which connections and requests are the kubelet's.
	probes *probe.Rule
	ports  map[uint16]bool
	// own are the local addresses of the mirror's own connections to its destination: when the
	// destination routes back to the pod's port, they must not be mirrored again. Hairpin NAT (a
	// Service that selects the pod) hides that address; wire.MirrorHeader catches those HTTP copies.
	own sync.Map
	// mark is the wire.MirrorHeader field line every HTTP/1 copy gets after its request line.
	mark []byte
	// looped says the first request carrying wire.MirrorHeader was reported.
	looped atomic.Bool
	// behindSidecar: the mirror sniffs lo in a pod with a sidecar (wire.SniffInterface), or its
	// redirect takes the sidecar's connections to the app, where every connection to the ports is the
	// proxy's, from one source (127.0.0.6 under Istio, the pod IP under Linkerd), the probes it
	// forwards or runs included; a source there tells no probe apart.
	behindSidecar bool

	queued atomic.Int64
	away   atomic.Bool // SetAway
	// budget is the mirror's account in the agent's memory budget, closed with the mirror.
	budget  *budget.Account
	sampleM sync.Mutex
	sampled int64
	stats   counters
	wg      sync.WaitGroup
}

type counters struct {
	// overBudget counts the copies given up for the agent's memory budget.
	overBudget atomic.Int64

	connections, requests, probes, unselected, sampledOut, mirrored, answered, differ atomic.Int64
	midStream, gap, slow, refused, upgrade, tooLarge, failed, kernelRecv, kernelDrops atomic.Int64
	copies, malformed, away                                                           atomic.Int64
}

// New starts a mirror; feed it with Handler (as a capture.StreamFactory) and end it with Close.
func New(ctx context.Context, cfg Config) (*Mirror, error) {
	if err := cfg.Spec.Validate(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Events == nil {
		cfg.Events = func(wire.MirrorEvent) {}
	}
	if !httpsyntax.IsFieldValue(cfg.Session) || strings.TrimSpace(cfg.Session) == "" {
		return nil, fmt.Errorf("mirror session id %q cannot be a header value", cfg.Session)
	}
	m := &Mirror{cfg: cfg, ports: map[uint16]bool{}, mark: []byte(wire.MirrorHeader + ": " + cfg.Session + "\r\n")}
	matcher, err := cfg.Spec.Filter.Compile()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, wire.ErrBadRequest)
	}
	m.matcher = matcher
	// The mirror runs in the pod's network namespace: its route table is the pod's.
	gateways, err := probe.Gateways(probe.RouteFile, probe.IPv6RouteFile)
	if err != nil {
		return nil, err
	}
	m.probes = probe.New(cfg.Spec.Probes, gateways)
	m.behindSidecar = cfg.Spec.Mesh != nil && (!cfg.Spec.Sniffs() || wire.SniffInterface(cfg.Spec.Mesh, cfg.Spec.Ports) == wire.Loopback)
	for _, p := range cfg.Spec.Ports {
		m.ports[uint16(p)] = true
	}
	m.ctx, m.cancel = context.WithCancel(ctx)
	m.budget = cfg.Budget.Account()
	return m, nil
}

// Handler is the mirror's capture.StreamFactory: nil for connections it does not copy.
func (m *Mirror) Handler(f capture.Flow) capture.StreamHandler {
	if !m.ports[f.Server.Port()] {
		return nil
	}
	if _, ok := m.own.Load(f.Client.String()); ok {
		return nil
	}
	m.stats.connections.Add(1)
	// Behind a sidecar the source and port of a tcpSocket or HTTPS probe are those of every meshed
	// connection to the port: taking them for probes would copy nothing, so the probe's connection is
	// copied instead (it carries no request, or one the app's server refuses). HTTP probes are still
	// told by their target and headers (IsProbe).
	if !m.behindSidecar && m.probes.PassConn(f.Client, f.Server.Port()) {
		// A tcpSocket or HTTPS probe: the kubelet's, told by its source and port.
		m.stats.probes.Add(1)
		return nil
	}
	return newConn(m, f)
}

// marked inserts the wire.MirrorHeader line after an HTTP/1 request's line; nil when raw has no
// line end, which the decoder never reports.
func (m *Mirror) marked(raw []byte) []byte {
	i := bytes.IndexByte(raw, '\n')
	if i < 0 {
		return nil
	}
	out := make([]byte, 0, len(raw)+len(m.mark))
	out = append(out, raw[:i+1]...)
	out = append(out, m.mark...)
	return append(out, raw[i+1:]...)
}

// isCopy reports whether a request is a mirror's copy (any session's); the first one is reported
// once, since it means the copy's destination leads back to a mirrored port.
func (m *Mirror) isCopy(r *capture.Request) bool {
	for _, h := range r.Header {
		if _, ok := httpsyntax.FieldLineValue(h, wire.MirrorHeader); ok {
			if !m.looped.Swap(true) {
				m.cfg.Events(wire.MirrorEvent{Kind: wire.EventWarning, Port: int(r.Flow.Server.Port()), Message: fmt.Sprintf(
					"a request carrying %s (a mirror's copy) came to port %d; copies that come back are not copied again: send them somewhere that does not lead to this pod",
					wire.MirrorHeader, r.Flow.Server.Port())})
			}
			return true
		}
	}
	return false
}

// Close stops the copies in flight and waits for them.
func (m *Mirror) Close() {
	m.cancel()
	m.wg.Wait()
	// Connections the capture never saw end still hold what they kept; the budget outlives them.
	m.budget.Close()
}

// Drain waits up to d for the copies already queued, then closes.
func (m *Mirror) Drain(d time.Duration) {
	done := make(chan struct{})
	go func() {
		m.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d):
	}
	m.Close()
}

// SetAway says whether the plugin is away (its tunnel lost, within the session's reconnect grace).
// Meanwhile the copies that would go to it are dropped and counted (DroppedAway); copies to an
// in-cluster destination (Spec.To) carry on, as they do not cross the tunnel.
func (m *Mirror) SetAway(away bool) { m.away.Store(away) }

// dropAway reports whether a selected copy is dropped because the plugin is away.
func (m *Mirror) dropAway() bool { return m.cfg.Spec.To == "" && m.away.Load() }

// Stats is a snapshot of the counts.
func (m *Mirror) Stats() wire.MirrorStats {
	s := &m.stats
	return wire.MirrorStats{
		Connections: s.connections.Load(), Requests: s.requests.Load(), Probes: s.probes.Load(), Unselected: s.unselected.Load(),
		SampledOut: s.sampledOut.Load(), Mirrored: s.mirrored.Load(), Answered: s.answered.Load(),
		Differ: s.differ.Load(), DroppedMidStream: s.midStream.Load(), DroppedGap: s.gap.Load(),
		DroppedSlow: s.slow.Load(), DroppedRefused: s.refused.Load(), DroppedUpgrade: s.upgrade.Load(),
		DroppedTooLarge: s.tooLarge.Load(), Failed: s.failed.Load(), SkippedCopies: s.copies.Load(),
		DroppedMalformed: s.malformed.Load(), DroppedAway: s.away.Load(),
		KernelReceived: uint64(s.kernelRecv.Load()), KernelDropped: uint64(s.kernelDrops.Load()),
		AgentMaxRSS: maxRSS(),

		DroppedOverBudget: s.overBudget.Load(),
	}
}

// sample decides whether a selected request is copied. The choice is spread evenly rather than
// drawn at random, so that 50 percent of 100 requests is 50 copies, every time.
func (m *Mirror) sample() bool {
	p := int64(m.cfg.Spec.Percent)
	if p == 0 || p == 100 {
		return true
	}
	m.sampleM.Lock()
	defer m.sampleM.Unlock()
	m.sampled++
	return m.sampled*p/100 > (m.sampled-1)*p/100
}

// reserve takes n bytes of the mirror's queue bound and of the agent's memory budget; a copy that
// does not fit is dropped, and the counter returned says why (nil: it fits).
func (m *Mirror) reserve(n int) *atomic.Int64 {
	if m.queued.Add(int64(n)) > maxQueued {
		m.queued.Add(-int64(n))
		return &m.stats.slow
	}
	if !m.budget.Reserve(n) {
		m.queued.Add(-int64(n))
		return &m.stats.overBudget
	}
	return nil
}

func (m *Mirror) release(n int) {
	m.queued.Add(-int64(n))
	m.budget.Release(n)
}

// dial opens one connection to the copy's destination.
func (m *Mirror) dial(ctx context.Context, f capture.Flow) (net.Conn, error) {
	if m.cfg.Spec.To == "" {
		return m.cfg.Open.OpenIncoming(ctx, wire.OpenRequest{
			Kind: wire.KindMirrored, Network: wire.NetworkTCP, Address: f.Server.String(),
			Port: int(f.Server.Port()), Peer: f.Client.String(), Compression: wire.SupportedCompression(),
		})
	}
	c, err := m.cfg.Dial.Dial(ctx, "tcp", m.cfg.Spec.To)
	if err != nil {
		return nil, err
	}
	key := c.LocalAddr().String()
	m.own.Store(key, struct{}{})
	return &ownConn{Conn: c, forget: func() { m.own.Delete(key) }}, nil
}

type ownConn struct {
	net.Conn
	once   sync.Once
	forget func()
}

func (c *ownConn) Close() error {
	c.once.Do(c.forget)
	return c.Conn.Close()
}

func (c *ownConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Sniff feeds the mirror from a capture (already filtered to the mirrored ports) until ctx ends.
func (m *Mirror) Sniff(ctx context.Context, c *capture.Capture) error {
	opts := capture.AssemblerOptions{}
	for p := range m.ports {
		opts.ServerPorts = append(opts.ServerPorts, p)
	}
	asm := capture.NewAssembler(m.Handler, opts)
	stop := make(chan struct{})
	var flushes sync.WaitGroup
	flushes.Add(1)
	go func() {
		defer flushes.Done()
		// Capture timestamps come from this machine's clock, so now is the capture's time too.
		t := time.NewTicker(flushEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-t.C:
				asm.Flush(now)
				if st, err := c.Stats(); err == nil {
					m.stats.kernelRecv.Store(int64(st.Received))
					m.stats.kernelDrops.Store(int64(st.Dropped))
				}
			}
		}
	}()
	err := c.Run(ctx, func(data []byte, ci gopacket.CaptureInfo) error {
		asm.Feed(data, ci)
		return nil
	})
	close(stop)
	flushes.Wait()
	asm.Close()
	if st, serr := c.Stats(); serr == nil {
		m.stats.kernelRecv.Store(int64(st.Received))
		m.stats.kernelDrops.Store(int64(st.Dropped))
	}
	return err
}

// maxRSS is the process's peak resident set (VmHWM), 0 when unknown.
func maxRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}
