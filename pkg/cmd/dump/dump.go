// Package dump implements `kubectl trafficlab dump`: the pod's traffic shown live in the terminal,
// one line per HTTP exchange or TCP connection, and written as pcapng for Wireshark.
package dump

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gopacket/gopacket/pcapgo"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/kubectl/pkg/util/templates"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/mesh"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/session"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/lineout"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

var (
	dumpLong = templates.LongDesc(`
		Show a pod's traffic live and write it as pcapng for Wireshark, without touching the pod.

		The agent, added to the pod as an ephemeral container, captures on every interface of the
		pod's network namespace (loopback included) with the filter compiled into the kernel, and
		streams the packets to this machine. The terminal shows one line per HTTP request and
		response (HTTP/1.1 and h2c) and one per other TCP connection; -w writes the capture.

		FILTER is a tcpdump-style expression (host, net, port, portrange, tcp, udp, icmp, ip, ip6,
		and, or, not, parentheses). Capturing needs only NET_RAW, which container runtimes such as
		containerd give a root container by default, so the agent adds no capability and is admitted
		in namespaces at the PodSecurity "baseline" level. Where the runtime drops NET_RAW (CRI-O),
		use --add-net-raw.

		In a pod with an Istio or Linkerd sidecar, the mesh's ports reach the pod as mTLS on eth0,
		and the sidecar hands them to the app in plaintext over lo. With --port the agent captures
		those ports on lo only, where each request shows once in plaintext; without --port it
		captures every interface, eth0's ciphertext included.

		On a workload (deployment, statefulset, daemonset, replicaset, replicationcontroller, job,
		service or -l) every ready pod is captured, each with its own agent, up to --max-pods: pods
		that become ready during the session are joined, pods that go away leave, every line names
		its pod, and the counts are given per pod and in total. --one-pod captures one pod only.


		The pcapng that -w writes has one interface per interface of each pod, named POD/eth0,
		POD/lo, so that Wireshark's frame.interface_name tells the pods apart; a pod that joins
		during the capture has its interfaces appended. Packets from several pods are merged by
		timestamp within about a second; the timestamps are each node's clock, so pods on
		different nodes are only ordered as well as the nodes' clocks agree.`)

	dumpExample = templates.Examples(`
		# Watch the HTTP requests to port 8080 of pod web
		kubectl trafficlab dump pod/web --port 8080

		# Open the live capture in Wireshark
		kubectl trafficlab dump deploy/api --port 8080 -w - | wireshark -k -i -

		# Write a file with a tcpdump-style filter, and one JSON line per exchange on stdout
		kubectl trafficlab dump pod/web -w web.pcapng -o json 'tcp port 8080 and not host 10.88.0.1'`)
)

// Options holds what dump needs to run.
type Options struct {
	Target    target.Options
	Session   session.Options
	Ports     []int
	Filter    string
	Write     string
	Output    string
	SnapLen   int
	AddNetRaw bool

	configFlags *genericclioptions.ConfigFlags
	kube        target.Kube

	genericiooptions.IOStreams
}

// NewOptions returns Options with the defaults.
func NewOptions(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *Options {
	return &Options{IOStreams: streams, configFlags: configFlags, Session: session.NewOptions()}
}

// NewCmdDump returns the dump command.
func NewCmdDump(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *cobra.Command {
	return newCmd(NewOptions(streams, configFlags))
}

func newCmd(o *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:                   "dump TYPE/NAME [--port PORT ...] [-w FILE|-] [FILTER]",
		DisableFlagsInUseLine: true,
		ValidArgsFunction:     target.CompletionFunc(o.configFlags),
		Short:                 "Show a pod's traffic live and write it as pcapng",
		Long:                  dumpLong,
		Example:               dumpExample,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Complete(cmd, args); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	o.Target.AddFlags(f)
	o.Target.AddWorkloadFlags(f)
	f.IntSliceVarP(&o.Ports, "port", "p", nil, "Capture only packets to or from these ports (TCP or UDP). Repeatable or comma separated.")
	f.StringVarP(&o.Write, "write", "w", "", "Write the capture as pcapng to this file, or to stdout with -; the live view then goes to stderr.")
	f.StringVarP(&o.Output, "output", "o", "", "Output format of the live view: json (one object per line), or empty for text.")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"json"}, cobra.ShellCompDirectiveNoFileComp))
	f.IntVar(&o.SnapLen, "snaplen", 0, "Bytes of each packet to keep; 0 keeps whole packets.")
	f.BoolVar(&o.AddNetRaw, "add-net-raw", false, "Add NET_RAW to the agent instead of relying on the container runtime's default (needed on CRI-O; refused by PodSecurity baseline).")
	o.Session.AddFlags(f)
	return cmd
}

// Complete reads flags, arguments and the kubeconfig.
func (o *Options) Complete(cmd *cobra.Command, args []string) error {
	if o.Target.Selector == "" && len(args) > 0 {
		o.Target.Resource = args[0]
		args = args[1:]
	}
	// tcpdump takes its expression as the remaining words, quoted or not.
	o.Filter = strings.Join(args, " ")
	var err error
	o.kube, err = o.Target.LoadKube(o.configFlags)
	return err
}

// Validate checks the options; no I/O. The filter itself is compiled by the agent, and by capture here
// too so that a typo is reported before anything is added to the pod.
func (o *Options) Validate() error {
	if err := o.Target.Require("kubectl trafficlab dump pod/web --port 8080"); err != nil {
		return err
	}
	if err := o.Target.ValidateWorkload(); err != nil {
		return err
	}
	spec := o.spec()
	for _, p := range o.Ports {
		if p < 1 || p > 65535 {
			return fmt.Errorf("--port %d is out of range 1-65535", p)
		}
	}
	if o.SnapLen < 0 || o.SnapLen > 262144 {
		return fmt.Errorf("--snaplen must be from 0 to 262144, not %d", o.SnapLen)
	}
	if err := checkFilter(spec); err != nil {
		return err
	}
	if o.Output != "" && o.Output != "json" {
		return fmt.Errorf("--output must be json or empty, not %q", o.Output)
	}
	if o.Write == "-" && o.Output == "json" {
		return errors.New("-w - writes the capture to stdout; it cannot also carry -o json lines")
	}
	return o.Session.Validate()
}

func (o *Options) spec() wire.DumpSpec {
	return wire.DumpSpec{Ports: o.Ports, Filter: o.Filter, SnapLen: o.SnapLen}
}

// request is what the agent is asked for pod: the spec and the mesh seen in the pod's spec, which
// decides where the agent captures (wire.SniffInterface).
func (o *Options) request(pod *corev1.Pod) wire.DumpSpec {
	spec := o.spec()
	spec.Mesh = mesh.Detect(pod).Hint()
	return spec
}

// where says where the capture of spec reads, for the progress line: in a pod with a sidecar the
// mesh's ports carry mTLS on eth0 and the proxy's plaintext to the app on lo.
func where(spec wire.DumpSpec) string {
	switch {
	case !spec.Mesh.Sidecar():
		return ""
	case wire.SniffInterface(spec.Mesh, spec.Ports) == wire.Loopback:
		return fmt.Sprintf(" on lo only (the %s sidecar's plaintext connections to the app; eth0 carries the mesh's mTLS)", spec.Mesh.Name)
	default:
		return fmt.Sprintf(" on every interface (%s sidecar: the ports it captures are mTLS on eth0 and plaintext on lo; --port reads lo only)", spec.Mesh.Name)
	}
}

// Run starts the session and a capture in each pod, and shows and writes them until interrupted or the
// session cannot go on. Ctrl-C ends each capture gracefully: its agent then sends its packet counts.
func (o *Options) Run(ctx context.Context) error {
	var file io.WriteCloser
	switch o.Write {
	case "":
	case "-":
		file = nopCloser{o.Out}
	default:
		f, err := os.Create(o.Write)
		if err != nil {
			return fmt.Errorf("-w %q: %w", o.Write, err)
		}
		file = f
	}
	if file != nil {
		defer file.Close()
	}
	viewOut := o.Out
	if o.Write == "-" {
		viewOut = o.ErrOut
	}
	d := &fanout{o: o, out: lineout.New(viewOut), stats: map[string]podStats{}}
	if file != nil {
		d.pcap = newMergedCapture(file, o.ErrOut)
	}
	s, err := session.StartWorkload(ctx, o.kube, o.Session, session.Request{
		Target: o.Target, Capabilities: inject.NetRaw, AddNetRaw: o.AddNetRaw,
	}, o.ErrOut, d.join)
	if err != nil {
		return err
	}
	what := "every packet"
	if f := strings.TrimSpace(describe(o.spec())); f != "" {
		what = f
	}
	d.mu.Lock()
	where := d.where
	d.mu.Unlock()
	s.Announce("capturing %s in %s%s", what, s.Coverage(), where)
	runErr := s.Wait(ctx)
	s.Close()
	if d.pcap != nil {
		if err := d.pcap.Close(); err != nil && runErr == nil {
			runErr = fmt.Errorf("-w %q: %w", o.Write, err)
		}
	}
	d.summarize(o.ErrOut)
	return runErr
}

// fanout is a dump over a workload session: one capture per pod, each decoded by a view of its own
// (a connection belongs to one pod) into the one live view, every line naming its pod.
type fanout struct {
	o    *Options
	out  *lineout.Writer
	pcap captureWriter

	mu    sync.Mutex
	where string
	stats map[string]podStats
}

// podStats are one pod's kernel counts at the end of its capture.
type podStats struct {
	received, dropped uint64
	seen              bool
}

// join starts the capture in one pod of the session.
func (d *fanout) join(ctx context.Context, p *session.Pod) (leave func(), err error) {
	spec := d.o.request(p.Target.Pod)
	st, err := p.Tunnel.Dump(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("start capturing in pod %s/%s: %w", p.Target.Pod.Namespace, p.Name(), err)
	}
	d.mu.Lock()
	if w := where(spec); w != "" {
		d.where = w
	}
	d.mu.Unlock()
	var r io.Reader = st
	var file io.WriteCloser
	if d.pcap != nil {
		file = d.pcap.Pod(p.Name())
		r = io.TeeReader(st, file)
	}
	v := newView(d.out, d.o.Output == "json", d.o.Ports, p.Name())
	done := make(chan error, 1)
	// The pod's counts, one per interface its agent reads (eth0, lo), sent once at the end.
	stats := map[int]pcapgo.NgInterfaceStatistics{}
	go func() {
		done <- read(r, v, func(id int, s pcapgo.NgInterfaceStatistics) { stats[id] = s })
	}()
	return func() {
		// Half-close: the agent stops, sends its counts and closes its side.
		_ = st.CloseWrite()
		var err error
		finished := false
		select {
		case err = <-done:
			finished = true
		case <-time.After(5 * time.Second):
		}
		st.Close()
		if file != nil {
			file.Close()
		}
		v.close()
		if err != nil && !errors.Is(err, io.EOF) && ctx.Err() == nil {
			fmt.Fprintf(d.o.ErrOut, "warning: the capture of pod %s ended: %v\n", p.Name(), err)
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		ps := podStats{}
		// stats is the reader's until it has finished.
		if finished {
			for _, s := range stats {
				ps.received += s.PacketsReceived
				ps.dropped += s.PacketsDropped
				ps.seen = true
			}
		}
		d.stats[p.Name()] = ps
	}, nil
}

// summarize writes each pod's packet counts, and their total.
func (d *fanout) summarize(errOut io.Writer) {
	d.mu.Lock()
	defer d.mu.Unlock()
	names := make([]string, 0, len(d.stats))
	for n := range d.stats {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) == 1 {
		// One pod's counts are the session's: the line reads as it always did.
		if ps := d.stats[names[0]]; ps.seen {
			fmt.Fprintf(errOut, "%d packets captured, %d dropped by the kernel\n", ps.received, ps.dropped)
		}
		return
	}
	var total podStats
	for _, n := range names {
		ps := d.stats[n]
		if !ps.seen {
			continue
		}
		fmt.Fprintf(errOut, "pod %s: %d packets captured, %d dropped by the kernel\n", n, ps.received, ps.dropped)
		total.received += ps.received
		total.dropped += ps.dropped
		total.seen = true
	}
	if total.seen {
		fmt.Fprintf(errOut, "total (%d pods): %d packets captured, %d dropped by the kernel\n", len(names), total.received, total.dropped)
	}
}

// captureWriter is where -w's pcapng goes: it takes the pcapng stream of each pod of the session (each
// a whole pcapng of its own: section header, interfaces, packets, counts) as the pod joins, and
// writes them as one file.
type captureWriter interface {
	// Pod returns the writer of pod's stream, called once for each pod that joins and closed when
	// its capture ends.
	Pod(name string) io.WriteCloser
	// Close waits for every pod's stream to be written and ends the file.
	Close() error
}

// mergedCapture is -w's one pcapng for any number of pods, through capture.Merger: an interface per
// pod interface (POD/eth0, POD/lo), records merged by timestamp. A pod's stream that the merger
// refuses is reported and dropped from the file, never stopping the live view that tees it.
type mergedCapture struct {
	m      *capture.Merger
	errOut io.Writer
	wg     sync.WaitGroup
}

func newMergedCapture(w io.Writer, errOut io.Writer) *mergedCapture {
	return &mergedCapture{m: capture.NewMerger(w), errOut: errOut}
}

func (c *mergedCapture) Pod(name string) io.WriteCloser {
	pr, pw := io.Pipe()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := c.m.Add(name, pr); err != nil {
			fmt.Fprintf(c.errOut, "warning: -w: the capture of pod %s is not written on: %v\n", name, err)
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	return pw
}

func (c *mergedCapture) Close() error {
	c.wg.Wait()
	return c.m.Close()
}

func describe(spec wire.DumpSpec) string {
	var parts []string
	if len(spec.Ports) > 0 {
		ps := make([]string, len(spec.Ports))
		for i, p := range spec.Ports {
			ps[i] = strconv.Itoa(p)
		}
		parts = append(parts, "ports "+strings.Join(ps, ","))
	}
	if spec.Filter != "" {
		parts = append(parts, fmt.Sprintf("%q", spec.Filter))
	}
	return strings.Join(parts, " and ")
}

// read decodes the pcapng stream, handing each packet to the view, until the stream ends.
func read(r io.Reader, v *view, onStats func(int, pcapgo.NgInterfaceStatistics)) error {
	ng, err := pcapgo.NewNgReader(r, pcapgo.NgReaderOptions{StatisticsCallback: onStats})
	if err != nil {
		return fmt.Errorf("read the capture: %w", err)
	}
	for {
		data, ci, err := ng.ReadPacketData()
		if err != nil {
			return err
		}
		v.packet(data, ci)
	}
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// checkFilter compiles the user's expression alone first, so that an error's position refers to what
// the user typed.
func checkFilter(spec wire.DumpSpec) error {
	if strings.TrimSpace(spec.Filter) != "" {
		if _, err := capture.ParseExpr(spec.Filter); err != nil {
			return err
		}
	}
	if text := spec.Expr(); text != "" {
		if _, err := capture.ParseExpr(text); err != nil {
			return err
		}
	}
	return nil
}
