package steal

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/trafficlab/kubectl-trafficlab/internal/cmdtest"
	"github.com/trafficlab/kubectl-trafficlab/internal/tunneltest"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

func testPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name:  "app",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "metrics", ContainerPort: 9090}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: "/healthz", Port: intstr.FromString("http"),
			}}},
			LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9090}}},
		}}},
	}
}

func TestProbeWarnings(t *testing.T) {
	compile := func(f wire.HTTPFilter) func(string, string, []string) bool {
		m, err := f.Compile()
		if err != nil {
			t.Fatal(err)
		}
		return m.Match
	}
	tests := []struct {
		name        string
		ports       []int
		stealProbes bool
		match       func(string, string, []string) bool
		want        int
	}{
		{name: "probes are passed by default", ports: []int{8080, 9090}, want: 0},
		{name: "whole port with --steal-probes", ports: []int{8080}, stealProbes: true, want: 1},
		{name: "both probe ports", ports: []int{8080, 9090}, stealProbes: true, want: 2},
		{name: "other port", ports: []int{3000}, stealProbes: true, want: 0},
		{name: "look-ahead filter spares the probe", ports: []int{8080, 9090}, stealProbes: true, match: compile(wire.HTTPFilter{Headers: []string{"^User-Agent: (?!kube-probe)"}}), want: 0},
		{name: "path filter catches the http probe", ports: []int{8080, 9090}, stealProbes: true, match: compile(wire.HTTPFilter{Paths: []string{"^/health"}}), want: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ports := map[int]bool{}
			for _, p := range tt.ports {
				ports[p] = true
			}
			declared, _, err := podProbes(testPod())
			if err != nil {
				t.Fatal(err)
			}
			got := probeWarnings(declared, ports, tt.stealProbes, tt.match)
			if len(got) != tt.want {
				t.Errorf("got %d warnings %q, want %d", len(got), got, tt.want)
			}
		})
	}
}

func TestPrinter(t *testing.T) {
	var out, errOut bytes.Buffer
	p := newPrinter(&out, &errOut, false)
	p.now = func() time.Time { return time.Date(2026, 11, 23, 10, 4, 5, 0, time.UTC) }
	p.event(wire.StealEvent{Kind: wire.EventRequest, Method: "GET", Path: "/a?b=1", Status: 200, Stolen: true, Duration: 12, Proto: "HTTP/1.1", Peer: "10.88.0.1:5555"})
	p.event(wire.StealEvent{Kind: wire.EventRequest, Method: "GET", Path: "/passed", Status: 200})
	p.event(wire.StealEvent{Kind: wire.EventConnection, Peer: "10.88.0.7:4000", Port: 80, BytesIn: 2048, BytesOut: 3 << 20, Duration: 1500})
	p.event(wire.StealEvent{Kind: wire.EventWarning, Message: "local process at 127.0.0.1:8080 refused"})
	p.flush()
	want := "10:04:05 GET /a?b=1 200 12ms HTTP/1.1 (from 10.88.0.1:5555)\n" +
		"10:04:05 connection from 10.88.0.7:4000 to port 80: 2.0 KiB in, 3.0 MiB out, 1.5s\n"
	if diff := cmp.Diff(want, out.String()); diff != "" {
		t.Errorf("stdout (-want +got):\n%s", diff)
	}
	if got := errOut.String(); got != "warning: local process at 127.0.0.1:8080 refused\n" {
		t.Errorf("stderr = %q", got)
	}

	out.Reset()
	p = newPrinter(&out, io.Discard, true)
	p.now = func() time.Time { return time.Date(2026, 11, 23, 10, 4, 5, 0, time.UTC) }
	p.event(wire.StealEvent{Kind: wire.EventRequest, Method: "POST", Path: "/x", Status: 201, Stolen: true})
	p.flush()
	if got, want := out.String(), `{"time":"2026-11-23T10:04:05Z","kind":"request","method":"POST","path":"/x","status":201,"stolen":true}`+"\n"; got != want {
		t.Errorf("json = %q, want %q", got, want)
	}
}

// TestPrinterConnectionNotes: what the agent did to the connections open before the steal and to
// those it relayed at its end, with the failures it caused on the error output.
func TestPrinterConnectionNotes(t *testing.T) {
	var out, errOut bytes.Buffer
	p := newPrinter(&out, &errOut, false)
	p.now = func() time.Time { return time.Date(2026, 11, 23, 10, 4, 5, 0, time.UTC) }
	for _, ev := range []wire.StealEvent{
		{Kind: wire.EventFlush, Port: 80, Flushed: 3, Left: 2},
		{Kind: wire.EventFlush, Port: 80, Flushed: 2, Done: true},
		{Kind: wire.EventFlush, Port: 443, Reset: 4, Done: true},
		{Kind: wire.EventFlush, Port: 8080, Left: 1, Done: true},
		{Kind: wire.EventFlush, Port: 9090, Done: true},
		{Kind: wire.EventDrain, Drained: 5, Reset: 1, Message: "closed 1 connections to the app still busy 30s after the steal ended: what was in flight on them failed"},
	} {
		p.event(ev)
	}
	p.flush()
	wantOut := "10:04:05 port 80: closed 3 idle connections open before the steal; their clients reconnect into it\n" +
		"10:04:05 port 80: 2 busy connections open before the steal still go to the app; each is closed once idle, for up to 30s\n" +
		"10:04:05 port 80: closed 2 idle connections open before the steal; their clients reconnect into it\n" +
		"10:04:05 port 9090: no connection open before the steal is left\n" +
		"10:04:05 5 connections the agent relayed to the app closed gracefully after the steal\n"
	if diff := cmp.Diff(wantOut, out.String()); diff != "" {
		t.Errorf("stdout (-want +got):\n%s", diff)
	}
	wantErr := "warning: reset 4 busy connections to port 443 (--flush-connections): their in-flight requests failed\n" +
		"warning: port 8080: 1 connections open before the steal stayed busy for 30s and still go to the app; --flush-connections resets them\n" +
		"warning: closed 1 connections to the app still busy 30s after the steal ended: what was in flight on them failed\n"
	if diff := cmp.Diff(wantErr, errOut.String()); diff != "" {
		t.Errorf("stderr (-want +got):\n%s", diff)
	}
}

// TestPrinterShared: the sessions that filter the same port are named in one line, with what a
// client of the pod put in them escaped.
func TestPrinterShared(t *testing.T) {
	var out, errOut bytes.Buffer
	p := newPrinter(&out, &errOut, false)
	p.now = func() time.Time { return time.Date(2026, 11, 23, 10, 4, 5, 0, time.UTC) }
	since := time.Date(2026, 11, 23, 9, 58, 1, 0, time.Local)
	p.event(wire.StealEvent{Kind: wire.EventShared, Port: 8080, Sessions: []wire.PortSession{
		{ID: "a1b2c3", User: "alice", Host: "laptop", Filter: `header "^X-Dev: alice$"`, Since: since},
	}})
	p.event(wire.StealEvent{Kind: wire.EventShared, Port: 9090, Sessions: []wire.PortSession{
		{ID: "a1b2c3", User: "alice\x1b[2J", Filter: `path "^/a"`, Since: since},
		{ID: "d4e5f6", Filter: `method POST`, Since: since},
	}})
	p.flush()
	want := `10:04:05 port 8080 is shared with session a1b2c3 (alice on laptop, filter header "^X-Dev: alice$", since 09:58:01): a request that its filter matches too goes to that session, registered first` + "\n" +
		`10:04:05 port 9090 is shared with session a1b2c3 (alice\x1b[2J, filter path "^/a", since 09:58:01), session d4e5f6 (filter method POST, since 09:58:01): a request that its filter matches too goes to those sessions, registered first` + "\n"
	if diff := cmp.Diff(want, out.String()); diff != "" {
		t.Errorf("stdout (-want +got):\n%s", diff)
	}
	if errOut.Len() > 0 {
		t.Errorf("stderr = %q", errOut.String())
	}
}

// TestPrinterBatchesLines: a burst of stolen requests reaches the terminal in a few writes, not one
// per line, and all of it is there once the steal's end flushes.
func TestPrinterBatchesLines(t *testing.T) {
	w := &cmdtest.CountingWriter{}
	p := newPrinter(w, io.Discard, false)
	for i := range 100 {
		p.event(wire.StealEvent{Kind: wire.EventRequest, Method: "GET", Path: fmt.Sprintf("/%d", i), Status: 200, Stolen: true})
	}
	p.flush()
	w.CheckBatched(t, 100)
}

// completed is Options as a verb leaves them after Complete, with the given flags applied.
func completed(t *testing.T, set func(*Options)) *Options {
	t.Helper()
	o := NewOptions()
	o.Filter.Match = wire.MatchAll // the flag's default
	set(&o)
	if err := o.Complete(); err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	return &o
}

// TestSpec: what the agent is asked follows the flags.
func TestSpec(t *testing.T) {
	tests := []struct {
		name string
		set  func(*Options)
		want wire.StealSpec
	}{
		{name: "whole port", set: func(o *Options) { o.PortArgs = []string{"80:8080", "443"} },
			want: wire.StealSpec{Ports: []int{80, 443}, DetectTimeout: 500}},
		{name: "filter, probes, flush, json", set: func(o *Options) {
			o.PortArgs = []string{"80"}
			o.Filter.Headers = []string{"^X-Dev: me$"}
			o.Filter.Match = wire.MatchAny
			o.StealProbes, o.FlushConnections, o.Output, o.DetectTimeout = true, true, "json", 2*time.Second
		}, want: wire.StealSpec{Ports: []int{80}, Filter: &wire.HTTPFilter{Headers: []string{"^X-Dev: me$"}, Match: wire.MatchAny},
			StealProbes: true, FlushConnections: true, PassedEvents: true, DetectTimeout: 2000, HeadTimeout: 30000}},
		{name: "head timeout", set: func(o *Options) {
			o.PortArgs = []string{"80"}
			o.Filter.Paths = []string{"^/api"}
			o.HeadTimeout = 5 * time.Second
		}, want: wire.StealSpec{Ports: []int{80}, Filter: &wire.HTTPFilter{Paths: []string{"^/api"}, Match: wire.MatchAll}, DetectTimeout: 500, HeadTimeout: 5000}},
		{name: "unowned redirect allowed", set: func(o *Options) { o.PortArgs = []string{"80"}; o.AllowUnownedRedirect = true },
			want: wire.StealSpec{Ports: []int{80}, DetectTimeout: 500, AllowUnownedRedirect: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if d := cmp.Diff(tt.want, completed(t, tt.set).Spec()); d != "" {
				t.Errorf("spec (-want +got):\n%s", d)
			}
		})
	}
}

// TestCheck: the ports are resolved against the pod's named ports, and the warnings name what the
// steal takes that the user may not expect: probes with --steal-probes, only one of several pods.
func TestCheck(t *testing.T) {
	o := completed(t, func(o *Options) { o.PortArgs = []string{"http:9000"}; o.StealProbes = true })
	warnings, err := o.Check(&target.Target{Pod: testPod(), Container: "app", Replicas: 3}, "deploy/web")
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]target.PortSpec{{Remote: "http", Port: 8080, Local: 9000}}, o.Ports()); d != "" {
		t.Errorf("ports (-want +got):\n%s", d)
	}
	want := []string{
		`--steal-probes takes the readiness probe (http) of container "app" (port 8080) from the app; if your process does not answer it, the kubelet restarts or unreadies the pod`,
		"3 ready pods match deploy/web; only pod web-1 is stolen, the others keep answering",
	}
	if d := cmp.Diff(want, warnings); d != "" {
		t.Errorf("warnings (-want +got):\n%s", d)
	}

	o = completed(t, func(o *Options) { o.PortArgs = []string{"grpc:9000"} })
	if _, err := o.Check(&target.Target{Pod: testPod(), Container: "app", Replicas: 1}, "pod/web-1"); err == nil {
		t.Error("a port name the pod does not have was accepted")
	}
}

// tunnel is the plugin's end as tunnel.Tunnel would use it.
type tunnel struct{ *wire.Mux }

func (t tunnel) Steal(ctx context.Context, spec wire.StealSpec) (wire.VerbStream, error) {
	return t.Open(ctx, wire.OpenRequest{Kind: wire.KindSteal, Steal: &spec})
}

// TestAttach plays the agent: the steal is asked with the spec, announced once the agent is ready,
// a stolen connection reaches the local process, the agent's lines are printed, and stop waits for
// the agent to confirm the end.
func TestAttach(t *testing.T) {
	local := tunneltest.Echo(t).Port
	o := completed(t, func(o *Options) { o.PortArgs = []string{"80:" + strconv.Itoa(local)}; o.FlushConnections = true })
	// As Check leaves them for a pod with an HTTPS readiness probe on the stolen port.
	o.probes = []declaredProbe{{Container: "app", Which: "readiness", Probe: wire.Probe{Port: 80, Kind: wire.ProbeHTTPS}}}
	o.probeSources = []string{"10.250.0.1"}
	agent, p := tunneltest.Pipe(t)
	plugin := tunnel{p}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	agentDone, written := make(chan error, 1), make(chan struct{})
	go func() {
		agentDone <- func() error {
			in, err := agent.Accept(ctx)
			if err != nil {
				return err
			}
			wantSpec := &wire.StealSpec{Ports: []int{80}, FlushConnections: true, DetectTimeout: 500, Probes: &wire.Probes{
				Declared: []wire.Probe{{Port: 80, Kind: wire.ProbeHTTPS}}, Sources: []string{"10.250.0.1"},
			}}
			if d := cmp.Diff(wantSpec, in.Request().Steal); d != "" {
				return fmt.Errorf("steal spec (-want +got):\n%s", d)
			}
			st, err := in.Accept()
			if err != nil {
				return err
			}
			defer st.Close()
			w := wire.NewLineWriter[wire.StealEvent](st)
			if err := w.Write(wire.StealEvent{Kind: wire.EventReady, KernelOwned: true, ProbeSources: []string{"10.88.0.1", "10.250.0.1"}}); err != nil {
				return err
			}
			c, err := agent.Open(ctx, wire.OpenRequest{Kind: wire.KindIncoming, Network: wire.NetworkTCP, Address: "10.0.0.1:80", Port: 80, Peer: "10.0.0.2:1234"})
			if err != nil {
				return fmt.Errorf("stolen connection: %w", err)
			}
			if _, err := c.Write([]byte("ping")); err != nil {
				return err
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
				return fmt.Errorf("echo through the local process = %q, %w", buf, err)
			}
			c.Close()
			if err := w.Write(wire.StealEvent{Kind: wire.EventConnection, Peer: "10.0.0.2:1234", Port: 80, BytesIn: 4, BytesOut: 4}); err != nil {
				return err
			}
			if err := w.Write(wire.StealEvent{Kind: wire.EventWarning, Message: "something to know"}); err != nil {
				return err
			}
			close(written)
			// The plugin's stop half-closes; the agent then removes its redirect and ends the stream.
			if _, err := io.Copy(io.Discard, st); err != nil {
				return err
			}
			return nil
		}()
	}()

	var out, errOut cmdtest.CountingWriter
	var announced []string
	stop, err := o.attach(ctx, plugin, "shop/web-1", nil, newPrinter(&out, &errOut, false), func(format string, args ...any) {
		announced = append(announced, fmt.Sprintf(format, args...))
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		fmt.Sprintf("stealing port 80 -> 127.0.0.1:%d (every connection, probes excepted)", local),
		`port 80: connections from the node's addresses (10.88.0.1, 10.250.0.1) go to the app, not stolen, for the https readiness probe of container "app" (the agent cannot read it); other clients from those addresses to port 80 are not stolen either`,
	}
	if d := cmp.Diff(want, announced); d != "" {
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
	if _, got := out.State(); !strings.HasSuffix(got, " connection from 10.0.0.2:1234 to port 80: 4 B in, 4 B out, 0s\n") || strings.Count(got, "\n") != 1 {
		t.Errorf("stdout = %q, want the connection's line", got)
	}
	if _, got := errOut.State(); got != "warning: something to know\n" {
		t.Errorf("stderr = %q, want the agent's warning", got)
	}
}

// TestAttachUnowned: a redirect the kernel does not own is announced with what it can leave behind.
func TestAttachUnowned(t *testing.T) {
	o := completed(t, func(o *Options) { o.PortArgs = []string{"80:9000"}; o.AllowUnownedRedirect = true })
	agent, p := tunneltest.Pipe(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		in, err := agent.Accept(ctx)
		if err != nil {
			return
		}
		st, err := in.Accept()
		if err != nil {
			return
		}
		defer st.Close()
		_ = wire.NewLineWriter[wire.StealEvent](st).Write(wire.StealEvent{Kind: wire.EventReady})
		_, _ = io.Copy(io.Discard, st)
	}()
	var announced []string
	stop, err := o.attach(ctx, tunnel{p}, "shop/web-1", nil, newPrinter(io.Discard, io.Discard, false), func(format string, args ...any) {
		announced = append(announced, fmt.Sprintf(format, args...))
	})
	if err != nil {
		t.Fatal(err)
	}
	stop()
	want := []string{"stealing port 80 -> 127.0.0.1:9000 (every connection, probes excepted)", UnownedWarning}
	if d := cmp.Diff(want, announced); d != "" {
		t.Errorf("announced (-want +got):\n%s", d)
	}
}

// TestAttachRefused: an agent that answers with anything but ready is a failed start, with the pod
// named when the request itself fails.
func TestAttachRefused(t *testing.T) {
	o := completed(t, func(o *Options) { o.PortArgs = []string{"80"} })
	agent, p := tunneltest.Pipe(t)
	plugin := tunnel{p}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		in, err := agent.Accept(ctx)
		if err != nil {
			return
		}
		st, err := in.Accept()
		if err != nil {
			return
		}
		defer st.Close()
		_ = wire.NewLineWriter[wire.StealEvent](st).Write(wire.StealEvent{Kind: wire.EventWarning, Message: "too early"})
	}()
	_, err := o.attach(ctx, plugin, "shop/web-1", nil, newPrinter(io.Discard, io.Discard, false), func(string, ...any) { t.Error("announced a steal that did not start") })
	if err == nil || !strings.HasPrefix(err.Error(), `start stealing: agent answered "warning" before "ready"`) {
		t.Errorf("error %v, want the early answer refused", err)
	}

	agent.Close()
	_, err = o.attach(ctx, plugin, "shop/web-1", nil, newPrinter(io.Discard, io.Discard, false), func(string, ...any) {})
	if err == nil || !strings.HasPrefix(err.Error(), "start stealing in pod shop/web-1: ") {
		t.Errorf("error %v, want the failed request with the pod", err)
	}
}

// TestPodProbes: the agent is sent every container's probes that reach a port, as the kubelet
// sends them (named ports resolved against the declaring container, the request target as the
// kubelet writes it, httpHeaders as given, the scheme's kind), the node's addresses, and in an
// Istio pod the app probes pilot-agent runs (ISTIO_KUBE_APP_PROBERS) from 127.0.0.6.
func TestPodProbes(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	httpGet := func(path string, port intstr.IntOrString, headers ...corev1.HTTPHeader) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: port, HTTPHeaders: headers}}}
	}
	pod := &corev1.Pod{
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{
				{Name: "migrate", ReadinessProbe: httpGet("/never", intstr.FromInt32(1))}, // a plain init container is never probed
				{Name: "sidecar", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "admin", ContainerPort: 15000}},
					LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("admin")}}}},
			},
			Containers: []corev1.Container{{
				Name:  "app",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "https", ContainerPort: 8443}},
				ReadinessProbe: httpGet("healthz?deep=1", intstr.FromString("http"),
					corev1.HTTPHeader{Name: "User-Agent", Value: "checker/2"}, corev1.HTTPHeader{Name: "X-Probe", Value: "yes"}),
				LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
					Path: "/live", Port: intstr.FromString("https"), Scheme: corev1.URISchemeHTTPS,
				}}},
				StartupProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}},
			}, {
				Name:          "worker",
				Ports:         []corev1.ContainerPort{{Name: "http", ContainerPort: 9000}}, // the same name, its own port
				LivenessProbe: httpGet("", intstr.FromString("http")),
				StartupProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9001}}},
			}},
		},
		Status: corev1.PodStatus{HostIP: "10.250.0.1", HostIPs: []corev1.HostIP{{IP: "10.250.0.1"}, {IP: "fd00::1"}}},
	}
	got, err := PodProbes(pod)
	if err != nil {
		t.Fatal(err)
	}
	want := &wire.Probes{
		Sources: []string{"10.250.0.1", "fd00::1"},
		Declared: []wire.Probe{
			{Port: 8443, Kind: wire.ProbeHTTPS},
			{Port: 8080, Kind: wire.ProbeHTTP, Path: "/healthz?deep=1", Headers: []wire.ProbeHeader{{Name: "User-Agent", Value: "checker/2"}, {Name: "X-Probe", Value: "yes"}}},
			{Port: 9000, Kind: wire.ProbeHTTP, Path: "/"},
			{Port: 9001, Kind: wire.ProbeGRPC, Path: "/grpc.health.v1.Health/Check"},
			{Port: 15000, Kind: wire.ProbeTCP},
		},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("PodProbes (-want +got):\n%s", d)
	}

	// Istio: the kubelet's probes go to the sidecar's status port; pilot-agent sends the app's
	// originals from 127.0.0.6.
	istio := &corev1.Pod{
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name:           "app",
			Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
			ReadinessProbe: httpGet("/app-health/app/readyz", intstr.FromInt32(15020)),
		}, {
			Name: "istio-proxy",
			Env: []corev1.EnvVar{{Name: "ISTIO_KUBE_APP_PROBERS", Value: `{"/app-health/app/livez":{"httpGet":{"path":"/live","port":"http","scheme":"HTTP","httpHeaders":[{"name":"User-Agent","value":"checker/2"}]},"timeoutSeconds":1},` +
				`"/app-health/app/readyz":{"tcpSocket":{"port":8080},"timeoutSeconds":1},"/app-health/app/startupz":{"httpGet":{"path":"/up","port":8443,"scheme":"HTTPS"}}}`}},
		}}},
		Status: corev1.PodStatus{HostIP: "10.250.0.1"},
	}
	got, err = PodProbes(istio)
	if err != nil {
		t.Fatal(err)
	}
	want = &wire.Probes{
		Sources: []string{"10.250.0.1", "127.0.0.6"},
		Declared: []wire.Probe{
			{Port: 15020, Kind: wire.ProbeHTTP, Path: "/app-health/app/readyz"},
			{Port: 8080, Kind: wire.ProbeHTTP, Path: "/live", Headers: []wire.ProbeHeader{{Name: "User-Agent", Value: "checker/2"}}},
			{Port: 8080, Kind: wire.ProbeTCP},
			{Port: 8443, Kind: wire.ProbeHTTPS},
		},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("PodProbes, Istio (-want +got):\n%s", d)
	}
	istio.Spec.Containers[1].Env[0].Value = "{not json"
	if _, err := PodProbes(istio); err == nil || !strings.Contains(err.Error(), "ISTIO_KUBE_APP_PROBERS") {
		t.Errorf("error %v, want the prober list named", err)
	}
	if got, err := PodProbes(&corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}}, Status: corev1.PodStatus{HostIP: "10.250.0.1"}}); err != nil || got != nil {
		t.Errorf("a pod without probes: %+v, %v; want none", got, err)
	}
}

func TestPassedByAddress(t *testing.T) {
	declared := []declaredProbe{
		{Container: "app", Which: "liveness", Probe: wire.Probe{Port: 8443, Kind: wire.ProbeHTTPS}},
		{Container: "app", Which: "readiness", Probe: wire.Probe{Port: 8443, Kind: wire.ProbeTCP}},
		{Container: "app", Which: "startup", Probe: wire.Probe{Port: 8080, Kind: wire.ProbeHTTP, Path: "/"}},
		{Container: "db", Which: "liveness", Probe: wire.Probe{Port: 5432, Kind: wire.ProbeTCP}},
	}
	got := passedByAddress(declared, map[int]bool{8080: true, 8443: true}, []string{"10.88.0.1"})
	want := []string{`port 8443: connections from the node's addresses (10.88.0.1) go to the app, not stolen, for the https liveness probe of container "app", tcp readiness probe of container "app" (the agent cannot read it); other clients from those addresses to port 8443 are not stolen either`}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("passedByAddress (-want +got):\n%s", d)
	}
}

// TestPrinterEscapesTraffic: a stolen request's path, method and peer, and a warning that quotes
// traffic, reach the terminal with their control characters escaped (OSC 52 writes the clipboard,
// CSI 2J clears the screen).
func TestPrinterEscapesTraffic(t *testing.T) {
	var out, errOut bytes.Buffer
	p := newPrinter(&out, &errOut, false)
	p.now = func() time.Time { return time.Date(2026, 11, 23, 10, 4, 5, 0, time.UTC) }
	p.event(wire.StealEvent{Kind: wire.EventRequest, Method: "GET", Path: "/x\x1b]52;c;aGVsbG8=\a", Status: 200, Stolen: true, Duration: 12, Proto: "h2c", Peer: "10.88.0.1:5555\x1b[2J"})
	p.event(wire.StealEvent{Kind: wire.EventWarning, Message: "request \"/\x1b[8m\" failed"})
	p.flush()
	if diff := cmp.Diff("10:04:05 GET /x\\x1b]52;c;aGVsbG8=\\a 200 12ms h2c (from 10.88.0.1:5555\\x1b[2J)\n", out.String()); diff != "" {
		t.Errorf("stdout (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff("warning: request \"/\\x1b[8m\" failed\n", errOut.String()); diff != "" {
		t.Errorf("stderr (-want +got):\n%s", diff)
	}
}

// A meshed pod is refused before anything changes: a redirect in front of the sidecar would take its
// mTLS or break every meshed request to the port.
func TestCheckRefusesMeshedPod(t *testing.T) {
	// A sidecar mode is stolen after the sidecar: Check passes and hands the agent the mesh's hint.
	pod := testPod()
	pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "istio-proxy"})
	o := completed(t, func(o *Options) { o.PortArgs = []string{"http:9000"} })
	if _, err := o.Check(&target.Target{Pod: pod, Container: "app", Replicas: 1}, "pod/web-1"); err != nil {
		t.Fatalf("Istio sidecar: Check = %v, want it allowed", err)
	}
	if want := (&wire.Mesh{Name: wire.MeshIstio, Mode: wire.MeshSidecar, ProxyUID: 1337}); !reflect.DeepEqual(o.mesh, want) {
		t.Errorf("mesh hint = %+v, want %+v", o.mesh, want)
	}
	// Ambient is refused before anything changes.
	pod = testPod()
	pod.Annotations = map[string]string{"ambient.istio.io/redirection": "enabled"}
	o = completed(t, func(o *Options) { o.PortArgs = []string{"http:9000"} })
	_, err := o.Check(&target.Target{Pod: pod, Container: "app", Replicas: 1}, "pod/web-1")
	if err == nil || !strings.Contains(err.Error(), "Istio's ambient mode") || !strings.Contains(err.Error(), "steal is refused") {
		t.Errorf("Check = %v, want the Istio ambient refusal", err)
	}
}

// TestPrinterNamesPod: the printers of a workload's pods share one output and each line, text, JSON
// or warning, names its pod.
func TestPrinterNamesPod(t *testing.T) {
	var out, errOut bytes.Buffer
	p := newPrinter(&out, &errOut, false)
	p.now = func() time.Time { return time.Date(2026, 11, 23, 10, 4, 5, 0, time.UTC) }
	p.forPod("web-1").event(wire.StealEvent{Kind: wire.EventRequest, Method: "GET", Path: "/a", Status: 200, Stolen: true, Duration: 12, Proto: "HTTP/1.1", Peer: "10.88.0.1:5555"})
	p.forPod("web-2").event(wire.StealEvent{Kind: wire.EventConnection, Peer: "10.88.0.7:4000", Port: 80, BytesIn: 2048, BytesOut: 10, Duration: 1500})
	p.forPod("web-2").event(wire.StealEvent{Kind: wire.EventWarning, Message: "local process at 127.0.0.1:8080 refused"})
	p.flush()
	want := "[pod/web-1] 10:04:05 GET /a 200 12ms HTTP/1.1 (from 10.88.0.1:5555)\n" +
		"[pod/web-2] 10:04:05 connection from 10.88.0.7:4000 to port 80: 2.0 KiB in, 10 B out, 1.5s\n"
	if diff := cmp.Diff(want, out.String()); diff != "" {
		t.Errorf("stdout (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff("warning: [pod/web-2] local process at 127.0.0.1:8080 refused\n", errOut.String()); diff != "" {
		t.Errorf("stderr (-want +got):\n%s", diff)
	}

	out.Reset()
	p = newPrinter(&out, io.Discard, true)
	p.now = func() time.Time { return time.Date(2026, 11, 23, 10, 4, 5, 0, time.UTC) }
	p.forPod("web-1").event(wire.StealEvent{Kind: wire.EventRequest, Method: "POST", Path: "/x", Status: 201, Stolen: true})
	p.flush()
	if diff := cmp.Diff(`{"time":"2026-11-23T10:04:05Z","pod":"web-1","kind":"request","method":"POST","path":"/x","status":201,"stolen":true}`+"\n", out.String()); diff != "" {
		t.Errorf("json (-want +got):\n%s", diff)
	}
}
