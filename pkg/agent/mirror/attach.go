package mirror

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

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
	spec := o.Spec()
	locals := map[int]string{}
	var parts []string
	for _, p := range o.ports {
		locals[p.Port] = net.JoinHostPort(o.LocalAddress, strconv.Itoa(p.Local))
		dest := locals[p.Port]
		if o.to != "" {
			dest = o.To + " (from the pod)"
		}
		parts = append(parts, fmt.Sprintf("port %d -> %s", p.Port, dest))
	}
	st, err := t.Mirror(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("start mirroring in pod %s: %w", pod, err)
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
	announce("mirroring %s (%s; the pod keeps answering)", strings.Join(parts, ", "), how)
	// The copies' answers go back to the agent one small frame each; spaced writes carry them
	// across the port-forward chain in batches (the agent does the same with the copies).
	t.SetWriteInterval(wire.MirrorWriteInterval)
	// Copies in flight when the user interrupts still finish: the agent drains them before it sends
	// the counts, so the local connections are served until then, whatever ctx says.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	srv := &deliver.Server{Kind: wire.KindMirrored, Locals: locals, Dial: dial}
	go srv.Serve(sctx, t)
	p := newPrinter(out, o.Output == "json", o.Diff)
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
				// A JSON consumer also gets the counts so far, every second; people get the summary.
				if ev.Stats != nil && ev.Stats.Partial && o.Output == "json" {
					p.print(ev)
				}
				continue
			}
			p.print(ev)
		}
	}()
	return func() {
		defer cancel()
		defer t.SetWriteInterval(0)
		_ = st.CloseWrite()
		defer st.Close()
		sum := cnt.wait(countsWait)
		if sum != nil && !sum.Partial && o.Output == "json" {
			p.print(wire.MirrorEvent{Kind: wire.EventStats, Stats: sum})
		}
		p.flush()
		switch {
		case sum == nil:
			fmt.Fprintf(errOut, "warning: the agent sent no counts for the mirror in %s\n", countsWait)
		case sum.Partial:
			fmt.Fprintf(errOut, "warning: the mirror's final counts did not come in %s (the node is busy); these are from the agent's last report\n", countsWait)
			fmt.Fprintln(errOut, sum.Summary())
		default:
			fmt.Fprintln(errOut, sum.Summary())
		}
	}, nil
}
