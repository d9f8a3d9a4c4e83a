package attach

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/mirror"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/netfilter"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/sniff"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/steal"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// eventFlush is how long mirror events may wait to share a write: at thousands of requests a second,
// one tunnel write per event would cost more than the mirror itself.
const eventFlush = 50 * time.Millisecond

// countsEvery is how often the counts so far go to the plugin, which reports the last of them when
// the final counts are late.
const countsEvery = time.Second

// serveMirror runs the mirror the plugin asked for while its stream lives: events go on the stream as
// JSON lines, with the counts so far every second and the final counts last. The stream is accepted only once the capture or the
// redirect is in place, so "mirroring" is true when the plugin prints it.
func (s *server) serveMirror(ctx context.Context, in *wire.Incoming) {
	if in.Request().Resume {
		s.resumeMirror(ctx, in)
		return
	}
	spec := *in.Request().Mirror
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan wire.MirrorEvent, 4096)
	var dropped atomic.Int64
	// A redirect mirror's relays outlive the final counts (the steal drains them after), so their
	// copies may still report once events are closed: those are dropped, never sent on a closed
	// channel.
	var evMu sync.Mutex
	evClosed := false
	// The mirror outlives the plugin's stream by its drain: copies in flight when the plugin ends
	// the mirror are finished (Drain) before their context goes.
	m, err := mirror.New(context.WithoutCancel(ctx), mirror.Config{
		Spec: spec, Session: s.id, Open: s, Dial: mirrorDialer{marked: !spec.Sniffs()}, Log: s.log, Budget: s.cfg.Budget,
		Events: func(e wire.MirrorEvent) {
			s.live.mirrorEvent(e)
			evMu.Lock()
			defer evMu.Unlock()
			if evClosed {
				return
			}
			select {
			case events <- e:
			default:
				dropped.Add(1)
			}
		},
	})
	if err != nil {
		_ = in.Reject(err)
		return
	}
	var run func() error
	// st is a redirect mirror's redirect. It is closed after the final counts are sent: its end
	// drains the connections it relays to the app for up to wire.DrainWindow, which the plugin,
	// waiting for the counts, must not wait for; the copies stop with the counts.
	var st *steal.Lease
	if spec.Sniffs() {
		capSpec := wire.DumpSpec{Ports: spec.Ports, Filter: "tcp", Mesh: spec.Mesh}
		c, err := sniff.Open(capSpec, s.cfg.DataPorts())
		if err != nil {
			s.log.Warn("mirror refused", "ports", spec.Ports, "err", err)
			_ = in.Reject(err)
			return
		}
		run = func() error {
			defer s.followDataPorts(c, capSpec)()
			return m.Sniff(ctx, c)
		}
	} else {
		if !s.stealing.CompareAndSwap(false, true) {
			_ = in.Reject(fmt.Errorf("this session already steals or mirrors with a redirect: %w", wire.ErrUnsupported))
			return
		}
		defer s.stealing.Store(false)
		mesh, err := s.mesh(spec.Mesh, spec.Ports)
		if err != nil {
			s.log.Warn("mirror refused", "ports", spec.Ports, "err", err)
			_ = in.Reject(err)
			return
		}
		// A redirect mirror claims its ports like a steal, and shares each port's dispatcher with the
		// filtered steals and the other redirect mirrors of it (steal.Hub); a dispatcher it starts
		// keeps the pod's probes with the app for the steals that join it.
		st, _, err = s.cfg.Steals.Mirror(ctx, steal.SessionConfig{Session: s.id, User: s.user, Host: s.host}, steal.Config{
			ID: s.id, Spec: wire.StealSpec{Ports: spec.Ports, AllowUnownedRedirect: spec.AllowUnownedRedirect, KeepOpen: spec.KeepOpen, Probes: spec.Probes}, Open: s, Log: s.log, Tee: m.Handler,
			Budget: s.cfg.Budget, Mesh: mesh,
		})
		if err != nil {
			s.log.Warn("mirror refused", "ports", spec.Ports, "err", err)
			_ = in.Reject(err)
			return
		}
		run = func() error {
			<-ctx.Done()
			return nil
		}
	}
	closeRedirect := func() {
		if st == nil {
			return
		}
		if err := st.Close(); err != nil {
			s.log.Warn("end the mirror's redirect", "err", err)
		}
	}
	stream, err := in.AcceptWith(wire.CompressionNone)
	if err != nil {
		cancel()
		_ = run()
		closeRedirect()
		return
	}
	s.mirroring.Add(1)
	defer s.mirroring.Add(-1)
	defer s.mirrorStarted()()
	if err := lowerPriority(); err != nil {
		s.log.Warn("mirror keeps the agent's priority", "err", err)
	}
	s.log.Info("mirroring", "ports", spec.Ports, "mode", spec.Mode, "to", spec.To)
	counts := func(partial bool) wire.MirrorStats {
		st := m.Stats()
		st.EventsDropped, st.Partial = dropped.Load(), partial
		return st
	}
	// out is where events go: the plugin's current stream, nil while it is away (events then wait
	// in their buffer, or are dropped and counted past it).
	type output struct {
		stream *wire.Stream
		bw     *bufio.Writer
		w      *wire.LineWriter[wire.MirrorEvent]
		err    error
	}
	var outMu sync.Mutex
	var out *output
	use := func(st *wire.Stream) {
		outMu.Lock()
		defer outMu.Unlock()
		if out != nil {
			out.stream.Close()
			out = nil
		}
		if st != nil {
			bw := bufio.NewWriterSize(st, 64<<10)
			out = &output{stream: st, bw: bw, w: wire.NewLineWriter[wire.MirrorEvent](bw)}
		}
	}
	write := func(e *wire.MirrorEvent, flush bool) {
		outMu.Lock()
		defer outMu.Unlock()
		if out == nil || out.err != nil {
			return
		}
		if e != nil {
			out.err = out.w.Write(*e)
		}
		if flush && out.err == nil {
			out.err = out.bw.Flush()
		}
	}
	use(stream)
	defer use(nil)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(eventFlush)
		defer t.Stop()
		lastCounts := time.Now()
		for {
			select {
			case e, ok := <-events:
				if !ok {
					return
				}
				write(&e, false)
			case now := <-t.C:
				var sofar *wire.MirrorEvent
				if now.Sub(lastCounts) >= countsEvery {
					lastCounts = now
					c := counts(true)
					sofar = &wire.MirrorEvent{Kind: wire.EventStats, Stats: &c}
				}
				write(sofar, true)
			}
		}
	}()
	// The plugin never writes on its stream: its end (EOF) is the mirror's end. In a resumable
	// session its abort is the tunnel's loss: the mirror goes on, its copies to the plugin dropped
	// and counted (mirror.SetAway), until the resumed plugin opens its stream again
	// (resumeMirror) or the session ends.
	watch := func(st *wire.Stream) <-chan error {
		gone := make(chan error, 1)
		go func() {
			_, err := io.Copy(io.Discard, st)
			gone <- err
		}()
		return gone
	}
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		gone := watch(stream)
		for {
			select {
			case err := <-gone:
				if err == nil || s.token.IsZero() {
					cancel()
					return
				}
				gone = nil
				m.SetAway(true)
				use(nil)
				s.log.Info("mirror away: copies to the plugin are dropped until it is back", "ports", spec.Ports, "why", err)
			case re := <-s.mirrorResume:
				ns, err := re.AcceptWith(wire.CompressionNone)
				if err != nil {
					continue
				}
				use(ns)
				gone = watch(ns)
				m.SetAway(false)
				s.log.Info("mirror resumed", "ports", spec.Ports)
			case <-ctx.Done():
				return
			}
		}
	}()
	err = run()
	<-loopDone
	// Requests already queued still get their copy, briefly: the plugin is waiting for the counts.
	m.Drain(2 * time.Second)
	evMu.Lock()
	evClosed = true
	close(events)
	evMu.Unlock()
	wg.Wait()
	stats := counts(false)
	s.log.Info("mirror ended", "stats", stats, "err", err)
	write(&wire.MirrorEvent{Kind: wire.EventStats, Stats: &stats}, true)
	outMu.Lock()
	if out != nil {
		_ = out.stream.CloseWrite()
	}
	outMu.Unlock()
	closeRedirect()
}

// resumeMirror hands a resumed plugin's mirror stream to the session's running mirror.
func (s *server) resumeMirror(ctx context.Context, in *wire.Incoming) {
	handOver(ctx, in, "mirror", s.mirroring.Load() != 0, s.mirrorResume)
}

// mirrorDialer dials a mirror's in-cluster destination (--to). In redirect mode its connections to
// the pod itself carry the pass-through mark, so that they are not redirected back; those that
// leave the pod do not, and go out as the pod's other connections do (through a mesh's sidecar,
// with the pod's identity).
type mirrorDialer struct{ marked bool }

func (d mirrorDialer) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	nd := &net.Dialer{Timeout: 10 * time.Second}
	if d.marked {
		pass := netfilter.PassDialer(nd.Timeout, nil).Control
		nd.Control = func(network, address string, rc syscall.RawConn) error {
			local, err := podAddress(address)
			if err != nil || !local {
				return err
			}
			return pass(network, address, rc)
		}
	}
	c, err := nd.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("dial the mirror's destination %s: %w", address, err)
	}
	return c, nil
}

// podAddress reports whether address (IP:port, as a dialer's Control gets it) is one of the
// calling thread's network namespace's own addresses: loopback, or on one of its interfaces.
func podAddress(address string) (bool, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return false, fmt.Errorf("mirror destination %q: %w", address, err)
	}
	a := ap.Addr().Unmap()
	if a.IsLoopback() {
		return true, nil
	}
	addrs, err := netfilter.LocalAddrs()
	if err != nil {
		return false, err
	}
	return slices.Contains(addrs, a), nil
}

// mirrorNice is the scheduling priority of a session that mirrors: a copy is best effort, and on a
// busy node the pod's app must win the CPU, not the agent reassembling its traffic. Raising one's
// own nice value needs no privilege. It orders the agent's threads against other processes of the
// agent's container only: the kernel weighs the agent's container against the app's by their
// cgroups, not by nice (SCHED_IDLE, which also yields to the app's wake-ups, measured no better).
const mirrorNice = 10

// lowerPriority renices every thread of the agent's session process; threads started later inherit
// the value from the thread that creates them.
func lowerPriority() error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("list the session's threads: %w", err)
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, mirrorNice); err != nil {
			return fmt.Errorf("renice thread %d: %w", tid, err)
		}
	}
	return nil
}
