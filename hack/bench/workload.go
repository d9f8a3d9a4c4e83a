package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// The workload suite measures the time from `kubectl trafficlab steal deploy/NAME` to "stealing" on a
// Deployment of 1, 3 and 10 replicas (agent image cached). On one small node that mostly measures the
// kubelet and the runtime starting the agent containers, so what it checks is what the plugin
// controls: every agent patch is sent before the first agent runs, and "stealing" is printed soon
// after the last agent connects. Both come from the plugin's own progress lines, which carry the
// time since it started.

// workloadTarget is the plugin's budget from the last agent connected to "stealing".
const workloadTarget = 300 * time.Millisecond

// timeline is what the progress lines of one steal say, each time since the plugin started.
type timeline struct {
	patchesSent   time.Duration // "agent patches sent to N pods"
	firstRunning  time.Duration // the first "agent ... running in pod"
	lastConnected time.Duration // the last "connected to agent ... in pod"
	stealing      time.Duration // "stealing ..."
	pods          int           // how many pods the patches went to
}

var (
	stepRE        = regexp.MustCompile(`^\[\s*([0-9.]+)s\] (.*)$`)
	patchesSentRE = regexp.MustCompile(`^agent patches sent to (\d+) pods?$`)
	runningRE     = regexp.MustCompile(`^agent \S+ running in pod \S+$`)
	connectedRE   = regexp.MustCompile(`^connected to agent \S+ in pod \S+ `)
	stealStepRE   = regexp.MustCompile(`^stealing `)
)

// parseTimeline reads the plugin's progress lines up to "stealing".
func parseTimeline(lines []string) (timeline, error) {
	var tl timeline
	seen := map[string]bool{}
	for _, l := range lines {
		m := stepRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		secs, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			return tl, fmt.Errorf("progress line %q: %w", l, err)
		}
		at, step := time.Duration(secs*float64(time.Second)), m[2]
		switch {
		case patchesSentRE.MatchString(step):
			tl.pods, _ = strconv.Atoi(patchesSentRE.FindStringSubmatch(step)[1])
			tl.patchesSent, seen["patches"] = at, true
		case runningRE.MatchString(step):
			if !seen["running"] {
				tl.firstRunning, seen["running"] = at, true
			}
		case connectedRE.MatchString(step):
			tl.lastConnected, seen["connected"] = at, true
		case stealStepRE.MatchString(step):
			tl.stealing, seen["stealing"] = at, true
			for _, k := range []string{"patches", "running", "connected"} {
				if !seen[k] {
					return tl, fmt.Errorf("no %s line before %q", k, l)
				}
			}
			return tl, nil
		}
	}
	return tl, fmt.Errorf("no stealing line in %d lines", len(lines))
}

// workloadResult is one run: the timeline and the wall time from the command's start to "stealing".
type workloadResult struct {
	replicas int
	wall     time.Duration
	tl       timeline
}

func workloadSuite(ctx context.Context, m *machine, ns, image string) (string, error) {
	var results []workloadResult
	for _, n := range []int{1, 3, 10} {
		if err := m.waitQuiet(ctx); err != nil {
			return "", err
		}
		r, err := measureWorkload(ctx, ns, image, n)
		if err != nil {
			return "", fmt.Errorf("%d replicas: %w", n, err)
		}
		fmt.Fprintf(os.Stderr, "workload %d replicas: stealing after %s (patches sent %s, first agent running %s, last connected %s, stealing %s)\n",
			n, r.wall.Round(time.Millisecond), r.tl.patchesSent, r.tl.firstRunning, r.tl.lastConnected, r.tl.stealing)
		results = append(results, r)
	}
	return renderWorkload(results), nil
}

// measureWorkload creates a Deployment of n echo pods, waits for them, and times one steal of it.
func measureWorkload(ctx context.Context, ns, image string, n int) (workloadResult, error) {
	name := fmt.Sprintf("wl-%d", n)
	dep := fmt.Sprintf(`{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":%q,"namespace":%q},
"spec":{"replicas":%d,"selector":{"matchLabels":{"bench":%q}},"template":{"metadata":{"labels":{"bench":%q}},
"spec":{"terminationGracePeriodSeconds":1,"containers":[{"name":"echo","image":%q,"imagePullPolicy":"IfNotPresent",
"readinessProbe":{"httpGet":{"path":"/healthz","port":8080},"periodSeconds":1}}]}}}}`, name, ns, n, name, name, image)
	if err := kubectl(ctx, dep, "apply", "-f", "-"); err != nil {
		return workloadResult{}, err
	}
	if err := kubectl(ctx, "", "-n", ns, "rollout", "status", "deploy/"+name, "--timeout=300s"); err != nil {
		return workloadResult{}, err
	}
	port, err := freePort()
	if err != nil {
		return workloadResult{}, err
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(cctx, "kubectl", "trafficlab", "steal", "-n", ns, "deploy/"+name,
		"--port", fmt.Sprintf("8080:%d", port), "--header-filter", "^X-Bench: workload$")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return workloadResult{}, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return workloadResult{}, err
	}
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}()
	lines, wall, err := readUntil(stderr, stealingLine, start)
	if err != nil {
		return workloadResult{}, fmt.Errorf("%w; output:\n%s", err, strings.Join(lines, "\n"))
	}
	tl, err := parseTimeline(lines)
	if err != nil {
		return workloadResult{}, err
	}
	return workloadResult{replicas: n, wall: wall, tl: tl}, nil
}

var stealingLine = regexp.MustCompile(`^\[\s*[0-9.]+s\] stealing `)

// readUntil collects lines of r until one matches re, and says when it came; the rest of r is
// drained so that the plugin never blocks on its stderr.
func readUntil(r io.Reader, re *regexp.Regexp, start time.Time) ([]string, time.Duration, error) {
	sc := bufio.NewScanner(r)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if re.MatchString(sc.Text()) {
			wall := time.Since(start)
			go func() { _, _ = io.Copy(io.Discard, r) }()
			return lines, wall, nil
		}
	}
	return lines, 0, fmt.Errorf("the plugin ended before a line matching %q", re)
}

func renderWorkload(rs []workloadResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n### Workload: command start to \"stealing\" (filtered steal of a Deployment, agent image cached)\n\n")
	fmt.Fprintf(&b, "Times from the plugin's own progress lines (10 ms resolution), since it started. Targets: every agent patch sent before the first agent runs; \"stealing\" at most %s after the last agent connects.\n\n", ms(workloadTarget))
	b.WriteString("| replicas | command start to stealing | patches sent | first agent running | last agent connected | stealing | patches before first agent | stealing after last connect |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		after := r.tl.stealing - r.tl.lastConnected
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s | %s | %s %s |\n", r.replicas, secs(r.wall),
			secs(r.tl.patchesSent), secs(r.tl.firstRunning), secs(r.tl.lastConnected), secs(r.tl.stealing),
			verdict(r.tl.patchesSent <= r.tl.firstRunning), ms(after), verdict(after <= workloadTarget))
	}
	return b.String()
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func verdict(ok bool) string {
	if ok {
		return "yes"
	}
	return "NO"
}
