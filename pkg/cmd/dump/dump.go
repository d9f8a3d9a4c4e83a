// Package dump implements `kubectl trafficlab dump`: the pod's traffic shown live in the terminal,
// one line per HTTP exchange or TCP connection, and written as pcapng for Wireshark.
package dump

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
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
	f.IntSliceVarP(&o.Ports, "port", "p", nil, "Capture only packets to or from these ports (TCP or UDP). Repeatable or comma separated.")
	f.StringVarP(&o.Write, "write", "w", "", "Write the capture as pcapng to this file, or to stdout with -; the live view then goes to stderr.")
	f.StringVarP(&o.Output, "output", "o", "", "Output format of the live view: json (one object per line), or empty for text.")
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

// Run starts the session and the capture, and shows and writes it until interrupted or the agent
// goes away. Ctrl-C ends the capture gracefully: the agent then sends its packet counts.
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
	s, err := session.Start(ctx, o.kube, o.Session, session.Request{
		Target: o.Target, Capabilities: inject.NetRaw, AddNetRaw: o.AddNetRaw,
	}, o.ErrOut)
	if err != nil {
		return err
	}
	defer s.Close()
	spec := o.request(s.Target.Pod)
	st, err := s.Tunnel.Dump(ctx, spec)
	if err != nil {
		return fmt.Errorf("start capturing in pod %s/%s: %w", s.Target.Pod.Namespace, s.Target.Pod.Name, err)
	}
	defer st.Close()
	what := "every packet"
	if f := strings.TrimSpace(describe(spec)); f != "" {
		what = f
	}
	s.Progress.Stepf("capturing %s in pod %s/%s%s", what, s.Target.Pod.Namespace, s.Target.Pod.Name, where(spec))

	// The agent's stream goes through the merger even for one pod, so that the file's interfaces are
	// named POD/eth0 and POD/lo whether the dump covers one pod or several.
	pr, pw := io.Pipe()
	var merged io.Writer = pw
	if file != nil {
		merged = io.MultiWriter(file, pw)
	}
	merger := capture.NewMerger(merged)
	go func() {
		err := errors.Join(merger.Add(s.Target.Pod.Name, st), merger.Close())
		if err == nil {
			err = io.EOF
		}
		pw.CloseWithError(err)
	}()
	v := newView(viewOut, o.Output == "json", o.Ports)
	done := make(chan error, 1)
	stats := map[int]pcapgo.NgInterfaceStatistics{}
	var statsMu sync.Mutex
	go func() {
		done <- read(pr, v, func(id int, s pcapgo.NgInterfaceStatistics) {
			statsMu.Lock()
			stats[id] = s
			statsMu.Unlock()
		})
		// A view that stopped reading must not block the merger, and so the file.
		_, _ = io.Copy(io.Discard, pr)
	}()
	var runErr error
	select {
	case err := <-done:
		runErr = err
	case <-ctx.Done():
		// Half-close: the agent stops, sends its counts and closes its side.
		_ = st.CloseWrite()
		select {
		case err := <-done:
			runErr = err
		case <-time.After(5 * time.Second):
		}
	case <-s.Tunnel.Done():
		runErr = s.Lost()
	}
	v.close()
	statsMu.Lock()
	if len(stats) > 0 {
		// Each pod's agent reports its counts, summed over its sockets, once at the end.
		var total pcapgo.NgInterfaceStatistics
		for _, s := range stats {
			total.PacketsReceived += s.PacketsReceived
			total.PacketsDropped += s.PacketsDropped
		}
		fmt.Fprintf(o.ErrOut, "%d packets captured, %d dropped by the kernel\n", total.PacketsReceived, total.PacketsDropped)
	}
	statsMu.Unlock()
	if runErr != nil && !errors.Is(runErr, io.EOF) && ctx.Err() == nil {
		return runErr
	}
	return nil
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
