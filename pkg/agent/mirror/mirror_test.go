package mirror

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/trafficlab/kubectl-trafficlab/internal/cmdtest"
	"github.com/trafficlab/kubectl-trafficlab/internal/tunneltest"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// TestResolveTo: --to svc/NAME[:PORT] becomes the Service's cluster IP and port (by number or name,
// or its only port), a headless Service its DNS name; a missing Service or port, or a port left out
// of a Service that has several, is refused before anything changes.
func TestResolveTo(t *testing.T) {
	client := fake.NewClientset(
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "canary", Namespace: "ns"}, Spec: corev1.ServiceSpec{
			ClusterIP: "10.96.0.9", Ports: []corev1.ServicePort{{Name: "web", Port: 80}},
		}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "headless", Namespace: "ns"}, Spec: corev1.ServiceSpec{
			ClusterIP: "None", Ports: []corev1.ServicePort{{Port: 8080}},
		}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "two", Namespace: "ns"}, Spec: corev1.ServiceSpec{
			ClusterIP: "10.96.0.10", Ports: []corev1.ServicePort{{Name: "a", Port: 80}, {Name: "b", Port: 81}},
		}},
	)
	tests := []struct{ to, want, wantErr string }{
		{to: "svc/canary:80", want: "10.96.0.9:80"},
		{to: "service/canary:web", want: "10.96.0.9:80"},
		{to: "svc/headless:8080", want: "headless.ns.svc:8080"},
		{to: "10.1.2.3:9000", want: "10.1.2.3:9000"},
		{to: "svc/nope:80", wantErr: `--to "svc/nope:80": service "nope" not found in namespace "ns"`},
		{to: "svc/canary:81", wantErr: `--to "svc/canary:81": service "canary" has no port "81"`},
		{to: "svc/canary", want: "10.96.0.9:80"},
		{to: "svc/two", wantErr: `--to "svc/two": service "two" has 2 ports; name one, e.g. svc/two:PORT`},
	}
	denied := fake.NewClientset()
	denied.PrependReactor("get", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "services"}, "canary", fmt.Errorf("no RBAC"))
	})
	o := &Options{To: "svc/canary:80"}
	if _, _, err := o.resolveTo(context.Background(), denied, "ns"); err == nil || !strings.HasPrefix(err.Error(), `--to "svc/canary:80": get service "canary": `) || !apierrors.IsForbidden(err) {
		t.Errorf("forbidden: error %v, want the API's refusal wrapped", err)
	}
	for _, tt := range tests {
		o := &Options{To: tt.to}
		got, _, err := o.resolveTo(context.Background(), client, "ns")
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("%s: error %v, want %q", tt.to, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: %q, %v; want %q", tt.to, got, err, tt.want)
		}
	}
}

// TestPrinterBatchesLines: a burst of lines reaches the output in one write, without a flush from
// the caller, and every line is there.
func TestPrinterBatchesLines(t *testing.T) {
	w := &cmdtest.CountingWriter{}
	p := newPrinter(w, true, false)
	for i := range 100 {
		p.print(wire.MirrorEvent{Kind: wire.EventMirrored, Method: "GET", Path: fmt.Sprintf("/%d", i), Status: 200})
	}
	// No flush here: the lines leave on lineout's timer.
	deadline := time.Now().Add(5 * time.Second)
	for _, out := w.State(); strings.Count(out, "\n") < 100; _, out = w.State() {
		if time.Now().After(deadline) {
			t.Fatalf("after 5s the output has %d lines, want 100", strings.Count(out, "\n"))
		}
		time.Sleep(time.Millisecond)
	}
	w.CheckBatched(t, 100)
}

// TestCountsFallBackToTheLastReport: the final counts win when they come; when they are late, or
// the events end without them, the agent's last partial report is what the user gets.
func TestCountsFallBackToTheLastReport(t *testing.T) {
	partial := &wire.MirrorStats{Requests: 10, Partial: true}
	later := &wire.MirrorStats{Requests: 20, Partial: true}
	final := &wire.MirrorStats{Requests: 25}
	tests := []struct {
		name  string
		feed  []*wire.MirrorStats
		ended bool
		want  *wire.MirrorStats
	}{
		{"final counts", []*wire.MirrorStats{partial, later, final}, true, final},
		{"final counts late", []*wire.MirrorStats{partial, later}, false, later},
		{"events ended without final counts", []*wire.MirrorStats{partial}, true, partial},
		{"no counts at all", nil, true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCounts()
			for _, s := range tt.feed {
				c.add(s)
			}
			if tt.ended {
				c.end()
			}
			if got := c.wait(50 * time.Millisecond); got != tt.want {
				t.Errorf("wait = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// completed is Options as a verb leaves them after Complete, with the given flags applied.
func completed(t *testing.T, set func(*Options)) *Options {
	t.Helper()
	o := NewOptions()
	o.Filter.Match = wire.MatchAll // the flag's default
	o.DiffHeaders = []string{"Content-Type"}
	set(&o)
	if err := o.Complete(); err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	return &o
}

func testPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		}}},
	}
}

// TestCheck: the ports are resolved against the pod, --to against the cluster (the Service's
// cluster IP goes into the agent's spec), and several matching pods are a warning.
func TestCheck(t *testing.T) {
	client := fake.NewClientset(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "canary", Namespace: "shop"}, Spec: corev1.ServiceSpec{
		ClusterIP: "10.96.0.9", Ports: []corev1.ServicePort{{Name: "web", Port: 80}},
	}})
	o := completed(t, func(o *Options) {
		o.PortArgs, o.To, o.Percent, o.Diff, o.Mode = []string{"8080"}, "svc/canary:web", 10, true, wire.MirrorRedirect
	})
	pod := testPod()
	pod.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}}}
	pod.Status.HostIP = "10.250.0.1"
	warnings, err := o.Check(context.Background(), client, &target.Target{Pod: pod, Container: "app", Replicas: 2})
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"2 ready pods match; only pod web-1 is mirrored"}, warnings); d != "" {
		t.Errorf("warnings (-want +got):\n%s", d)
	}
	// The pod's probes go to the agent, which never copies them.
	want := wire.MirrorSpec{Mode: wire.MirrorRedirect, Ports: []int{8080}, To: "10.96.0.9:80", Percent: 10, Diff: true, DiffHeaders: []string{"Content-Type"},
		Probes: &wire.Probes{Sources: []string{"10.250.0.1"}, Declared: []wire.Probe{{Port: 8080, Kind: wire.ProbeHTTP, Path: "/healthz"}}}}
	if d := cmp.Diff(want, o.Spec()); d != "" {
		t.Errorf("spec (-want +got):\n%s", d)
	}
	if o.Capabilities() != inject.NetAdmin {
		t.Errorf("redirect asks for %v, want NET_ADMIN", o.Capabilities())
	}

	o = completed(t, func(o *Options) { o.PortArgs, o.To = []string{"8080"}, "svc/gone:80" })
	if _, err := o.Check(context.Background(), client, &target.Target{Pod: testPod(), Container: "app", Replicas: 1}); err == nil {
		t.Error("--to a Service that does not exist was accepted")
	}
}

// TestSpec: what the agent is asked follows the flags: everything by default, the sample only
// below 100%, the compared headers only with --diff, the filter only when given.
func TestSpec(t *testing.T) {
	tests := []struct {
		name string
		set  func(*Options)
		want wire.MirrorSpec
	}{
		{name: "defaults", set: func(o *Options) { o.PortArgs = []string{"8080:9090"} },
			want: wire.MirrorSpec{Mode: wire.MirrorSniff, Ports: []int{8080}}},
		{name: "filter", set: func(o *Options) { o.PortArgs = []string{"80", "81"}; o.Filter.Paths = []string{"^/api"} },
			want: wire.MirrorSpec{Mode: wire.MirrorSniff, Ports: []int{80, 81}, Filter: &wire.HTTPFilter{Paths: []string{"^/api"}, Match: wire.MatchAll}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := completed(t, tt.set)
			if d := cmp.Diff(tt.want, o.Spec()); d != "" {
				t.Errorf("spec (-want +got):\n%s", d)
			}
			if o.Capabilities() != inject.NetRaw {
				t.Errorf("sniff asks for %v, want NET_RAW", o.Capabilities())
			}
		})
	}
}

// tunnel is the plugin's end of a real yamux tunnel over net.Pipe, as tunnel.Tunnel would use it;
// the test plays the agent on the other end.
type tunnel struct {
	*wire.Mux
	mu        sync.Mutex
	intervals []time.Duration
}

func (t *tunnel) Mirror(ctx context.Context, spec wire.MirrorSpec) (wire.VerbStream, error) {
	s, err := t.Open(ctx, wire.OpenRequest{Kind: wire.KindMirror, Mirror: &spec})
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (t *tunnel) SetWriteInterval(d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.intervals = append(t.intervals, d)
}

// TestAttach plays the agent: the mirror is asked with the spec and announced, a copy reaches the
// local process, the copied request is printed, the writes are spaced while the mirror lasts, and
// stop half-closes, waits for the final counts and prints them.
func TestAttach(t *testing.T) {
	local := tunneltest.Echo(t).Port
	o := completed(t, func(o *Options) { o.PortArgs = []string{"8080:" + strconv.Itoa(local)}; o.Percent = 50 })
	agent, p := tunneltest.Pipe(t)
	plugin := &tunnel{Mux: p}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	agentDone, written := make(chan error, 1), make(chan struct{})
	go func() {
		agentDone <- func() error {
			in, err := agent.Accept(ctx)
			if err != nil {
				return err
			}
			if d := cmp.Diff(&wire.MirrorSpec{Mode: wire.MirrorSniff, Ports: []int{8080}, Percent: 50}, in.Request().Mirror); d != "" {
				return fmt.Errorf("mirror spec (-want +got):\n%s", d)
			}
			st, err := in.Accept()
			if err != nil {
				return err
			}
			defer st.Close()
			c, err := agent.Open(ctx, wire.OpenRequest{Kind: wire.KindMirrored, Network: wire.NetworkTCP, Address: "10.0.0.1:8080", Port: 8080})
			if err != nil {
				return fmt.Errorf("copy: %w", err)
			}
			if _, err := c.Write([]byte("GET /")); err != nil {
				return err
			}
			buf := make([]byte, 5)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "GET /" {
				return fmt.Errorf("echo through the local process = %q, %w", buf, err)
			}
			c.Close()
			w := wire.NewLineWriter[wire.MirrorEvent](st)
			if err := w.Write(wire.MirrorEvent{Kind: wire.EventMirrored, Peer: "10.0.0.2:1234", Method: "GET", Path: "/", Status: 200, BytesOut: 5, Duration: 3}); err != nil {
				return err
			}
			close(written)
			// The plugin's stop half-closes; the agent then sends its counts and ends the stream.
			if _, err := io.Copy(io.Discard, st); err != nil {
				return err
			}
			return w.Write(wire.MirrorEvent{Kind: wire.EventStats, Stats: &wire.MirrorStats{Requests: 2, Connections: 1, Mirrored: 1, Answered: 1, SampledOut: 1}})
		}()
	}()

	var out, errOut cmdtest.CountingWriter
	var announced []string
	stop, err := o.attach(ctx, plugin, "shop/web-1", nil, &out, &errOut, func(format string, args ...any) {
		announced = append(announced, fmt.Sprintf(format, args...))
	})
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("mirroring port 8080 -> 127.0.0.1:%d (sniffing, 50%% of requests; the pod keeps answering)", local)
	if d := cmp.Diff([]string{want}, announced); d != "" {
		t.Errorf("announced (-want +got):\n%s", d)
	}
	select {
	case <-written:
	case err := <-agentDone:
		t.Fatal(err)
	}
	stop()
	if err := <-agentDone; err != nil {
		t.Fatal(err)
	}
	if _, got := out.State(); !strings.HasSuffix(got, " 10.0.0.2:1234 GET / -> 200, 5 B, 3ms\n") || strings.Count(got, "\n") != 1 {
		t.Errorf("stdout = %q, want the copied request's line", got)
	}
	want = "2 requests seen on 1 connection, 1 mirrored, 1 answered; not mirrored or unanswered: 1 sampled out\n"
	if _, got := errOut.State(); got != want {
		t.Errorf("stderr = %q, want %q", got, want)
	}
	plugin.mu.Lock()
	defer plugin.mu.Unlock()
	if d := cmp.Diff([]time.Duration{wire.MirrorWriteInterval, 0}, plugin.intervals); d != "" {
		t.Errorf("write intervals (-want +got):\n%s", d)
	}
}

// TestPrinterEscapesTraffic: a copied request's path (an h2c :path with OSC 52, which writes the
// terminal's clipboard), a --diff line quoting a response header with CSI sequences, the copy's
// error and a warning reach the terminal with their control characters escaped, whatever the
// agent sent.
func TestPrinterEscapesTraffic(t *testing.T) {
	var out strings.Builder
	p := newPrinter(&out, false, false)
	p.print(wire.MirrorEvent{Kind: wire.EventMirrored, Peer: "10.88.0.1:5555", Method: "GET", Path: "/x\x1b]52;c;aGVsbG8=\a", Status: 200, BytesOut: 3,
		Differences: []string{"header X-App \"\x1b[2J\x1b[H\", pod \"a\""}})
	p.print(wire.MirrorEvent{Kind: wire.EventMirrored, Peer: "10.88.0.1:5555", Method: "P\u009bST", Path: "/a", Error: "read \x1b[8mhidden", Message: "\a"})
	p.print(wire.MirrorEvent{Kind: wire.EventCopied, Peer: "10.88.0.1:5555\x1b[1A", Port: 6379})
	p.print(wire.MirrorEvent{Kind: wire.EventWarning, Message: "a request to \"/\x1b]0;title\a\""})
	p.flush()
	var got []string
	for _, line := range strings.SplitAfter(out.String(), "\n") {
		if _, rest, ok := strings.Cut(line, " "); ok { // the clock
			got = append(got, rest)
		}
	}
	want := []string{
		"10.88.0.1:5555 GET /x\\x1b]52;c;aGVsbG8=\\a -> 200, 3 B, 0s; differs: header X-App \"\\x1b[2J\\x1b[H\", pod \"a\"\n",
		"10.88.0.1:5555 P\\u009bST /a -> no answer: read \\x1b[8mhidden (\\a)\n",
		"10.88.0.1:5555\\x1b[1A -> port 6379: connection copied, 0 B sent, 0 B answered, 0s\n",
		"warning: a request to \"/\\x1b]0;title\\a\"\n",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
}

// TestSpecUnownedRedirect: --allow-unowned-redirect reaches the agent, which refuses a redirect
// mirror on a kernel without the nftables owner flag unless it does.
func TestSpecUnownedRedirect(t *testing.T) {
	o := completed(t, func(o *Options) {
		o.PortArgs, o.Mode, o.AllowUnownedRedirect = []string{"80"}, wire.MirrorRedirect, true
	})
	want := wire.MirrorSpec{Mode: wire.MirrorRedirect, Ports: []int{80}, AllowUnownedRedirect: true}
	if d := cmp.Diff(want, o.Spec()); d != "" {
		t.Errorf("spec (-want +got):\n%s", d)
	}
}

// In a meshed pod a redirect mirror is refused before anything changes; a sniffing one changes nothing
// in the pod and goes ahead.
func TestCheckMeshedPod(t *testing.T) {
	pod := testPod()
	pod.Annotations = map[string]string{"linkerd.io/proxy-version": "edge-26.1.1"}
	redirect := completed(t, func(o *Options) { o.PortArgs, o.Mode = []string{"8080"}, wire.MirrorRedirect })
	if _, err := redirect.Check(context.Background(), fake.NewClientset(), &target.Target{Pod: pod, Container: "app", Replicas: 1}); err != nil {
		t.Errorf("redirect Check = %v, want a Linkerd sidecar allowed (the agent redirects after it)", err)
	}
	tproxy := testPod()
	tproxy.Annotations = map[string]string{"sidecar.istio.io/status": "{}", "sidecar.istio.io/interceptionMode": "TPROXY"}
	_, err := redirect.Check(context.Background(), fake.NewClientset(), &target.Target{Pod: tproxy, Container: "app", Replicas: 1})
	if err == nil || !strings.Contains(err.Error(), "Istio's TPROXY interception mode") || !strings.Contains(err.Error(), "mirror --mode redirect is refused") {
		t.Errorf("redirect Check = %v, want the TPROXY refusal", err)
	}
	sniff := completed(t, func(o *Options) { o.PortArgs = []string{"8080"} })
	if _, err := sniff.Check(context.Background(), fake.NewClientset(), &target.Target{Pod: pod, Container: "app", Replicas: 1}); err != nil {
		t.Errorf("sniff Check = %v, want it allowed", err)
	}
}

// TestMeshedPodHintInRequest: a sniffing mirror of a pod with an Istio or Linkerd sidecar, resolved
// from the API (a fake clientset), asks the agent with the mesh's hint in the request, and says where
// it sniffs; a pod without a mesh sends none.
func TestMeshedPodHintInRequest(t *testing.T) {
	for _, tt := range []struct {
		name     string
		pod      func(*corev1.Pod)
		want     *wire.Mesh
		announce string
	}{
		{name: "Istio sidecar", pod: func(p *corev1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "istio-proxy"})
		},
			want:     &wire.Mesh{Name: wire.MeshIstio, Mode: wire.MeshSidecar, ProxyUID: 1337},
			announce: "(sniffing lo, where the Istio sidecar hands the app plaintext; the pod keeps answering)"},
		{name: "Linkerd by its annotation", pod: func(p *corev1.Pod) { p.Annotations = map[string]string{"linkerd.io/proxy-version": "edge-26.1.1"} },
			want:     &wire.Mesh{Name: wire.MeshLinkerd, Mode: wire.MeshSidecar, ProxyUID: 2102},
			announce: "(sniffing lo, where the Linkerd sidecar hands the app plaintext; the pod keeps answering)"},
		{name: "no mesh", pod: func(*corev1.Pod) {}, announce: "(sniffing; the pod keeps answering)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pod := testPod()
			pod.Status.Phase = corev1.PodRunning
			tt.pod(pod)
			client := fake.NewClientset(pod)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			tgt, err := target.Resolve(ctx, client, target.Options{Namespace: "shop", Resource: "pod/web-1"})
			if err != nil {
				t.Fatal(err)
			}
			o := completed(t, func(o *Options) { o.PortArgs = []string{"8080"} })
			if _, err := o.Check(ctx, client, tgt); err != nil {
				t.Fatal(err)
			}

			agent, p := tunneltest.Pipe(t)
			agentDone := make(chan error, 1)
			go func() {
				agentDone <- func() error {
					in, err := agent.Accept(ctx)
					if err != nil {
						return err
					}
					if d := cmp.Diff(tt.want, in.Request().Mirror.Mesh); d != "" {
						_ = in.Reject(wire.ErrBadRequest)
						return fmt.Errorf("mesh in the request (-want +got):\n%s", d)
					}
					st, err := in.Accept()
					if err != nil {
						return err
					}
					defer st.Close()
					if _, err := io.Copy(io.Discard, st); err != nil {
						return err
					}
					return wire.NewLineWriter[wire.MirrorEvent](st).Write(wire.MirrorEvent{Kind: wire.EventStats, Stats: &wire.MirrorStats{}})
				}()
			}()
			var announced []string
			stop, err := o.attach(ctx, &tunnel{Mux: p}, "shop/web-1", nil, io.Discard, io.Discard, func(format string, args ...any) {
				announced = append(announced, fmt.Sprintf(format, args...))
			})
			if err != nil {
				t.Fatalf("%v; the agent saw: %v", err, <-agentDone)
			}
			stop()
			if err := <-agentDone; err != nil {
				t.Fatal(err)
			}
			if len(announced) != 1 || !strings.HasSuffix(announced[0], tt.announce) {
				t.Errorf("announced %q, want it to end in %q", announced, tt.announce)
			}
		})
	}
}

// TestPrinterNamesPod: each line of a workload's pod names it, in text and JSON.
func TestPrinterNamesPod(t *testing.T) {
	var out bytes.Buffer
	p := newPrinter(&out, true, false)
	p.forPod("web-2").print(wire.MirrorEvent{Kind: wire.EventMirrored, Method: "GET", Path: "/a", Status: 200})
	p.flush()
	if diff := cmp.Diff(`{"pod":"web-2","kind":"mirrored","method":"GET","path":"/a","status":200}`+"\n", out.String()); diff != "" {
		t.Errorf("json (-want +got):\n%s", diff)
	}
	out.Reset()
	p = newPrinter(&out, false, false)
	p.forPod("web-2").print(wire.MirrorEvent{Kind: wire.EventMirrored, Method: "GET", Path: "/a", Status: 200})
	p.flush()
	if got := out.String(); !regexp.MustCompile(`^\[pod/web-2\] \d\d:\d\d:\d\d  GET /a -> 200, 0 B, 0s\n$`).MatchString(got) {
		t.Errorf("text line %q does not name the pod first", got)
	}
}

// TestAddStats: the total of the pods' counts sums every counter and keeps the largest agent.
func TestAddStats(t *testing.T) {
	var total wire.MirrorStats
	addStats(&total, &wire.MirrorStats{Connections: 1, Requests: 10, Mirrored: 9, Answered: 8, DroppedSlow: 1, KernelReceived: 100, KernelDropped: 2, AgentMaxRSS: 30 << 20})
	addStats(&total, &wire.MirrorStats{Connections: 2, Requests: 5, Mirrored: 5, Answered: 5, Failed: 1, KernelReceived: 50, AgentMaxRSS: 20 << 20, Partial: true})
	want := wire.MirrorStats{Connections: 3, Requests: 15, Mirrored: 14, Answered: 13, DroppedSlow: 1, Failed: 1, KernelReceived: 150, KernelDropped: 2, AgentMaxRSS: 30 << 20, Partial: true}
	if diff := cmp.Diff(want, total); diff != "" {
		t.Errorf("total (-want +got):\n%s", diff)
	}
}
