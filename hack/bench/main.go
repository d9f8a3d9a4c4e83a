// Command bench measures trafficlab port-forward against kubectl port-forward (over both of kubectl's
// transports: WebSocket, its default, and SPDY) to the same pod port in the same run: bulk download throughput for incompressible and JSON payloads, and small-request
// latency over a kept-alive connection and with a new connection per request. The steal suite
// (steal.go) measures `kubectl trafficlab steal`: small-request latency through the steal tunnel
// against kubectl port-forward, and the cost of the HTTP filter for requests it passes to the app, at
// a fixed rate and at the highest rate each path sustains (with the vegeta binary, vegeta.go). It
// needs the local cluster (make cluster-up), `kubectl` and `kubectl-trafficlab` on PATH and vegeta
// (hack/tools/install.sh vegeta); `make bench` does all that. The workload suite (workload.go) times a
// steal of every pod of a Deployment of 1, 3 and 10 replicas. The link suite (link.go) runs the
// forward comparison again from a laptop: the forwarders and the client in a network namespace behind
// a rate-limited veth and a latency proxy in front of the apiserver (toxiproxy, --toxiproxy).
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
	"os/signal"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type forwarder struct {
	name string
	args []string  // after "kubectl"
	env  []string  // added to the bench's environment
	ns   *nsThread // where it runs: nil on the host, or a laptop link's namespace
}

// kubectlForwarders are kubectl port-forward's two transports, both measured in every run that
// compares with kubectl, so that each ratio says which one it is against. Since v1.31 kubectl's
// default is WebSocket (tunnelled SPDY over a WebSocket to the apiserver); with
// KUBECTL_PORT_FORWARD_WEBSOCKETS=false it speaks SPDY end to end, as trafficlab's tunnel does, and
// on this cluster that is the faster of the two. Render functions take the first as the WebSocket
// baseline and the second as the SPDY one.
func kubectlForwarders(ns string) [2]forwarder {
	args := []string{"-n", ns, "port-forward", "pod/echo"}
	return [2]forwarder{
		{name: "kubectl port-forward (default: WebSocket)", args: args},
		{name: "kubectl port-forward (SPDY)", args: args, env: []string{"KUBECTL_PORT_FORWARD_WEBSOCKETS=false"}},
	}
}

type result struct {
	name                   string
	randomMiBps, jsonMiBps float64
	keepP50, keepP99       time.Duration
	newP50, newP99         time.Duration
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == execClientArg {
		if err := execClient(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "bench %s: %v\n", execClientArg, err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	size := flag.Int64("bytes", 512<<20, "bytes per bulk download")
	requests := flag.Int("requests", 500, "small requests per latency run")
	image := flag.String("image", os.Getenv("TRAFFICLAB_PEERS_IMAGE"), "test peers image")
	out := flag.String("out", "", "also write the markdown tables here")
	suites := flag.String("suites", "forward,steal,mirror,exec,workload,link,limited", "which measurements to run, comma separated: forward, steal, mirror, exec, workload, link, limited")
	quiet := flag.Float64("quiet-cores", 0.3, "before each run, wait until the machine uses fewer cores than this (the machine is shared)")
	disturbed := flag.Float64("disturbed-cores", 0.2, "steal suite: repeat a run (up to 3 times) when processes outside the measured path used more cores than this")
	var so stealOptions
	so.addFlags(flag.CommandLine)
	var mo mirrorOptions
	mo.addFlags(flag.CommandLine)
	var lk linkOptions
	flag.StringVar(&lk.links, "links", "100mbit/30ms,1gbit/5ms", "link suite: the laptop links, comma separated RATE/RTT (RATE in kbit, mbit or gbit each way, RTT in whole ms)")
	flag.DurationVar(&lk.seconds, "link-seconds", 4*time.Second, "link suite: each bulk download is what the link carries in this time at its rate")
	flag.IntVar(&lk.requests, "link-requests", 200, "link suite: small requests per latency run")
	flag.StringVar(&lk.toxiproxy, "toxiproxy", "", "link suite: the toxiproxy-server binary (hack/tools/install.sh toxiproxy-server)")
	var lo limitedOptions // limited.go
	lo.addFlags(flag.CommandLine)
	flag.Parse()
	if *image == "" {
		return errors.New("set --image or TRAFFICLAB_PEERS_IMAGE (hack/cluster/images.sh prints it)")
	}
	runForward, runSteal, runMirror, runExec, runWorkload, runLink, runLimited := false, false, false, false, false, false, false
	for _, s := range strings.Split(*suites, ",") {
		switch strings.TrimSpace(s) {
		case "forward":
			runForward = true
		case "steal":
			runSteal = true
		case "mirror":
			runMirror = true
		case "exec":
			runExec = true
		case "workload":
			runWorkload = true
		case "link":
			runLink = true
		case "limited":
			runLimited = true
		default:
			return fmt.Errorf("--suites: unknown suite %q; use forward, steal, mirror, exec, workload, link, limited", s)
		}
	}
	if runSteal || runMirror || runLimited {
		if err := so.check(); err != nil {
			return err
		}
	}
	if runMirror {
		if err := mo.check(); err != nil {
			return err
		}
	}
	if runLink {
		if err := lk.check(); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	ns := fmt.Sprintf("tl-bench-%d", time.Now().Unix())
	if err := kubectl(ctx, "", "create", "namespace", ns); err != nil {
		return err
	}
	defer func() { _ = kubectl(context.Background(), "", "delete", "namespace", ns, "--wait=false") }()
	pod := fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"echo","namespace":%q},
"spec":{"terminationGracePeriodSeconds":1,"containers":[{"name":"echo","image":%q,"imagePullPolicy":"IfNotPresent",
"readinessProbe":{"httpGet":{"path":"/healthz","port":8080},"periodSeconds":1}}]}}`, ns, *image)
	if err := kubectl(ctx, pod, "apply", "-f", "-"); err != nil {
		return err
	}
	if err := kubectl(ctx, "", "-n", ns, "wait", "--for=condition=Ready", "pod/echo", "--timeout=120s"); err != nil {
		return err
	}
	uid, err := kubectlOutput(ctx, "-n", ns, "get", "pod", "echo", "-o", "jsonpath={.metadata.uid}")
	if err != nil {
		return err
	}
	m := &machine{podUID: strings.TrimSpace(uid), idleBusy: *quiet, maxOther: *disturbed, attempts: 3}
	var tables []string
	if runForward {
		t, err := forwardSuite(ctx, m, ns, *size, *requests)
		if err != nil {
			return err
		}
		tables = append(tables, t)
	}
	if runSteal {
		t, err := stealSuite(ctx, m, ns, so)
		if err != nil {
			return fmt.Errorf("steal: %w", err)
		}
		tables = append(tables, t)
	}
	if runExec {
		t, err := execSuite(ctx, m, ns, *size, *requests)
		if err != nil {
			return fmt.Errorf("exec: %w", err)
		}
		tables = append(tables, t)
	}
	if runMirror {
		t, err := mirrorSuite(ctx, m, ns, so, mo)
		if err != nil {
			return fmt.Errorf("mirror: %w", err)
		}
		tables = append(tables, t)
	}
	if runLimited {
		t, err := limitedSuite(ctx, *quiet, *disturbed, ns, *image, so, lo)
		if err != nil {
			return fmt.Errorf("limited: %w", err)
		}
		tables = append(tables, t)
	}
	if runWorkload {
		t, err := workloadSuite(ctx, m, ns, *image)
		if err != nil {
			return fmt.Errorf("workload: %w", err)
		}
		tables = append(tables, t)
	}
	if runLink {
		t, err := linkSuite(ctx, m, ns, lk)
		if err != nil {
			return fmt.Errorf("link: %w", err)
		}
		tables = append(tables, t)
	}
	doc := strings.Join(tables, "\n")
	fmt.Print(doc)
	if *out != "" {
		return os.WriteFile(*out, []byte(doc), 0o644)
	}
	return nil
}

// forwardSuite is the port-forward comparison: bulk downloads and small-request latency through each
// forwarder, one after the other, to the same pod port.
func forwardSuite(ctx context.Context, m *machine, ns string, size int64, requests int) (string, error) {
	kubectls := kubectlForwarders(ns)
	fws := append(kubectls[:],
		forwarder{name: "trafficlab port-forward", args: []string{"trafficlab", "port-forward", "-n", ns, "-q", "pod/echo"}},
		forwarder{name: "trafficlab port-forward --data-path exec", args: []string{"trafficlab", "port-forward", "-n", ns, "-q", "--data-path", "exec", "pod/echo"}},
	)
	var results []result
	for _, f := range fws {
		// The machine is shared; a forwarder measured while something else runs is not comparable.
		if err := m.waitQuiet(ctx); err != nil {
			return "", err
		}
		r, err := measure(ctx, f, size, requests)
		if err != nil {
			return "", fmt.Errorf("%s: %w", f.name, err)
		}
		fmt.Fprintf(os.Stderr, "%s: random %.0f MiB/s, json %.0f MiB/s, keep-alive p50 %v p99 %v, new-conn p50 %v p99 %v\n",
			r.name, r.randomMiBps, r.jsonMiBps, r.keepP50, r.keepP99, r.newP50, r.newP99)
		results = append(results, r)
	}
	return render(results, size, requests), nil
}

var forwardingRE = regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) ->`)

func measure(ctx context.Context, f forwarder, size int64, requests int) (result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	port, stop, err := startForwarder(ctx, f)
	if err != nil {
		return result{}, err
	}
	defer stop()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	// trafficlab prints "Forwarding from" before the agent is connected; the first request waits for it.
	if err := waitHTTP(ctx, base+"/healthz"); err != nil {
		return result{}, err
	}
	r := result{name: f.name}
	if r.randomMiBps, err = download(ctx, fmt.Sprintf("%s/bytes?n=%d", base, size)); err != nil {
		return r, err
	}
	if r.jsonMiBps, err = download(ctx, fmt.Sprintf("%s/json?n=%d", base, size)); err != nil {
		return r, err
	}
	if r.keepP50, r.keepP99, err = latency(ctx, base+"/healthz", requests, true); err != nil {
		return r, err
	}
	if r.newP50, r.newP99, err = latency(ctx, base+"/healthz", requests, false); err != nil {
		return r, err
	}
	return r, nil
}

// startForwarder runs `kubectl ARGS LOCAL:8080` on a free local port and returns that port once the
// forwarder prints "Forwarding from", and a function that interrupts it and waits for its exit.
func startForwarder(ctx context.Context, f forwarder) (int, func(), error) {
	port, err := freePort()
	if err != nil {
		return 0, nil, err
	}
	args := append(append([]string{}, f.args...), fmt.Sprintf("%d:8080", port))
	cmd := exec.CommandContext(ctx, "kubectl", args...)
	cmd.Env = append(os.Environ(), f.env...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, nil, err
	}
	if f.ns != nil {
		err = f.ns.start(cmd)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		return 0, nil, err
	}
	stop := func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		found := false
		for sc.Scan() {
			if !found && forwardingRE.MatchString(sc.Text()) {
				found = true
				ready <- nil
			}
		}
		if !found {
			ready <- errors.New("forwarder exited before it was ready")
		}
	}()
	select {
	case err := <-ready:
		if err != nil {
			stop()
			return 0, nil, err
		}
	case <-time.After(2 * time.Minute):
		stop()
		return 0, nil, errors.New("forwarder not ready within 2m")
	}
	return port, stop, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitHTTP(ctx context.Context, url string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer from %s: %w", url, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// download returns MiB/s of one GET, the best of three, to damp the noise of a shared 2-core machine.
func download(ctx context.Context, url string) (float64, error) {
	best := 0.0
	for range 3 {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			return 0, fmt.Errorf("after %d bytes: %w", n, err)
		}
		rate := float64(n) / (1 << 20) / time.Since(start).Seconds()
		best = max(best, rate)
	}
	return best, nil
}

func latency(ctx context.Context, url string, n int, keepAlive bool) (p50, p99 time.Duration, err error) {
	samples, err := sampleLatency(ctx, url, n, keepAlive)
	if err != nil {
		return 0, 0, err
	}
	p50, p99 = percentiles(samples)
	return p50, p99, nil
}

// sampleLatency times n sequential GETs after 10 unrecorded warm-up requests, over one kept-alive
// connection or with a new connection per request.
func sampleLatency(ctx context.Context, url string, n int, keepAlive bool) ([]time.Duration, error) {
	tr := &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	samples := make([]time.Duration, 0, n)
	for i := range n + 10 {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			return nil, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		if i >= 10 { // warm-up
			samples = append(samples, time.Since(start))
		}
	}
	return samples, nil
}

// percentiles sorts samples in place and returns their median and 99th percentile.
func percentiles(samples []time.Duration) (p50, p99 time.Duration) {
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	return samples[len(samples)/2], samples[len(samples)*99/100]
}

// render writes the forward table: rs[0] and rs[1] are kubectlForwarders' two runs, and every row
// gets its ratio against each, in columns that name the transport.
func render(rs []result, size int64, requests int) string {
	var b strings.Builder
	ws, spdy := rs[0], rs[1]
	fmt.Fprintf(&b, "Bulk: best of 3 downloads of %d MiB; latency: %d sequential GET /healthz. "+
		"Ratios are against kubectl port-forward with its default transport (vs WebSocket) and with KUBECTL_PORT_FORWARD_WEBSOCKETS=false (vs SPDY); "+
		"above 1 is faster for throughput, slower for latency.\n\n", size>>20, requests)
	b.WriteString("| forwarder | random MiB/s | vs WebSocket | vs SPDY | JSON MiB/s | vs WebSocket | vs SPDY |\n|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		fmt.Fprintf(&b, "| %s | %.0f | %.2fx | %.2fx | %.0f | %.2fx | %.2fx |\n", r.name,
			r.randomMiBps, r.randomMiBps/ws.randomMiBps, r.randomMiBps/spdy.randomMiBps,
			r.jsonMiBps, r.jsonMiBps/ws.jsonMiBps, r.jsonMiBps/spdy.jsonMiBps)
	}
	b.WriteString("\n| forwarder | keep-alive p50 / p99 | vs WebSocket | vs SPDY | new connection p50 / p99 | vs WebSocket | vs SPDY |\n|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		fmt.Fprintf(&b, "| %s | %s / %s | %s | %s | %s / %s | %s | %s |\n", r.name,
			ms(r.keepP50), ms(r.keepP99), ratios(r.keepP50, r.keepP99, ws.keepP50, ws.keepP99), ratios(r.keepP50, r.keepP99, spdy.keepP50, spdy.keepP99),
			ms(r.newP50), ms(r.newP99), ratios(r.newP50, r.newP99, ws.newP50, ws.newP99), ratios(r.newP50, r.newP99, spdy.newP50, spdy.newP99))
	}
	return b.String()
}

// ratios is "p50 ratio / p99 ratio" of one latency pair against a baseline's.
func ratios(p50, p99, ref50, ref99 time.Duration) string {
	return fmt.Sprintf("%.2fx / %.2fx", ratio(p50, ref50), ratio(p99, ref99))
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64) + " ms"
}

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }

func kubectl(ctx context.Context, stdin string, args ...string) error {
	cmd := exec.CommandContext(ctx, "kubectl", args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// kubectlOutput runs kubectl and returns its stdout.
func kubectlOutput(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "kubectl", args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}
