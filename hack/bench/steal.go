package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// stealOptions are the steal suite's flags.
type stealOptions struct {
	vegeta       string
	requests     int
	rounds       int
	filter       string
	rate         int
	conns        int
	rateDuration time.Duration
	stepDuration time.Duration
	bisections   int
	maxP99       time.Duration
	minSuccess   float64
}

func (o *stealOptions) addFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.vegeta, "vegeta", "vegeta", "vegeta binary for the filter load (hack/tools/install.sh vegeta)")
	fs.IntVar(&o.requests, "steal-requests", 1000, "steal latency: sequential requests per path, mode and round")
	fs.IntVar(&o.rounds, "steal-rounds", 3, "steal latency: rounds; each measures every path once, so drift on the machine hits all paths alike")
	fs.StringVar(&o.filter, "steal-filter", "^X-Steal: yes$", "steal filter: --header-filter the load never matches")
	fs.IntVar(&o.rate, "rate", 2000, "steal filter: fixed offered rate, requests per second")
	fs.IntVar(&o.conns, "max-connections", 256, "steal filter: vegeta's connection cap")
	fs.DurationVar(&o.rateDuration, "rate-duration", 30*time.Second, "steal filter: length of each fixed-rate run")
	fs.DurationVar(&o.stepDuration, "step-duration", 5*time.Second, "steal filter: length of each step of the highest-rate search")
	fs.IntVar(&o.bisections, "bisections", 3, "steal filter: bisection steps after the first failing doubling")
	fs.DurationVar(&o.maxP99, "sustain-p99", 20*time.Millisecond, "steal filter: a rate is sustained only with p99 at most this")
	fs.Float64Var(&o.minSuccess, "sustain-success", 0.999, "steal filter: a rate is sustained only with at least this success ratio")
}

func (o *stealOptions) check() error {
	p, err := exec.LookPath(o.vegeta)
	if err != nil {
		return fmt.Errorf("--vegeta %q: %w (build it with hack/tools/install.sh vegeta)", o.vegeta, err)
	}
	o.vegeta = p
	if o.requests < 100 || o.rounds < 1 || o.rate < 1 {
		return errors.New("--steal-requests must be at least 100, --steal-rounds and --rate at least 1")
	}
	return nil
}

// localAnswer marks responses of the bench's own server, so every check can tell which side answered.
const localAnswer = "X-Bench-Answer"

// localServer stands in for the developer's process that a steal sends traffic to. It answers like
// the echo peer's /healthz, so both ends of the latency comparison serve the same bytes.
type localServer struct {
	port   int
	served atomic.Int64
	srv    *http.Server
}

func startLocal() (*localServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &localServer{port: ln.Addr().(*net.TCPAddr).Port}
	l.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		l.served.Add(1)
		w.Header().Set(localAnswer, "local")
		_, _ = io.WriteString(w, "ok\n")
	})}
	go func() { _ = l.srv.Serve(ln) }()
	return l, nil
}

// stealRE matches the progress line the plugin prints once the agent's redirect is in place.
var stealRE = regexp.MustCompile(`stealing port`)

// stealProc is one running `kubectl trafficlab steal`.
type stealProc struct {
	cmd      *exec.Cmd
	exited   chan struct{}
	err      error        // the exit error, valid after exited is closed
	lines    atomic.Int64 // per-request/connection lines on stdout
	started  time.Time
	readyIn  time.Duration // until the "stealing port" line
	answerIn time.Duration // until the first answer through the steal

	mu      sync.Mutex
	other   []string       // stderr lines other than progress, numbers masked, in order of first sight
	counted map[string]int // how often each of them came
}

var progressRE, digitsRE = regexp.MustCompile(`^\[ *[0-9.]+s\] `), regexp.MustCompile(`[0-9]+`)

// note keeps a stderr line that is not a progress line: warnings and errors are part of the result.
func (p *stealProc) note(line string) {
	if progressRE.MatchString(line) {
		return
	}
	// Masking numbers makes "warning: 14 events dropped" and "warning: 2666 events dropped" one entry.
	k := digitsRE.ReplaceAllString(line, "N")
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.counted[k] == 0 {
		p.other = append(p.other, k)
	}
	p.counted[k]++
}

// messages returns the kept stderr lines with their counts.
func (p *stealProc) messages() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.other))
	for _, k := range p.other {
		out = append(out, fmt.Sprintf("%q ×%d", k, p.counted[k]))
	}
	return out
}

// startSteal runs the steal without -q: its "stealing port" progress line is the plugin's own signal
// that the redirect is in place (-q silences every progress line, that one included). The steal is
// then checked from the outside too: it counts as ready only once a new connection to the pod IP is
// answered by the local server; that request carries hdr, which a filtered steal must match.
func startSteal(ctx context.Context, ns, podURL string, hdr http.Header, local int, extra ...string) (*stealProc, error) {
	args := append([]string{"trafficlab", "steal", "-n", ns, "pod/echo", "--port", fmt.Sprintf("8080:%d", local)}, extra...)
	p := &stealProc{cmd: exec.CommandContext(ctx, "kubectl", args...), exited: make(chan struct{}), started: time.Now(), counted: map[string]int{}}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	ready := make(chan struct{})
	// Wait may close the pipes only after both readers are done with them.
	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		sc := bufio.NewScanner(stderr)
		found := false
		for sc.Scan() {
			fmt.Fprintf(os.Stderr, "  steal: %s\n", sc.Text())
			p.note(sc.Text())
			if !found && stealRE.MatchString(sc.Text()) {
				found = true
				close(ready)
			}
		}
	}()
	go func() {
		defer readers.Done()
		// One line per stolen request or connection; draining them keeps the plugin from blocking.
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines.Add(1)
		}
	}()
	go func() {
		readers.Wait()
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	select {
	case <-ready:
		p.readyIn = time.Since(p.started)
	case <-p.exited:
		if p.err == nil {
			return nil, fmt.Errorf("kubectl %s exited before it was stealing", strings.Join(args, " "))
		}
		return nil, fmt.Errorf("kubectl %s exited before it was stealing: %w", strings.Join(args, " "), p.err)
	case <-time.After(2 * time.Minute):
		_ = p.stop()
		return nil, errors.New("steal not ready within 2m")
	}
	if err := waitAnswer(ctx, podURL, hdr, true, p.exited); err != nil {
		_ = p.stop()
		return nil, err
	}
	p.answerIn = time.Since(p.started)
	return p, nil
}

// stop interrupts the plugin like Ctrl-C does and returns how it exited.
func (p *stealProc) stop() error {
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return errors.New("steal did not exit within 15s of an interrupt")
	}
	return p.err
}

// waitAnswer polls url, each time on a new connection (open ones keep their side), until it is
// answered by the local server (wantLocal) or by the pod's app.
func waitAnswer(ctx context.Context, url string, hdr http.Header, wantLocal bool, abort <-chan struct{}) error {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	deadline := time.Now().Add(time.Minute)
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := c.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			local := resp.Header.Get(localAnswer) != ""
			if resp.StatusCode == http.StatusOK && local == wantLocal {
				return nil
			}
			last = fmt.Sprintf("%s, answered by the local server: %v", resp.Status, local)
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("GET %s (%v): no answer from the %s within 1m; last: %s", url, hdr, side(wantLocal), last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-abort:
			return fmt.Errorf("GET %s: the steal exited while waiting for the %s to answer; last: %s", url, side(wantLocal), last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func exitStatus(err error) string {
	if err == nil {
		return "status 0"
	}
	return err.Error()
}

func side(local bool) string {
	if local {
		return "local server"
	}
	return "pod's app"
}

// pathLatency is one row of the steal latency table: every sample of every round.
type pathLatency struct {
	name        string
	keep, fresh []time.Duration
	disturbed   int // runs kept although other processes were busy
}

// stealSuite measures the steal. Latency: the same small GET through four paths, round after round:
// the pod IP directly (the floor: no tunnel), kubectl port-forward over each of its transports to the
// pod's app (host -> apiserver -> kubelet -> containerd -> pod), and the pod IP while stolen (pod ->
// agent -> containerd -> kubelet -> apiserver -> plugin -> local server: the same hops, the other way).
// The steal also takes connections that kubectl port-forward opens inside the pod, so the first three
// run while no steal is active.
// Filter: vegeta at a fixed rate to the pod IP with and without a filtered steal whose filter the load
// never matches, so every request goes through the agent's HTTP engine to the app; then the highest
// rate each path sustains.
func stealSuite(ctx context.Context, m *machine, ns string, o stealOptions) (string, error) {
	podURL, err := echoPodURL(ctx, ns)
	if err != nil {
		return "", err
	}
	local, err := startLocal()
	if err != nil {
		return "", err
	}
	defer local.srv.Close()

	lat, notes, err := stealLatency(ctx, m, ns, podURL, local, o)
	if err != nil {
		return "", err
	}
	fr, err := filterLoad(ctx, m, ns, podURL, local, o)
	if err != nil {
		return "", err
	}
	return renderSteal(lat, notes, fr, o), nil
}

func stealLatency(ctx context.Context, m *machine, ns, podURL string, local *localServer, o stealOptions) ([]*pathLatency, []string, error) {
	pfCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	direct := &pathLatency{name: "direct to the pod IP (no tunnel)"}
	// Both of kubectl's transports, as in the forward suite: renderSteal's ratios name the one they are against.
	var pfs [2]*pathLatency
	var pfURLs [2]string
	for i, f := range kubectlForwarders(ns) {
		port, stop, err := startForwarder(pfCtx, f)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", f.name, err)
		}
		defer stop()
		pfURLs[i] = fmt.Sprintf("http://127.0.0.1:%d", port)
		if err := waitHTTP(ctx, pfURLs[i]+"/healthz"); err != nil {
			return nil, nil, err
		}
		pfs[i] = &pathLatency{name: f.name + " -> the pod's app"}
	}
	stolen := &pathLatency{name: "pod IP -> trafficlab steal -> local server"}
	var notes []string
	// sample adds one round of both modes to a row and checks which side answered all of them.
	sample := func(row *pathLatency, url string, wantLocal bool) error {
		for _, keep := range []bool{true, false} {
			what := fmt.Sprintf("%s, keep-alive %v", row.name, keep)
			var s []time.Duration
			use, err := m.run(ctx, what, func() (float64, error) {
				before := local.served.Load()
				var err error
				if s, err = sampleLatency(ctx, url+"/healthz", o.requests, keep); err != nil {
					return 0, fmt.Errorf("%s: %w", row.name, err)
				}
				n := local.served.Load() - before
				if want := int64(o.requests + 10); (wantLocal && n != want) || (!wantLocal && n != 0) {
					return 0, fmt.Errorf("%s: the local server answered %d of %d requests", row.name, n, o.requests+10)
				}
				return 0, nil // the client is the bench itself, a group of its own
			})
			if err != nil {
				return err
			}
			if use.disturbed {
				row.disturbed++
			}
			if keep {
				row.keep = append(row.keep, s...)
			} else {
				row.fresh = append(row.fresh, s...)
			}
			p50, p99 := percentiles(append([]time.Duration(nil), s...))
			fmt.Fprintf(os.Stderr, "%s: p50 %s, p99 %s\n", what, ms(p50), ms(p99))
		}
		return nil
	}
	for round := range o.rounds {
		fmt.Fprintf(os.Stderr, "steal latency round %d/%d\n", round+1, o.rounds)
		if err := sample(direct, podURL, false); err != nil {
			return nil, nil, err
		}
		for i, pf := range pfs {
			if err := sample(pf, pfURLs[i], false); err != nil {
				return nil, nil, err
			}
		}
		p, err := startSteal(ctx, ns, podURL+"/healthz", nil, local.port)
		if err != nil {
			return nil, nil, err
		}
		note := fmt.Sprintf("round %d: steal printed \"stealing port\" after %.2fs, first answer through it after %.2fs",
			round+1, p.readyIn.Seconds(), p.answerIn.Seconds())
		if err := sample(stolen, podURL, true); err != nil {
			_ = p.stop()
			return nil, nil, err
		}
		lines := p.lines.Load()
		interrupted := time.Now()
		exitErr := p.stop()
		exited := time.Since(interrupted)
		// The agent removes the redirect when the session ends; until then new connections still land
		// in the tunnel, so the next round waits for the app to answer again.
		if err := waitAnswer(ctx, podURL+"/healthz", nil, false, nil); err != nil {
			return nil, nil, fmt.Errorf("after the steal ended: %w", err)
		}
		notes = append(notes, note+fmt.Sprintf("; %d lines on stdout; after Ctrl-C it exited in %.2fs (%s) and the app answered again after %.2fs",
			lines, exited.Seconds(), exitStatus(exitErr), time.Since(interrupted).Seconds()))
		if msgs := p.messages(); len(msgs) > 0 {
			notes[len(notes)-1] += "; stderr besides progress: " + strings.Join(msgs, "; ")
		}
	}
	return []*pathLatency{direct, pfs[0], pfs[1], stolen}, notes, nil
}

// fixedRun is one fixed-rate attack with the machine's CPU use meanwhile.
type fixedRun struct {
	r   vegetaReport
	cpu cpuUse
}

// filterResult holds the fixed-rate and highest-rate runs of the filter comparison.
type filterResult struct {
	direct, filtered         fixedRun
	maxDirect, maxFiltered   int
	stepsDirect, stepsFilter []string
	stealLines               int64
	stealStderr              []string // what the filtered steal printed besides its progress lines
}

func filterLoad(ctx context.Context, m *machine, ns, podURL string, local *localServer, o stealOptions) (filterResult, error) {
	var fr filterResult
	url := podURL + "/"
	fixed := func(what string) (fixedRun, error) {
		fmt.Fprintf(os.Stderr, "filter: vegeta %d/s for %s %s\n", o.rate, o.rateDuration, what)
		var fx fixedRun
		var err error
		fx.cpu, err = m.run(ctx, what, func() (float64, error) {
			var err error
			fx.r, err = attack(ctx, []string{o.vegeta}, url, o.rate, o.conns, o.rateDuration)
			return fx.r.clientCores, err
		})
		if err != nil {
			return fx, err
		}
		fmt.Fprintf(os.Stderr, "  %s\n  cpu: %s\n", fx.r, fx.cpu)
		return fx, nil
	}
	var err error
	if fr.direct, err = fixed("directly to the app"); err != nil {
		return fr, err
	}

	p, err := startSteal(ctx, ns, url, http.Header{"X-Steal": {"yes"}}, local.port, "--header-filter", o.filter)
	if err != nil {
		return fr, err
	}
	defer func() { _ = p.stop() }()
	// The load must not match: one request without the header has to reach the app.
	if err := waitAnswer(ctx, url, nil, false, p.exited); err != nil {
		return fr, fmt.Errorf("unmatched request during the filtered steal: %w", err)
	}
	before := local.served.Load()
	if fr.filtered, err = fixed("through the filter (unmatched)"); err != nil {
		return fr, err
	}
	fmt.Fprintln(os.Stderr, "filter: highest sustained rate through the filter")
	fr.maxFiltered, fr.stepsFilter, err = maxRate(ctx, m, url, o, p.exited)
	if err != nil {
		return fr, err
	}
	if n := local.served.Load() - before; n != 0 {
		return fr, fmt.Errorf("the filter stole %d requests without the header", n)
	}
	if err := p.stop(); err != nil {
		fmt.Fprintf(os.Stderr, "filtered steal exited with %v after an interrupt\n", err)
	}
	fr.stealLines = p.lines.Load()
	fr.stealStderr = p.messages()
	if err := waitAnswer(ctx, url, http.Header{"X-Steal": {"yes"}}, false, nil); err != nil {
		return fr, fmt.Errorf("after the filtered steal ended: %w", err)
	}
	fmt.Fprintln(os.Stderr, "filter: highest sustained rate directly to the app")
	fr.maxDirect, fr.stepsDirect, err = maxRate(ctx, m, url, o, nil)
	return fr, err
}

// sustained says whether one run kept up with its offered rate: almost every request succeeded,
// vegeta could send at the rate (else the client is the limit), the answers kept pace (throughput
// counts the wait for the last answer, so a growing backlog lowers it), and the tail stayed bounded.
func sustained(r vegetaReport, rate int, o stealOptions) (bool, string) {
	switch {
	case r.Success < o.minSuccess:
		return false, fmt.Sprintf("success %.4f", r.Success)
	case r.Rate < 0.95*float64(rate):
		return false, fmt.Sprintf("vegeta sent only %.0f/s", r.Rate)
	case r.Throughput < 0.95*float64(rate):
		return false, fmt.Sprintf("throughput %.0f/s", r.Throughput)
	case r.p99() > o.maxP99:
		return false, fmt.Sprintf("p99 %s", ms(r.p99()))
	}
	return true, fmt.Sprintf("p99 %s", ms(r.p99()))
}

// maxRate doubles the offered rate from --rate until a run is not sustained, then bisects between
// the last sustained rate and the first that was not.
func maxRate(ctx context.Context, m *machine, url string, o stealOptions, abort <-chan struct{}) (int, []string, error) {
	var steps []string
	try := func(rate int) (bool, error) {
		select {
		case <-abort:
			return false, errors.New("the steal exited during the load")
		default:
		}
		var r vegetaReport
		use, err := m.run(ctx, fmt.Sprintf("%d/s", rate), func() (float64, error) {
			var err error
			r, err = attack(ctx, []string{o.vegeta}, url, rate, o.conns, o.stepDuration)
			return r.clientCores, err
		})
		if err != nil {
			return false, err
		}
		ok, why := sustained(r, rate, o)
		verdict := "ok"
		if !ok {
			verdict = "no"
		}
		if use.disturbed {
			why += ", disturbed"
		}
		steps = append(steps, fmt.Sprintf("%d %s (%s)", rate, verdict, why))
		fmt.Fprintf(os.Stderr, "  %d/s: %s: %s\n  cpu: %s\n", rate, verdict, r, use)
		return ok, nil
	}
	lo, hi := 0, 0
	for rate := o.rate; rate <= 1<<20; rate *= 2 {
		ok, err := try(rate)
		if err != nil {
			return 0, steps, err
		}
		if !ok {
			hi = rate
			break
		}
		lo = rate
	}
	if hi == 0 {
		return lo, steps, nil
	}
	for range o.bisections {
		mid := (lo + hi) / 2
		ok, err := try(mid)
		if err != nil {
			return 0, steps, err
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo, steps, nil
}

// renderSteal writes the steal tables: rows[1] and rows[2] are kubectl port-forward over WebSocket
// and over SPDY (stealLatency's order), and every latency row gets its ratio against each.
func renderSteal(rows []*pathLatency, notes []string, fr filterResult, o stealOptions) string {
	var b strings.Builder
	type ref struct{ keep50, keep99, new50, new99 time.Duration }
	var refs [2]ref
	for i, r := range rows[1:3] {
		refs[i].keep50, refs[i].keep99 = percentiles(r.keep)
		refs[i].new50, refs[i].new99 = percentiles(r.fresh)
	}
	fmt.Fprintf(&b, "Steal latency: %d rounds of %d sequential GET /healthz per path and mode (%d samples per cell), the paths one after the other in each round. "+
		"Ratios are against kubectl port-forward with its default transport (vs WebSocket) and with KUBECTL_PORT_FORWARD_WEBSOCKETS=false (vs SPDY).\n\n",
		o.rounds, o.requests, o.rounds*o.requests)
	b.WriteString("| path | keep-alive p50 / p99 | vs WebSocket | vs SPDY | new connection p50 / p99 | vs WebSocket | vs SPDY |\n|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		k50, k99 := percentiles(r.keep)
		n50, n99 := percentiles(r.fresh)
		name := r.name
		if r.disturbed > 0 {
			name += fmt.Sprintf(" (%d disturbed runs)", r.disturbed)
		}
		fmt.Fprintf(&b, "| %s | %s / %s | %s | %s | %s / %s | %s | %s |\n", name,
			ms(k50), ms(k99), ratios(k50, k99, refs[0].keep50, refs[0].keep99), ratios(k50, k99, refs[1].keep50, refs[1].keep99),
			ms(n50), ms(n99), ratios(n50, n99, refs[0].new50, refs[0].new99), ratios(n50, n99, refs[1].new50, refs[1].new99))
	}
	b.WriteString("\n")
	for _, n := range notes {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	fmt.Fprintf(&b, "\nSteal filter: vegeta from the host to the pod IP (GET /, keep-alive, at most %d connections), %d req/s for %s; with `--header-filter '%s'`, which the load never matches, every request goes through the agent to the app. Highest sustained rate: doubling from %d req/s, then %d bisection steps, %s each; sustained = success ≥ %.1f%%, sent and answered at ≥ 95%% of the offered rate, p99 ≤ %s.\n\n",
		o.conns, o.rate, o.rateDuration, o.filter, o.rate, o.bisections, o.stepDuration, o.minSuccess*100, ms(o.maxP99))
	b.WriteString("| path | success | p50 | p99 | max | added p50 / p99 | highest sustained rate |\n|---|---|---|---|---|---|---|\n")
	d, f := fr.direct.r, fr.filtered.r
	fmt.Fprintf(&b, "| direct to the app%s | %.2f%% | %s | %s | %s | – | %d req/s (1.00x) |\n", disturbed(fr.direct.cpu),
		d.Success*100, ms(d.p50()), ms(d.p99()), ms(d.max()), fr.maxDirect)
	fmt.Fprintf(&b, "| through the filter (unmatched)%s | %.2f%% | %s | %s | %s | %+.2f ms / %+.2f ms | %d req/s (%.2fx) |\n", disturbed(fr.filtered.cpu),
		f.Success*100, ms(f.p50()), ms(f.p99()), ms(f.max()),
		msf(f.p50()-d.p50()), msf(f.p99()-d.p99()), fr.maxFiltered, float64(fr.maxFiltered)/float64(max(fr.maxDirect, 1)))
	fmt.Fprintf(&b, "\n- steps direct: %s\n- steps through the filter: %s\n", strings.Join(fr.stepsDirect, ", "), strings.Join(fr.stepsFilter, ", "))
	fmt.Fprintf(&b, "- the filtered steal printed %d lines on stdout", fr.stealLines)
	if len(fr.stealStderr) > 0 {
		fmt.Fprintf(&b, " and on stderr, besides progress: %s", strings.Join(fr.stealStderr, "; "))
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "\nCPU during the fixed-rate runs, in cores (1.00 = one core busy all the time; %d cores; app and agent are the bench pod's processes; kernel is its threads and interrupts; other is every other process on the machine and what no process still running accounts for):\n\n", takeCPU("").cpus)
	b.WriteString("| path | machine busy | vegeta |")
	for _, g := range cpuGroups {
		fmt.Fprintf(&b, " %s |", g)
	}
	b.WriteString("\n|---|---|---|" + strings.Repeat("---|", len(cpuGroups)) + "\n")
	for _, row := range []struct {
		name string
		fx   fixedRun
	}{{"direct to the app", fr.direct}, {"through the filter (unmatched)", fr.filtered}} {
		fmt.Fprintf(&b, "| %s | %.2f | %.2f |", row.name, row.fx.cpu.busy, row.fx.cpu.client)
		for _, g := range cpuGroups {
			fmt.Fprintf(&b, " %.2f |", row.fx.cpu.groups[g])
		}
		b.WriteString("\n")
	}
	return b.String()
}

func disturbed(u cpuUse) string {
	if u.disturbed {
		return " (disturbed)"
	}
	return ""
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// echoPodURL is the echo pod's address as the host reaches it directly, once it answers there.
func echoPodURL(ctx context.Context, ns string) (string, error) {
	ip, err := kubectlOutput(ctx, "-n", ns, "get", "pod", "echo", "-o", "jsonpath={.status.podIP}")
	if err != nil {
		return "", err
	}
	podURL := "http://" + net.JoinHostPort(strings.TrimSpace(ip), "8080")
	if err := waitAnswer(ctx, podURL+"/healthz", nil, false, nil); err != nil {
		return "", fmt.Errorf("the host does not reach the pod IP: %w", err)
	}
	return podURL, nil
}
