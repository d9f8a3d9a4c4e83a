package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// cpuSample is the CPU time of every process and of the whole machine at one moment, from /proc. The
// bench, the cluster and its pods share one machine, so where the CPU goes during a run says which hop
// costs what.
type cpuSample struct {
	procs       map[int]procCPU
	total, idle uint64 // jiffies over all CPUs, from /proc/stat
	irq         uint64 // of which in hard and soft interrupts, which no process is charged with
	cpus        int
}

type procCPU struct {
	group string
	ticks uint64 // utime + stime
	calls uint64 // read and write system calls (syscr + syscw), each a message through a relay
}

// cpuGroups are the table's columns, in order. kernel is the kernel's threads (softirq work of the
// network among them); other is every user process not named here: the rest of the cluster, other
// pods, anything else running on the machine. A run during which other is busy was disturbed.
var cpuGroups = []string{"app", "agent", "plugin", "kubectl", "apiserver", "kubelet", "containerd", "kernel", "other"}

// pfKthread is the kernel thread bit of the flags in /proc/PID/stat.
const pfKthread = 0x00200000

// group names a process by its command, and counts the app and agent only when they run in the
// bench's pod (other pods may run the same images).
func group(comm string, inPod, kthread bool) string {
	if kthread {
		return "kernel"
	}
	switch comm {
	case "peer-echo":
		if inPod {
			return "app"
		}
	case "trafficlab-agen": // comm is cut at 15 bytes
		if inPod {
			return "agent"
		}
	case "kubectl-traffic":
		return "plugin"
	case "kubectl":
		return "kubectl"
	case "kube-apiserver":
		return "apiserver"
	case "kubelet":
		return "kubelet"
	case "containerd", "containerd-shim":
		return "containerd"
	}
	return "other"
}

// takeCPU reads /proc; podUID selects the bench pod's processes by their cgroup path.
func takeCPU(podUID string) cpuSample {
	s := cpuSample{procs: map[int]procCPU{}}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) > 4 && f[0] == "cpu":
				for i, v := range f[1:] {
					n, _ := strconv.ParseUint(v, 10, 64)
					s.total += n
					switch i {
					case 3, 4: // idle, iowait
						s.idle += n
					case 5, 6: // irq, softirq
						s.irq += n
					}
				}
			case strings.HasPrefix(f[0], "cpu"):
				s.cpus++
			}
		}
	}
	systemdUID := strings.ReplaceAll(podUID, "-", "_")
	self := os.Getpid()
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		b, err := os.ReadFile(d + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if open < 0 || end < open {
			continue
		}
		comm := string(b[open+1 : end])
		f := strings.Fields(string(b[end+1:]))
		if len(f) < 13 {
			continue
		}
		flags, _ := strconv.ParseUint(f[6], 10, 64)
		ut, _ := strconv.ParseUint(f[11], 10, 64)
		st, _ := strconv.ParseUint(f[12], 10, 64)
		if pid == self {
			// The bench's own client and local server; vegeta is measured from its rusage.
			s.procs[pid] = procCPU{group: "bench", ticks: ut + st}
			continue
		}
		inPod := false
		if podUID != "" && (comm == "peer-echo" || comm == "trafficlab-agen") {
			cg, _ := os.ReadFile(d + "/cgroup")
			inPod = bytes.Contains(cg, []byte(podUID)) || bytes.Contains(cg, []byte(systemdUID))
		}
		g := group(comm, inPod, flags&pfKthread != 0)
		s.procs[pid] = procCPU{group: g, ticks: ut + st, calls: ioCalls(d, g)}
	}
	return s
}

// ioCalls is the process's read and write system calls so far, for the relays only: the port-forward
// chain costs per message more than per byte, so its calls per request tell how well the tunnel
// batches, independently of how fast the machine happens to be.
func ioCalls(dir, group string) uint64 {
	if group != "apiserver" && group != "kubelet" && group != "containerd" {
		return 0
	}
	b, err := os.ReadFile(dir + "/io")
	if err != nil {
		return 0
	}
	var n uint64
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "syscr: "); ok {
			c, _ := strconv.ParseUint(v, 10, 64)
			n += c
		} else if v, ok := strings.CutPrefix(line, "syscw: "); ok {
			c, _ := strconv.ParseUint(v, 10, 64)
			n += c
		}
	}
	return n
}

// cpuUse is CPU use between two samples in cores (1.0 = one core busy the whole time).
type cpuUse struct {
	busy      float64 // the whole machine
	groups    map[string]float64
	relayIO   uint64  // read and write calls of the apiserver, the kubelet and containerd
	client    float64 // vegeta, from its rusage (machine.run)
	disturbed bool    // other processes were busy during the run (machine.run)
}

// since returns the use from an earlier sample to s. Processes that started or ended in between are
// left out here; vegeta is measured from its own rusage, and machine.run charges the rest to other.
// Interrupt time goes to kernel.
func (s cpuSample) since(earlier cpuSample) cpuUse {
	u := cpuUse{groups: map[string]float64{}}
	dt := float64(s.total - earlier.total)
	if dt <= 0 || s.cpus == 0 {
		return u
	}
	perCore := dt / float64(s.cpus) // jiffies of one core over the interval
	u.busy = (dt - float64(s.idle-earlier.idle)) / perCore
	u.groups["kernel"] += float64(s.irq-earlier.irq) / perCore
	for pid, p := range s.procs {
		e, ok := earlier.procs[pid]
		if !ok || p.ticks < e.ticks {
			continue
		}
		u.groups[p.group] += float64(p.ticks-e.ticks) / perCore
		if p.calls >= e.calls {
			u.relayIO += p.calls - e.calls
		}
	}
	return u
}

// String is the one-line form of u for the log.
func (u cpuUse) String() string {
	s := fmt.Sprintf("machine %.2f, vegeta %.2f", u.busy, u.client)
	for _, g := range cpuGroups {
		s += fmt.Sprintf(", %s %.2f", g, u.groups[g])
	}
	return s + " cores"
}

// machine keeps runs away from other work on the shared machine: it waits until the machine is
// quiet before a run and repeats a run during which other processes were busy.
type machine struct {
	podUID   string
	idleBusy float64 // busy cores below which the machine counts as quiet while the bench idles
	maxOther float64 // cores of other user processes above which a run counts as disturbed
	attempts int
}

// waitQuiet polls the machine's CPU use over one-second windows until it is below idleBusy and the
// cluster's own processes idle, for at most ten minutes, after which it lets the run go ahead and
// says so.
func (m *machine) waitQuiet(ctx context.Context) error {
	start := time.Now()
	var lastLog time.Time
	for {
		before := takeCPU(m.podUID)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second): // the measuring window, not a guess at a delay
		}
		u := takeCPU(m.podUID).since(before)
		waited := time.Since(start)
		// Other users of the cluster (someone's e2e tests) load the apiserver, kubelet and containerd,
		// which the steal's tunnel uses too, so they have to be idle as well.
		cluster := u.groups["apiserver"] + u.groups["kubelet"] + u.groups["containerd"]
		switch {
		case u.busy < m.idleBusy && cluster < 0.1:
			if waited > 2*time.Second {
				fmt.Fprintf(os.Stderr, "  machine quiet after %s\n", waited.Round(time.Second))
			}
			return nil
		case waited > 10*time.Minute:
			fmt.Fprintf(os.Stderr, "  machine still busy (%.2f cores) after 10m; measuring anyway\n", u.busy)
			return nil
		case time.Since(lastLog) > 30*time.Second:
			fmt.Fprintf(os.Stderr, "  waiting for a quiet machine: %.2f cores busy (%s)\n", u.busy, u)
			lastLog = time.Now()
		}
	}
}

// run waits for a quiet machine, runs fn and returns the CPU use meanwhile; fn returns the cores its
// client used if that is a process of its own (vegeta). Busy time that no process of the path
// accounts for (processes that came and went, such as another build's compilers) is charged to
// other. A run during which other used more than maxOther is run again, up to attempts times; the
// last one counts as disturbed.
func (m *machine) run(ctx context.Context, what string, fn func() (float64, error)) (cpuUse, error) {
	for attempt := 1; ; attempt++ {
		if err := m.waitQuiet(ctx); err != nil {
			return cpuUse{}, err
		}
		before := takeCPU(m.podUID)
		client, err := fn()
		if err != nil {
			return cpuUse{}, err
		}
		u := takeCPU(m.podUID).since(before)
		u.client = client
		seen := client
		for _, v := range u.groups {
			seen += v
		}
		u.groups["other"] += max(0, u.busy-seen)
		if u.groups["other"] <= m.maxOther {
			return u, nil
		}
		if attempt >= m.attempts {
			u.disturbed = true
			fmt.Fprintf(os.Stderr, "  %s: other processes used %.2f cores; keeping this disturbed run after %d attempts\n", what, u.groups["other"], attempt)
			return u, nil
		}
		fmt.Fprintf(os.Stderr, "  %s: other processes used %.2f cores; running it again\n", what, u.groups["other"])
	}
}
