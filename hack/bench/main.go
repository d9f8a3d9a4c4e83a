// Command bench measures trafficlab port-forward against kubectl port-forward to the same pod port in
// the same run: bulk download throughput for incompressible and JSON payloads, and small-request
// latency over a kept-alive connection and with a new connection per request. It needs the local
// cluster (make cluster-up) and `kubectl` and `kubectl-trafficlab` on PATH; `make bench` does all that.
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
	args []string // after "kubectl"
}

type result struct {
	name                   string
	randomMiBps, jsonMiBps float64
	keepP50, keepP99       time.Duration
	newP50, newP99         time.Duration
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	size := flag.Int64("bytes", 512<<20, "bytes per bulk download")
	requests := flag.Int("requests", 500, "small requests per latency run")
	image := flag.String("image", os.Getenv("TRAFFICLAB_PEERS_IMAGE"), "test peers image")
	out := flag.String("out", "", "also write the markdown table here")
	flag.Parse()
	if *image == "" {
		return errors.New("set --image or TRAFFICLAB_PEERS_IMAGE (hack/cluster/images.sh prints it)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	ns := fmt.Sprintf("tl-bench-%d", time.Now().Unix())
	if err := kubectl(ctx, "", "create", "namespace", ns); err != nil {
		return err
	}
	defer func() { _ = kubectl(context.Background(), "", "delete", "namespace", ns, "--wait=false") }()
	pod := fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"echo","namespace":%q},
"spec":{"terminationGracePeriodSeconds":1,"containers":[{"name":"echo","image":%q,"imagePullPolicy":"Never",
"readinessProbe":{"httpGet":{"path":"/healthz","port":8080},"periodSeconds":1}}]}}`, ns, *image)
	if err := kubectl(ctx, pod, "apply", "-f", "-"); err != nil {
		return err
	}
	if err := kubectl(ctx, "", "-n", ns, "wait", "--for=condition=Ready", "pod/echo", "--timeout=120s"); err != nil {
		return err
	}
	fws := []forwarder{
		{"kubectl port-forward (default: WebSocket)", []string{"-n", ns, "port-forward", "pod/echo"}},
		{"kubectl port-forward (SPDY)", []string{"-n", ns, "port-forward", "pod/echo"}},
		{"trafficlab port-forward", []string{"trafficlab", "port-forward", "-n", ns, "-q", "pod/echo"}},
		{"trafficlab port-forward --data-path exec", []string{"trafficlab", "port-forward", "-n", ns, "-q", "--data-path", "exec", "pod/echo"}},
	}
	var results []result
	for i, f := range fws {
		env := os.Environ()
		if i == 1 {
			env = append(env, "KUBECTL_PORT_FORWARD_WEBSOCKETS=false")
		}
		r, err := measure(ctx, f, env, *size, *requests)
		if err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
		fmt.Fprintf(os.Stderr, "%s: random %.0f MiB/s, json %.0f MiB/s, keep-alive p50 %v p99 %v, new-conn p50 %v p99 %v\n",
			r.name, r.randomMiBps, r.jsonMiBps, r.keepP50, r.keepP99, r.newP50, r.newP99)
		results = append(results, r)
	}
	table := render(results, *size, *requests)
	fmt.Print(table)
	if *out != "" {
		return os.WriteFile(*out, []byte(table), 0o644)
	}
	return nil
}

var forwardingRE = regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) ->`)

func measure(ctx context.Context, f forwarder, env []string, size int64, requests int) (result, error) {
	port, err := freePort()
	if err != nil {
		return result{}, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	args := append(append([]string{}, f.args...), fmt.Sprintf("%d:8080", port))
	cmd := exec.CommandContext(ctx, "kubectl", args...)
	cmd.Env = env
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return result{}, err
	}
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}()
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
			return result{}, err
		}
	case <-time.After(2 * time.Minute):
		return result{}, errors.New("forwarder not ready within 2m")
	}
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
	tr := &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	samples := make([]time.Duration, 0, n)
	for i := range n + 10 {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			return 0, 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if i >= 10 { // warm-up
			samples = append(samples, time.Since(start))
		}
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	return samples[len(samples)/2], samples[len(samples)*99/100], nil
}

func render(rs []result, size int64, requests int) string {
	var b strings.Builder
	ref := rs[0]
	fmt.Fprintf(&b, "Bulk: best of 3 downloads of %d MiB; latency: %d sequential GET /healthz. Ratios are against %s.\n\n", size>>20, requests, ref.name)
	b.WriteString("| forwarder | random MiB/s | JSON MiB/s | keep-alive p50 / p99 | new connection p50 / p99 |\n|---|---|---|---|---|\n")
	for _, r := range rs {
		fmt.Fprintf(&b, "| %s | %.0f (%.2fx) | %.0f (%.2fx) | %s / %s (%.2fx / %.2fx) | %s / %s (%.2fx / %.2fx) |\n", r.name,
			r.randomMiBps, r.randomMiBps/ref.randomMiBps, r.jsonMiBps, r.jsonMiBps/ref.jsonMiBps,
			ms(r.keepP50), ms(r.keepP99), ratio(r.keepP50, ref.keepP50), ratio(r.keepP99, ref.keepP99),
			ms(r.newP50), ms(r.newP99), ratio(r.newP50, ref.newP50), ratio(r.newP99, ref.newP99))
	}
	return b.String()
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
