package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// mirrorOptions are the mirror suite's flags.
type mirrorOptions struct {
	rate     int
	duration time.Duration
	modes    string
	local    string
}

func (o *mirrorOptions) addFlags(fs interface {
	IntVar(*int, string, int, string)
	DurationVar(*time.Duration, string, time.Duration, string)
	StringVar(*string, string, string, string)
}) {
	fs.IntVar(&o.rate, "mirror-rate", 5000, "mirror load: fixed offered rate to the pod, requests per second")
	fs.DurationVar(&o.duration, "mirror-duration", 30*time.Second, "mirror load: length of each run")
	fs.StringVar(&o.modes, "mirror-modes", "sniff,redirect", "mirror load: the modes to run after the run without a mirror, comma separated")
	fs.StringVar(&o.local, "mirror-local", "normal", "mirror load: scheduling policy of the developer's side (plugin and local server): "+
		"normal, or idle to stand it on a machine of its own, as on a real cluster")
}

func (o *mirrorOptions) check() error {
	for _, m := range strings.Split(o.modes, ",") {
		if m != wire.MirrorSniff && m != wire.MirrorRedirect {
			return fmt.Errorf("--mirror-modes: unknown mode %q; use sniff, redirect", m)
		}
	}
	if o.local != "normal" && o.local != "idle" {
		return fmt.Errorf("--mirror-local: unknown policy %q; use normal or idle", o.local)
	}
	return nil
}

// mirrorRun is one load run: the pod's latency as the client sees it, and what the mirror did.
type mirrorRun struct {
	mode   string
	report vegetaReport
	served int64
	stats  *wire.MirrorStats
	use    cpuUse
	notes  []string
}

// mirrorSuite offers the same fixed rate to the pod three times: alone, mirrored by sniffing, and
// mirrored through the redirect; the copies go to a local server that counts them.
func mirrorSuite(ctx context.Context, m *machine, ns string, so stealOptions, o mirrorOptions) (string, error) {
	podURL, err := echoPodURL(ctx, ns)
	if err != nil {
		return "", err
	}
	local, err := startLocal()
	if err != nil {
		return "", err
	}
	defer local.srv.Close()
	vegeta := []string{so.vegeta}
	if o.local == "idle" {
		// The plugin inherits the policy; vegeta is the pod's client and stays as it is in the run
		// without a mirror.
		if err := setIdle(true); err != nil {
			return "", err
		}
		defer func() { _ = setIdle(false) }()
		vegeta = []string{"chrt", "--other", "0", so.vegeta}
	}
	var runs []*mirrorRun
	for _, mode := range append([]string{""}, strings.Split(o.modes, ",")...) {
		r, err := mirrorLoad(ctx, m, ns, podURL, local, vegeta, so.conns, o, mode)
		if err != nil {
			return "", fmt.Errorf("mirror %q: %w", mode, err)
		}
		runs = append(runs, r)
	}
	return renderMirror(runs, o), nil
}

var mirroringRE = regexp.MustCompile(`mirroring port`)

func mirrorLoad(ctx context.Context, m *machine, ns, podURL string, local *localServer, vegeta []string, conns int, o mirrorOptions, mode string) (*mirrorRun, error) {
	r := &mirrorRun{mode: mode}
	if err := m.waitQuiet(ctx); err != nil {
		return nil, err
	}
	var stop func() (*wire.MirrorStats, error)
	if mode != "" {
		var err error
		stop, err = startMirror(ctx, ns, local.port, mode, r)
		if err != nil {
			return nil, err
		}
	}
	before := local.served.Load()
	use, err := m.run(ctx, "mirror "+mode, func() (float64, error) {
		rep, err := attack(ctx, vegeta, podURL+"/healthz", o.rate, conns, o.duration)
		r.report = rep
		return rep.clientCores, err
	})
	r.use = use
	if err != nil {
		if stop != nil {
			_, _ = stop()
		}
		return nil, err
	}
	if stop != nil {
		// The last copies are still on their way when vegeta ends; the count waits for them.
		deadline := time.Now().Add(10 * time.Second)
		for local.served.Load()-before < int64(r.report.Requests) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		r.stats, err = stop()
		if err != nil {
			// A mirror that could not keep up may miss its counts: that is a result, not a failure.
			r.notes = append(r.notes, err.Error())
		}
		if r.stats != nil && r.stats.Partial {
			r.notes = append(r.notes, "(the final counts were late: these are the agent's last report, up to a second before the end)")
		}
	}
	r.served = local.served.Load() - before
	fmt.Fprintf(os.Stderr, "  mirror %q: %s; local server got %d\n", mode, r.report, r.served)
	return r, nil
}

// startMirror runs the plugin with -o json; its last line is the counts.
func startMirror(ctx context.Context, ns string, local int, mode string, r *mirrorRun) (func() (*wire.MirrorStats, error), error) {
	args := []string{"trafficlab", "mirror", "-n", ns, "pod/echo", "--port", fmt.Sprintf("8080:%d", local), "--mode", mode, "-o", "json"}
	cmd := exec.CommandContext(ctx, "kubectl", args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ready := make(chan struct{})
	var stats *wire.MirrorStats
	var mu sync.Mutex
	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		sc := bufio.NewScanner(stderr)
		found := false
		for sc.Scan() {
			fmt.Fprintf(os.Stderr, "  mirror: %s\n", sc.Text())
			if !found && mirroringRE.MatchString(sc.Text()) {
				found = true
				close(ready)
			} else if strings.HasPrefix(sc.Text(), "warning") || strings.HasPrefix(sc.Text(), "error") {
				mu.Lock()
				r.notes = append(r.notes, sc.Text())
				mu.Unlock()
			}
		}
	}()
	go func() {
		defer readers.Done()
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			// One line per copy: decoding each would make the harness a load of its own on the
			// machine it measures. Only the last line, the counts, is needed.
			if !bytes.Contains(sc.Bytes(), []byte(`"kind":"stats"`)) {
				continue
			}
			var ev wire.MirrorEvent
			if json.Unmarshal(sc.Bytes(), &ev) == nil && ev.Kind == wire.EventStats {
				mu.Lock()
				stats = ev.Stats
				mu.Unlock()
			}
		}
	}()
	exited := make(chan error, 1)
	go func() {
		readers.Wait()
		exited <- cmd.Wait()
	}()
	select {
	case <-ready:
	case err := <-exited:
		return nil, fmt.Errorf("kubectl %s exited before it was mirroring: %w", strings.Join(args, " "), err)
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		return nil, errors.New("mirror not ready within 2m")
	}
	return func() (*wire.MirrorStats, error) {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-exited:
			if err != nil {
				return nil, fmt.Errorf("mirror exited with %w", err)
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			return nil, errors.New("mirror did not exit within 20s of an interrupt")
		}
		mu.Lock()
		defer mu.Unlock()
		if stats == nil {
			return nil, errors.New("the mirror ended without its counts")
		}
		return stats, nil
	}, nil
}

func renderMirror(runs []*mirrorRun, o mirrorOptions) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n### Mirror under load: %d requests/s for %s to the pod (vegeta, kept alive; developer's side %s)\n\n", o.rate, o.duration, o.local)
	b.WriteString("| mirror | requests | success | pod p50 | pod p99 | pod p99 vs none | copies received | kernel drops | agent peak RSS | relay calls per request | CPU (cores) |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|\n")
	base := runs[0].report.p99()
	for _, r := range runs {
		mode, share, drops, rss := "none", "-", "-", "-"
		if r.mode != "" {
			mode = r.mode
			share = fmt.Sprintf("%d (%.2f%%)", r.served, 100*float64(r.served)/float64(r.report.Requests))
			if r.stats != nil {
				rss = fmt.Sprintf("%.0f MiB", float64(r.stats.AgentMaxRSS)/(1<<20))
				if r.mode == wire.MirrorSniff {
					drops = fmt.Sprintf("%d of %d", r.stats.KernelDropped, r.stats.KernelDropped+r.stats.KernelReceived)
				} else {
					drops = "n/a"
				}
			}
		}
		fmt.Fprintf(&b, "| %s | %d | %.2f%% | %.2f ms | %.2f ms | %+.2f ms | %s | %s | %s | %.1f | %s |\n",
			mode, r.report.Requests, 100*r.report.Success, msf(r.report.p50()), msf(r.report.p99()),
			msf(r.report.p99()-base), share, drops, rss, float64(r.use.relayIO)/float64(max(1, r.report.Requests)), r.use)
	}
	for _, r := range runs {
		if r.stats != nil {
			fmt.Fprintf(&b, "\n%s: %s.", r.mode, r.stats.Summary())
		}
		for _, n := range r.notes {
			fmt.Fprintf(&b, " %s", n)
		}
	}
	b.WriteString("\n")
	return b.String()
}
