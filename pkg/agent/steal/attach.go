package steal

import (
	"context"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/session"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/local/deliver"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// endWait bounds the wait for the agent to confirm that the steal is over.
const endWait = 3 * time.Second

// agentTunnel is what a steal needs of the live tunnel to the agent (tunnel.Tunnel): the request, and the
// streams of the stolen connections.
type agentTunnel interface {
	Steal(ctx context.Context, spec wire.StealSpec) (wire.VerbStream, error)
	deliver.Acceptor
}

// Attach starts the steal on a session that is up and serves it until the returned stop is called or
// ctx ends: stolen connections go to the local process through dial (nil dials LOCAL on
// --local-address; exec's reaches into its command's namespace), the agent's lines to out and its
// warnings to errOut.
func (o *Options) Attach(ctx context.Context, s *session.Session, dial deliver.Dialer, out, errOut io.Writer) (stop func(), err error) {
	pod := s.Target.Pod.Namespace + "/" + s.Target.Pod.Name
	return o.attach(ctx, s.Tunnel, pod, dial, newPrinter(out, errOut, o.Output == "json"), s.Announce)
}

func (o *Options) attach(ctx context.Context, t agentTunnel, pod string, dial deliver.Dialer, p *printer, announce func(format string, args ...any)) (stop func(), err error) {
	stop, ready, err := o.start(ctx, t, pod, dial, p)
	if err != nil {
		return nil, err
	}
	announce("stealing %s", o.describe())
	if !ready.KernelOwned {
		announce("%s", UnownedWarning)
	}
	if !o.StealProbes {
		for _, line := range passedByAddress(o.probes, o.stolen(), ready.ProbeSources) {
			announce("%s", line)
		}
	}
	return stop, nil
}

// start asks the agent of one pod to steal and, once its redirect is in place, delivers the stolen
// connections and prints the agent's lines until stop.
func (o *Options) start(ctx context.Context, t agentTunnel, pod string, dial deliver.Dialer, p *printer) (stop func(), ready wire.StealEvent, err error) {
	events, err := t.Steal(ctx, o.Spec())
	if err != nil {
		return nil, ready, fmt.Errorf("start stealing in pod %s: %w", pod, err)
	}
	er := wire.NewLineReader[wire.StealEvent](events)
	ready, err = readReady(er)
	if err != nil {
		events.Close()
		return nil, ready, fmt.Errorf("start stealing: %w", err)
	}
	sctx, cancel := context.WithCancel(ctx)
	srv := &deliver.Server{Kind: wire.KindIncoming, Locals: o.locals(), Dial: dial}
	go srv.Serve(sctx, t)
	printed := make(chan struct{})
	go func() {
		defer close(printed)
		printEvents(er, p)
	}()
	return func() {
		// The agent ends the stream once its redirect is gone: waiting for that means that when the
		// plugin exits, a new connection to the pod reaches the app, not a redirect being torn down.
		_ = events.CloseWrite()
		select {
		case <-printed:
		case <-time.After(endWait):
			p.flush()
		}
		cancel()
		events.Close()
	}, ready, nil
}

// Fanout is a steal over a workload session: one steal per pod, the stolen connections of every pod
// delivered to the same local ports, every line naming its pod.
type Fanout struct {
	o    *Options
	dial deliver.Dialer
	p    *printer

	mu sync.Mutex
	// unowned are the pods whose redirect the kernel does not own; sources are the probe sources the
	// agents reported, for the one line on probes passed by address.
	unowned []string
	sources map[string]bool
}

// NewFanout prepares a steal over a workload session: Join goes to session.StartWorkload, then
// Announce once it returns.
func (o *Options) NewFanout(dial deliver.Dialer, out, errOut io.Writer) *Fanout {
	return &Fanout{o: o, dial: dial, p: newPrinter(out, errOut, o.Output == "json"), sources: map[string]bool{}}
}

// Join starts the steal in one pod of the session.
func (f *Fanout) Join(ctx context.Context, p *session.Pod) (leave func(), err error) {
	pod := p.Target.Pod.Namespace + "/" + p.Name()
	stop, ready, err := f.o.start(ctx, p.Tunnel, pod, f.dial, f.p.forPod(p.Name()))
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !ready.KernelOwned {
		f.unowned = append(f.unowned, p.Name())
	}
	for _, s := range ready.ProbeSources {
		f.sources[s] = true
	}
	return stop, nil
}

// Announce says the steal is in place, on how many of the workload's pods.
func (f *Fanout) Announce(w *session.Workload) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w.Announce("stealing %s on %s", f.o.describe(), w.Coverage())
	if len(f.unowned) > 0 {
		sort.Strings(f.unowned)
		w.Announce("pods %s: %s", strings.Join(f.unowned, ", "), UnownedWarning)
	}
	if !f.o.StealProbes {
		sources := make([]string, 0, len(f.sources))
		for s := range f.sources {
			sources = append(sources, s)
		}
		sort.Strings(sources)
		for _, line := range passedByAddress(f.o.probes, f.o.stolen(), sources) {
			w.Announce("%s", line)
		}
	}
}

// UnownedWarning is said at the start of a redirect the kernel does not own (the agent's Ready has
// KernelOwned false): what stays in the pod if the agent container is killed as a whole.
const UnownedWarning = "this node's kernel cannot tie the redirect to the agent (no nftables table owner flag, Linux before 5.12): " +
	"if the whole agent container is killed (an OOM kill takes all its processes at once), its nftables table trafficlab_* stays in the pod, " +
	"redirecting nothing once no agent listens, until the next trafficlab session in the pod removes it"

// readReady waits for the agent's first event, which says the redirect is in place.
func readReady(er *wire.LineReader[wire.StealEvent]) (wire.StealEvent, error) {
	ev, err := er.Read()
	if err != nil {
		return wire.StealEvent{}, fmt.Errorf("read the agent's answer: %w", err)
	}
	if ev.Kind != wire.EventReady {
		return wire.StealEvent{}, fmt.Errorf("agent answered %q before %q: %w", ev.Kind, wire.EventReady, wire.ErrMalformed)
	}
	return ev, nil
}

func printEvents(er *wire.LineReader[wire.StealEvent], p *printer) {
	defer p.flush()
	for {
		ev, err := er.Read()
		if err != nil {
			return
		}
		p.event(ev)
	}
}

// stolen is the set of stolen pod ports.
func (o *Options) stolen() map[int]bool {
	stolen := map[int]bool{}
	for _, p := range o.ports {
		stolen[p.Port] = true
	}
	return stolen
}

// locals maps each stolen pod port to the local address that answers it.
func (o *Options) locals() map[int]string {
	locals := map[int]string{}
	for _, p := range o.ports {
		locals[p.Port] = net.JoinHostPort(o.LocalAddress, strconv.Itoa(p.Local))
	}
	return locals
}

func (o *Options) describe() string {
	sorted := append([]target.PortSpec(nil), o.ports...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Port < sorted[j].Port })
	var parts []string
	for _, p := range sorted {
		parts = append(parts, fmt.Sprintf("port %d -> %s", p.Port, net.JoinHostPort(o.LocalAddress, strconv.Itoa(p.Local))))
	}
	what := "every connection"
	if !o.filter.Empty() {
		what = "matching HTTP requests"
	}
	d := fmt.Sprintf("%s (%s", strings.Join(parts, ", "), what)
	if !o.StealProbes {
		d += ", probes excepted"
	}
	return d + ")"
}
