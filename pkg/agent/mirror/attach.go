package mirror

import (
	"context"
	"fmt"
	"io"
	"net"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/session"
	"github.com/trafficlab/kubectl-trafficlab/pkg/local/deliver"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// countsWait bounds the wait for the agent's counts after an interrupt: it first finishes the copies
// in flight (up to 2 s), and a busy agent is slower still.
const countsWait = 10 * time.Second

// agentTunnel is what a mirror needs of the live tunnel to the agent (tunnel.Tunnel): the request, the
// streams of the copies, and the spacing of the writes that carry the copies' answers back.
type agentTunnel interface {
	Mirror(ctx context.Context, spec wire.MirrorSpec) (wire.VerbStream, error)
	deliver.Acceptor
	SetWriteInterval(d time.Duration)
}

// Attach starts the mirror on a session that is up and serves it until the returned stop, which
// prints the counts to errOut, is called: the copies go to the local process through dial (nil dials
// LOCAL on --local-address; exec's reaches into its command's namespace), one line per copied
// request to out.
func (o *Options) Attach(ctx context.Context, s *session.Session, dial deliver.Dialer, out, errOut io.Writer) (stop func(), err error) {
	pod := s.Target.Pod.Namespace + "/" + s.Target.Pod.Name
	return o.attach(ctx, s.Tunnel, pod, dial, out, errOut, s.Announce)
}

func (o *Options) attach(ctx context.Context, t agentTunnel, pod string, dial deliver.Dialer, out, errOut io.Writer, announce func(format string, args ...any)) (stop func(), err error) {
	m, err := o.start(ctx, t, pod, dial, newPrinter(out, o.Output == "json", o.Diff))
	if err != nil {
		return nil, err
	}
	announce("mirroring %s", o.describe())
	return func() {
		sum := m.stop()
		m.p.flush()
		summarize(errOut, "", sum)
	}, nil
}

// describe says what is mirrored where, and how.
func (o *Options) describe() string {
	spec := o.Spec()
	var parts []string
	for _, p := range o.ports {
		dest := net.JoinHostPort(o.LocalAddress, strconv.Itoa(p.Local))
		if o.to != "" {
			dest = o.To + " (from the pod)"
		}
		parts = append(parts, fmt.Sprintf("port %d -> %s", p.Port, dest))
	}
	how := "sniffing"
	if wire.SniffInterface(spec.Mesh, spec.Ports) == wire.Loopback {
		how = fmt.Sprintf("sniffing lo, where the %s sidecar hands the app plaintext", spec.Mesh.Name)
	}
	if o.Mode == wire.MirrorRedirect {
		how = "redirect"
	}
	if o.Percent < 100 {
		how += fmt.Sprintf(", %d%% of requests", o.Percent)
	}
	return fmt.Sprintf("%s (%s; the pod keeps answering)", strings.Join(parts, ", "), how)
}

// summarize writes the counts of one pod (pod empty: the session's only one, or the total) on errOut.
func summarize(errOut io.Writer, pod string, r result) {
	prefix := ""
	if pod != "" {
		prefix = pod + ": "
	}
	switch {
	case r.sum == nil:
		fmt.Fprintf(errOut, "warning: %sthe agent sent no counts for the mirror in %s\n", prefix, countsWait)
	case r.sum.Partial && r.late:
		fmt.Fprintf(errOut, "warning: %sthe mirror's final counts did not come in %s (the node is busy); these are from the agent's last report\n", prefix, countsWait)
		fmt.Fprintf(errOut, "%s%s\n", prefix, r.sum.Summary())
	default:
		fmt.Fprintf(errOut, "%s%s\n", prefix, r.sum.Summary())
	}
}

// result is the end of one pod's mirror: its counts, and whether the final ones were late.
type result struct {
	sum  *wire.MirrorStats
	late bool
}

// running is one pod's mirror.
type running struct {
	p    *printer
	stop func() result
}

// start asks the agent of one pod to mirror, delivers the copies and prints its lines until stop,
// which returns the pod's counts.
func (o *Options) start(ctx context.Context, t agentTunnel, pod string, dial deliver.Dialer, p *printer) (*running, error) {
	spec := o.Spec()
	locals := map[int]string{}
	for _, p := range o.ports {
		locals[p.Port] = net.JoinHostPort(o.LocalAddress, strconv.Itoa(p.Local))
	}
	st, err := t.Mirror(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("start mirroring in pod %s: %w", pod, err)
	}
	// Copies leave the agent in batches, sparing CPU on the pod's node.
	t.SetWriteInterval(wire.MirrorWriteInterval)
	// Copies in flight are delivered until stop, not cut by ctx's end.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	srv := &deliver.Server{Kind: wire.KindMirrored, Locals: locals, Dial: dial}
	go srv.Serve(sctx, t)
	cnt := newCounts()
	go func() {
		defer cnt.end()
		er := wire.NewLineReader[wire.MirrorEvent](st)
		for {
			ev, err := er.Read()
			if err != nil {
				return
			}
			if ev.Kind == wire.EventStats {
				cnt.add(ev.Stats)
				if ev.Stats != nil && ev.Stats.Partial && o.Output == "json" {
					p.print(ev)
				}
				continue
			}
			p.print(ev)
		}
	}()
	return &running{p: p, stop: func() result {
		defer cancel()
		defer t.SetWriteInterval(0)
		// Half-close: the agent stops, sends its final counts and closes its side.
		_ = st.CloseWrite()
		defer st.Close()
		sum := cnt.wait(countsWait)
		if sum != nil && !sum.Partial && o.Output == "json" {
			p.print(wire.MirrorEvent{Kind: wire.EventStats, Stats: sum})
		}
		return result{sum: sum, late: sum != nil && sum.Partial}
	}}, nil
}

// Fanout is a mirror over a workload session: one mirror per pod, every copy delivered to the same
// local ports, every line naming its pod, and the counts per pod and in total at the end.
type Fanout struct {
	o      *Options
	dial   deliver.Dialer
	p      *printer
	errOut io.Writer
	client kubernetes.Interface
	loop   chan error

	mu      sync.Mutex
	results map[string]result
}

// NewFanout prepares a mirror over a workload session: Join goes to session.StartWorkload, then
// Announce once it returns; Loop ends the session when --to comes to lead back to a mirrored pod.
func (o *Options) NewFanout(client kubernetes.Interface, dial deliver.Dialer, out, errOut io.Writer) *Fanout {
	return &Fanout{o: o, dial: dial, p: newPrinter(out, o.Output == "json", o.Diff), errOut: errOut, client: client,
		loop: make(chan error, 1), results: map[string]result{}}
}

// Join starts the mirror in one pod of the session; a --to that leads back to this pod keeps it out.
func (f *Fanout) Join(ctx context.Context, p *session.Pod) (leave func(), err error) {
	var guard *loopGuard
	if f.o.guard != nil {
		guard = f.o.guard.forPod(p.Target.Pod)
		if _, err := guard.check(ctx, f.client); err != nil {
			return nil, err
		}
	}
	m, err := f.o.start(ctx, p.Tunnel, p.Target.Pod.Namespace+"/"+p.Name(), f.dial, f.p.forPod(p.Name()))
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		if err := guard.watch(wctx, f.client); err != nil {
			select {
			case f.loop <- err:
			default:
			}
		}
	}()
	return func() {
		cancel()
		r := m.stop()
		f.mu.Lock()
		f.results[p.Name()] = r
		f.mu.Unlock()
	}, nil
}

// Loop gets the error to end the session with once --to leads back to one of the mirrored pods.
func (f *Fanout) Loop() <-chan error { return f.loop }

// Announce says the mirror is in place, on how many of the workload's pods.
func (f *Fanout) Announce(w *session.Workload) {
	w.Announce("mirroring %s on %s", f.o.describe(), w.Coverage())
}

// Summarize writes the counts of each pod that was mirrored, and their total, once the session has
// ended (every pod has left).
func (f *Fanout) Summarize() {
	f.p.flush()
	f.mu.Lock()
	defer f.mu.Unlock()
	names := make([]string, 0, len(f.results))
	for n := range f.results {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) == 1 {
		// One pod's counts are the session's: the line reads as it always did.
		summarize(f.errOut, "", f.results[names[0]])
		return
	}
	var total wire.MirrorStats
	for _, n := range names {
		r := f.results[n]
		summarize(f.errOut, "pod "+n, r)
		if r.sum != nil {
			addStats(&total, r.sum)
		}
	}
	if len(names) > 1 {
		fmt.Fprintf(f.errOut, "total (%d pods): %s\n", len(names), total.Summary())
	}
}

// addStats adds every count of s to total, the agents' peak memory excepted, which is the largest
// one's. The counters are summed field by field, so that a counter added to wire.MirrorStats is in the
// total without a change here.
func addStats(total, s *wire.MirrorStats) {
	peak := max(total.AgentMaxRSS, s.AgentMaxRSS)
	tv, sv := reflect.ValueOf(total).Elem(), reflect.ValueOf(s).Elem()
	for i := range tv.NumField() {
		switch f := tv.Field(i); f.Kind() {
		case reflect.Int64:
			f.SetInt(f.Int() + sv.Field(i).Int())
		case reflect.Uint64:
			f.SetUint(f.Uint() + sv.Field(i).Uint())
		}
	}
	total.AgentMaxRSS = peak
	total.Partial = total.Partial || s.Partial
}
