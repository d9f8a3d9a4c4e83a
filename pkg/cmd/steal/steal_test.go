package steal

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/trafficlab/kubectl-trafficlab/internal/cmdtest"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// parse runs the real cobra command line through Complete and Validate, stopping before Run.
func parse(t *testing.T, args ...string) (*Options, error) {
	t.Helper()
	streams, _, _, _ := genericiooptions.NewTestIOStreams()
	o := NewOptions(streams, cmdtest.ConfigFlags(t))
	return o, cmdtest.Parse(newCmd(o), o.Complete, o.Validate, args...)
}

func TestCompleteAndValidate(t *testing.T) {
	tests := []struct {
		name        string
		args        []string
		wantPorts   []target.PortSpec
		wantCommand []string
		wantErr     string
	}{
		{name: "port only", args: []string{"pod/web", "--port", "80"}, wantPorts: []target.PortSpec{{Remote: "80", Port: 80, Local: 80}}},
		{name: "remote and local", args: []string{"pod/web", "-p", "80:8080", "-p", "9090"}, wantPorts: []target.PortSpec{{Remote: "80", Port: 80, Local: 8080}, {Remote: "9090", Port: 9090, Local: 9090}}},
		{name: "named port", args: []string{"svc/web", "--port", "http:8080"}, wantPorts: []target.PortSpec{{Remote: "http", Local: 8080}}},
		{name: "command", args: []string{"pod/web", "--port", "80", "--", "sh", "-c", "exit 3"}, wantPorts: []target.PortSpec{{Remote: "80", Port: 80, Local: 80}}, wantCommand: []string{"sh", "-c", "exit 3"}},
		{name: "look-ahead filter", args: []string{"pod/web", "--port", "80", "--header-filter", "^User-Agent: (?!kube-probe)"}, wantPorts: []target.PortSpec{{Remote: "80", Port: 80, Local: 80}}},
		{name: "no port", args: []string{"pod/web"}, wantErr: "--port is required"},
		{name: "no target", args: []string{"--port", "80"}, wantErr: "TYPE/NAME or -l selector is required"},
		{name: "two targets", args: []string{"pod/web", "pod/db", "--port", "80"}, wantErr: "steal takes one TYPE/NAME"},
		{name: "port out of range", args: []string{"pod/web", "--port", "70000"}, wantErr: `--port "70000": port 70000 is out of range 1-65535`},
		{name: "bad local", args: []string{"pod/web", "--port", "80:x"}, wantErr: `--port "80:x": LOCAL must be a port number`},
		{name: "named without local", args: []string{"pod/web", "--port", "http"}, wantErr: `a named port needs a LOCAL port`},
		{name: "bad regex", args: []string{"pod/web", "--port", "80", "--header-filter", "^X-(a"}, wantErr: `--header-filter "^X-(a" is not a valid regular expression`},
		{name: "bad path regex", args: []string{"pod/web", "--port", "80", "--path-filter", "[z-a]"}, wantErr: `--path-filter "[z-a]" is not a valid regular expression`},
		{name: "bad match", args: []string{"pod/web", "--port", "80", "--match", "some"}, wantErr: `--match must be all or any, not "some"`},
		{name: "bad output", args: []string{"pod/web", "--port", "80", "-o", "yaml"}, wantErr: `--output must be json or empty, not "yaml"`},
		{name: "bad local address", args: []string{"pod/web", "--port", "80", "--local-address", "example"}, wantErr: `--local-address "example" is not an IP address`},
		{name: "bad detect timeout", args: []string{"pod/web", "--port", "80", "--detect-timeout", "0s"}, wantErr: `--detect-timeout must be between`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parse(t, tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error is not one line: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantPorts, o.ports); diff != "" {
				t.Errorf("ports (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantCommand, o.Command); diff != "" {
				t.Errorf("command (-want +got):\n%s", diff)
			}
		})
	}
}

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
			got := probeWarnings(testPod(), ports, tt.stealProbes, tt.match)
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

// pipeTunnel is a real yamux tunnel over net.Pipe: the agent's end opens incoming streams.
func pipeTunnel(t *testing.T) (agent, plugin *wire.Session) {
	t.Helper()
	a, b := net.Pipe()
	var err error
	if agent, err = wire.Server(a, wire.DefaultTunnelConfig()); err != nil {
		t.Fatal(err)
	}
	if plugin, err = wire.Client(b, wire.DefaultTunnelConfig()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Close(); plugin.Close() })
	return agent, plugin
}

func TestServerJoinsIncomingToLocal(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	agent, plugin := pipeTunnel(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := &server{locals: map[int]string{80: ln.Addr().String(), 81: "127.0.0.1:1"}, out: newPrinter(io.Discard, io.Discard, false)}
	go s.serve(ctx, plugin)

	st, err := agent.Open(ctx, wire.OpenRequest{Kind: wire.KindIncoming, Network: wire.NetworkTCP, Address: "10.0.0.1:80", Port: 80, Peer: "10.0.0.2:1234"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo = %q, %v", buf, err)
	}
	st.Close()

	_, err = agent.Open(ctx, wire.OpenRequest{Kind: wire.KindIncoming, Network: wire.NetworkTCP, Address: "10.0.0.1:81", Port: 81})
	if err == nil || !strings.Contains(err.Error(), "local process at 127.0.0.1:1") {
		t.Errorf("open to a closed local port: %v, want the local refusal", err)
	}
	_, err = agent.Open(ctx, wire.OpenRequest{Kind: wire.KindIncoming, Network: wire.NetworkTCP, Address: "10.0.0.1:82", Port: 82})
	if err == nil || !strings.Contains(err.Error(), "port 82 is not stolen") {
		t.Errorf("open for a port not stolen: %v", err)
	}
}
