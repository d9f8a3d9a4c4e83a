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
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// limitedOptions are the limited suite's flags.
type limitedOptions struct {
	cpu        string
	rate       int
	duration   time.Duration
	keepConns  int
	profileOut string
}

func (o *limitedOptions) addFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.cpu, "limited-cpu", "500m", "limited suite: the pod's CPU limit (and request)")
	fs.IntVar(&o.rate, "limited-rate", 1000, "limited suite: fixed offered rate, requests per second, one the app serves comfortably within the limit")
	fs.DurationVar(&o.duration, "limited-duration", 30*time.Second, "limited suite: length of each fixed-rate run")
	fs.IntVar(&o.keepConns, "limited-conns", 1000, "limited suite: kept-alive connections held through the filtered steal for the agent's RSS per connection")
	fs.StringVar(&o.profileOut, "agent-profile", "", "limited suite: write the agent's CPU profile over the filtered run to this file (trafficlab-agent profile)")
}

// cgroupCPU is a cgroup's CPU accounting: its usage and the CFS quota's periods and throttling.
type cgroupCPU struct {
	usage, throttledTime   time.Duration
	nrPeriods, nrThrottled uint64
}

// limitedRun is one fixed-rate run against the CPU-limited pod.
type limitedRun struct {
	mode    string
	r       vegetaReport
	cpu     cpuUse
	pod     cgroupCPU // the pod cgroup's change over the run
	notes   []string
	profile string
}

// limitedSuite runs the app in a pod of its own with a CPU limit (in a namespace of its own, so the
// steal and mirror plumbing's pod/echo is that pod) and offers it a fixed rate three times: alone,
// through a filtered steal that matches nothing, and mirrored through the redirect. The agent's
// and the app's CPU per request come from their processes (cpu.go), the throttling from the pod's
// cgroup, whose CFS quota the agent's ephemeral container shares with the app (the kubelet sizes
// the pod's quota from the app's limit; an ephemeral container has no resources of its own). With
// the filtered steal in place it also takes the agent's RSS idle and with --limited-conns
// kept-alive connections passed through it.
func limitedSuite(ctx context.Context, quiet, disturbed float64, ns, image string, so stealOptions, o limitedOptions) (string, error) {
	lns := ns + "-limited"
	if err := kubectl(ctx, "", "create", "namespace", lns); err != nil {
		return "", err
	}
	defer func() { _ = kubectl(context.Background(), "", "delete", "namespace", lns, "--wait=false") }()
	pod := fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"echo","namespace":%q},
"spec":{"terminationGracePeriodSeconds":1,"containers":[{"name":"echo","image":%q,"imagePullPolicy":"Never",
"resources":{"requests":{"cpu":%q,"memory":"128Mi"},"limits":{"cpu":%q,"memory":"128Mi"}},
"readinessProbe":{"httpGet":{"path":"/healthz","port":8080},"periodSeconds":1}}]}}`, lns, image, o.cpu, o.cpu)
	if err := kubectl(ctx, pod, "apply", "-f", "-"); err != nil {
		return "", err
	}
	if err := kubectl(ctx, "", "-n", lns, "wait", "--for=condition=Ready", "pod/echo", "--timeout=120s"); err != nil {
		return "", err
	}
	uid, err := kubectlOutput(ctx, "-n", lns, "get", "pod", "echo", "-o", "jsonpath={.metadata.uid}")
	if err != nil {
		return "", err
	}
	uid = strings.TrimSpace(uid)
	m := &machine{podUID: uid, idleBusy: quiet, maxOther: disturbed, attempts: 3}
	podURL, err := echoPodURL(ctx, lns)
	if err != nil {
		return "", err
	}
	cg, err := podCPUCgroup(uid)
	if err != nil {
		return "", err
	}
	local, err := startLocal()
	if err != nil {
		return "", err
	}
	defer local.srv.Close()

	var runs []*limitedRun
	var rss []string
	for _, mode := range []string{"none", "filtered steal (unmatched)", "redirect mirror"} {
		run := &limitedRun{mode: mode}
		var stop func() error
		switch mode {
		case "filtered steal (unmatched)":
			p, err := startSteal(ctx, lns, podURL+"/", http.Header{"X-Steal": {"yes"}}, local.port, "--header-filter", so.filter)
			if err != nil {
				return "", err
			}
			stop = p.stop
			if err := waitAnswer(ctx, podURL+"/", nil, false, p.exited); err != nil {
				_ = stop()
				return "", fmt.Errorf("unmatched request during the filtered steal: %w", err)
			}
			if rss, err = agentRSS(ctx, uid, podURL, o.keepConns); err != nil {
				_ = stop()
				return "", err
			}
		case "redirect mirror":
			mr := &mirrorRun{mode: wire.MirrorRedirect}
			s, err := startMirror(ctx, lns, local.port, wire.MirrorRedirect, mr)
			if err != nil {
				return "", err
			}
			stop = func() error { _, err := s(); return err }
		}
		profiled := mode == "filtered steal (unmatched)" && o.profileOut != ""
		fmt.Fprintf(os.Stderr, "limited: vegeta %d/s for %s, %s\n", o.rate, o.duration, mode)
		// m.run may repeat a disturbed run: the pod's counters are the last attempt's, as its CPU is.
		run.cpu, err = m.run(ctx, "limited "+mode, func() (float64, error) {
			before, err := readCgroupCPU(cg)
			if err != nil {
				return 0, err
			}
			var profile func() (string, error)
			if profiled {
				profile = agentProfile(ctx, lns, o.profileOut, o.duration)
			}
			run.r, err = attack(ctx, []string{so.vegeta}, podURL+"/", o.rate, so.conns, o.duration)
			if profile != nil {
				var perr error
				if run.profile, perr = profile(); perr != nil {
					run.notes = append(run.notes, "profile: "+perr.Error())
				}
			}
			if err != nil {
				return 0, err
			}
			after, err := readCgroupCPU(cg)
			run.pod = after.sub(before)
			return run.r.clientCores, err
		})
		if stop != nil {
			if serr := stop(); serr != nil {
				run.notes = append(run.notes, fmt.Sprintf("exited with %v", serr))
			}
			if err == nil {
				err = waitAnswer(ctx, podURL+"/healthz", nil, false, nil)
			}
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w", mode, err)
		}
		fmt.Fprintf(os.Stderr, "  %s\n  cpu: %s\n  pod cgroup: %+v\n", run.r, run.cpu, run.pod)
		runs = append(runs, run)
	}
	return renderLimited(runs, rss, o), nil
}

// perRequest is µs of CPU per request from cores used over a run.
func perRequest(cores float64, r vegetaReport, d time.Duration) float64 {
	if r.Requests == 0 {
		return 0
	}
	return cores * d.Seconds() * 1e6 / float64(r.Requests)
}

func renderLimited(runs []*limitedRun, rss []string, o limitedOptions) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n### CPU-limited pod: %d requests/s for %s to a pod limited to %s (vegeta, kept alive, at most the steal suite's connections)\n\n", o.rate, o.duration, o.cpu)
	b.WriteString("The app's and the agent's CPU per request are their processes' CPU time (/proc) over the run divided by the requests; throttled periods are the pod cgroup's CFS quota periods in which the pod (app and agent together) was throttled.\n\n")
	b.WriteString("| path | success | p50 | p99 | p99 vs none | app µs/req | agent µs/req | pod CPU (cores) | throttled periods | throttled time |\n|---|---|---|---|---|---|---|---|---|---|\n")
	base := runs[0].r.p99()
	for _, r := range runs {
		fmt.Fprintf(&b, "| %s%s | %.2f%% | %s | %s | %.2fx | %.0f | %.0f | %.2f | %d of %d (%.1f%%) | %.2fs |\n",
			r.mode, disturbed(r.cpu), 100*r.r.Success, ms(r.r.p50()), ms(r.r.p99()), ratio(r.r.p99(), base),
			perRequest(r.cpu.groups["app"], r.r, o.duration), perRequest(r.cpu.groups["agent"], r.r, o.duration),
			r.pod.usage.Seconds()/o.duration.Seconds(), r.pod.nrThrottled, r.pod.nrPeriods,
			100*float64(r.pod.nrThrottled)/float64(max(1, r.pod.nrPeriods)), r.pod.throttledTime.Seconds())
	}
	for _, r := range runs {
		for _, n := range r.notes {
			fmt.Fprintf(&b, "\n- %s: %s", r.mode, n)
		}
		if r.profile != "" {
			fmt.Fprintf(&b, "\n- %s: the agent's CPU profile over the run is in %s", r.mode, r.profile)
		}
	}
	if len(rss) > 0 {
		fmt.Fprintf(&b, "\n\nAgent RSS through the filtered steal: %s\n", strings.Join(rss, "; "))
	}
	b.WriteString("\n")
	return b.String()
}

// agentProfile starts `trafficlab-agent profile` in the pod's agent container for the run's length
// (less a second, so that it ends within the run) and returns a function that waits for it and
// names the file it wrote.
func agentProfile(ctx context.Context, ns, out string, d time.Duration) func() (string, error) {
	done := make(chan error, 1)
	go func() {
		names, err := kubectlOutput(ctx, "-n", ns, "get", "pod", "echo", "-o", "jsonpath={.spec.ephemeralContainers[*].name}")
		if err != nil {
			done <- err
			return
		}
		f := strings.Fields(names)
		if len(f) == 0 {
			done <- errors.New("the pod has no agent container")
			return
		}
		agent := f[len(f)-1]
		file, err := os.Create(out)
		if err != nil {
			done <- err
			return
		}
		defer file.Close()
		cmd := exec.CommandContext(ctx, "kubectl", "-n", ns, "exec", "echo", "-c", agent, "--",
			inject.AgentBinary, "profile", "--name="+agent, fmt.Sprintf("--seconds=%d", max(1, int(d.Seconds())-1)))
		cmd.Stdout = file
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			done <- fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
			return
		}
		done <- nil
	}()
	return func() (string, error) {
		if err := <-done; err != nil {
			return "", err
		}
		return out, nil
	}
}

// agentRSS is the agent main process's RSS with the filtered steal idle, then with n kept-alive
// connections that each passed one request through it to the app (and so hold a connection to the
// app in the agent too), and the difference per connection.
func agentRSS(ctx context.Context, uid, podURL string, n int) ([]string, error) {
	pid, err := agentMainPID(uid)
	if err != nil {
		return nil, err
	}
	idle, err := vmRSS(pid)
	if err != nil {
		return nil, err
	}
	addr := strings.TrimPrefix(podURL, "http://")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range n {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("connection %d: %w", i+1, err)
		}
		conns = append(conns, c)
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: echo\r\n\r\n"); err != nil {
			return nil, fmt.Errorf("connection %d: %w", i+1, err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return nil, fmt.Errorf("connection %d: %w", i+1, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get(localAnswer) != "" {
			return nil, fmt.Errorf("connection %d: %s, answered by the local server: %v", i+1, resp.Status, resp.Header.Get(localAnswer) != "")
		}
	}
	held, err := vmRSS(pid)
	if err != nil {
		return nil, err
	}
	per := float64(held-idle) / float64(n)
	fmt.Fprintf(os.Stderr, "limited: agent RSS idle %d KiB, with %d connections %d KiB\n", idle>>10, n, held>>10)
	return []string{
		fmt.Sprintf("idle %.1f MiB", float64(idle)/(1<<20)),
		fmt.Sprintf("with %d kept-alive pass-through connections %.1f MiB", n, float64(held)/(1<<20)),
		fmt.Sprintf("%.1f KiB per connection", per/1024),
	}, nil
}

// agentMainPID is the pid (in the host's PID namespace) of the agent's main process in the pod with
// this uid: the agent process whose command line has no subcommand.
func agentMainPID(uid string) (int, error) {
	systemdUID := strings.ReplaceAll(uid, "-", "_")
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		comm, err := os.ReadFile(d + "/comm")
		if err != nil || strings.TrimSpace(string(comm)) != "trafficlab-agen" {
			continue
		}
		cg, _ := os.ReadFile(d + "/cgroup")
		if !strings.Contains(string(cg), uid) && !strings.Contains(string(cg), systemdUID) {
			continue
		}
		cmdline, _ := os.ReadFile(d + "/cmdline")
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if len(args) > 1 && !strings.HasPrefix(args[1], "-") {
			continue // attach, relay, profile...
		}
		return strconv.Atoi(filepath.Base(d))
	}
	return 0, fmt.Errorf("no agent main process in pod %s", uid)
}

// vmRSS is a process's resident set in bytes.
func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	rss, err := parseVMRSS(string(b))
	if err != nil {
		return 0, fmt.Errorf("pid %d: %w", pid, err)
	}
	return rss, nil
}

// parseVMRSS reads the VmRSS line of /proc/PID/status ("VmRSS:    1234 kB") into bytes.
func parseVMRSS(status string) (int64, error) {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil || kb < 0 || kb > 1<<40 {
				return 0, fmt.Errorf("VmRSS %q: not a size in kB", strings.TrimSpace(v))
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("no VmRSS line")
}

// podCPUCgroup is the directory of the pod's cgroup in the CPU controller: the parent of its app
// container's, found from the app process's /proc/PID/cgroup (cgroup v1's cpu controller, or v2's
// unified hierarchy).
func podCPUCgroup(uid string) (string, error) {
	systemdUID := strings.ReplaceAll(uid, "-", "_")
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		comm, err := os.ReadFile(d + "/comm")
		if err != nil || strings.TrimSpace(string(comm)) != "peer-echo" {
			continue
		}
		cg, _ := os.ReadFile(d + "/cgroup")
		if !strings.Contains(string(cg), uid) && !strings.Contains(string(cg), systemdUID) {
			continue
		}
		for _, line := range strings.Split(string(cg), "\n") {
			f := strings.SplitN(line, ":", 3)
			if len(f) != 3 {
				continue
			}
			for _, ctl := range strings.Split(f[1], ",") {
				if ctl == "cpu" {
					for _, root := range []string{"/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"} {
						if _, err := os.Stat(filepath.Join(root, f[2], "cpu.stat")); err == nil {
							return filepath.Dir(filepath.Join(root, f[2])), nil
						}
					}
				}
			}
			if f[0] == "0" && f[1] == "" {
				if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", f[2], "cpu.stat")); err == nil {
					return filepath.Dir(filepath.Join("/sys/fs/cgroup", f[2])), nil
				}
			}
		}
	}
	return "", fmt.Errorf("no cpu cgroup found for pod %s", uid)
}

// readCgroupCPU reads dir's cpu.stat (and, on cgroup v1, cpuacct.usage).
func readCgroupCPU(dir string) (cgroupCPU, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return cgroupCPU{}, err
	}
	c := parseCPUStat(string(b))
	// cgroup v1 keeps usage in cpuacct, mounted with cpu or on its own.
	for _, d := range []string{dir, strings.Replace(dir, "/sys/fs/cgroup/cpu/", "/sys/fs/cgroup/cpuacct/", 1)} {
		if u, err := os.ReadFile(filepath.Join(d, "cpuacct.usage")); err == nil {
			v, _ := strconv.ParseUint(strings.TrimSpace(string(u)), 10, 64)
			c.usage = time.Duration(v)
			break
		}
	}
	return c, nil
}

// parseCPUStat reads a cgroup's cpu.stat: v2's usage_usec and throttled_usec, v1's throttled_time
// (ns), and both's nr_periods and nr_throttled. Lines it does not know are skipped.
func parseCPUStat(text string) cgroupCPU {
	var c cgroupCPU
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		v, _ := strconv.ParseUint(f[1], 10, 64)
		switch f[0] {
		case "usage_usec":
			c.usage = time.Duration(v) * time.Microsecond
		case "nr_periods":
			c.nrPeriods = v
		case "nr_throttled":
			c.nrThrottled = v
		case "throttled_usec":
			c.throttledTime = time.Duration(v) * time.Microsecond
		case "throttled_time": // v1, ns
			c.throttledTime = time.Duration(v)
		}
	}
	return c
}

func (c cgroupCPU) sub(o cgroupCPU) cgroupCPU {
	return cgroupCPU{usage: c.usage - o.usage, throttledTime: c.throttledTime - o.throttledTime,
		nrPeriods: c.nrPeriods - o.nrPeriods, nrThrottled: c.nrThrottled - o.nrThrottled}
}
