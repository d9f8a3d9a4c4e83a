package dump

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/trafficlab/kubectl-trafficlab/internal/cmdtest"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/lineout"
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
		name       string
		args       []string
		wantFilter string
		wantExpr   string
		wantErr    string
	}{
		{name: "ports only", args: []string{"pod/web", "--port", "8080,9090"}, wantExpr: "(port 8080 or port 9090)"},
		{name: "filter words like tcpdump", args: []string{"pod/web", "tcp", "port", "80", "and", "not", "host", "10.0.0.1"}, wantFilter: "tcp port 80 and not host 10.0.0.1", wantExpr: "(tcp port 80 and not host 10.0.0.1)"},
		{name: "quoted filter and port", args: []string{"pod/web", "-p", "8080", "udp or icmp"}, wantFilter: "udp or icmp", wantExpr: "(port 8080) and (udp or icmp)"},
		{name: "write to stdout", args: []string{"pod/web", "-w", "-"}},
		{name: "no target", args: []string{"-p", "80"}, wantErr: "TYPE/NAME or -l selector is required"},
		{name: "bad filter", args: []string{"pod/web", "tcp prot 80"}, wantErr: `filter "tcp prot 80": unknown word "prot" at 5`},
		{name: "port out of range", args: []string{"pod/web", "-p", "0"}, wantErr: "--port 0 is out of range"},
		{name: "snaplen", args: []string{"pod/web", "--snaplen", "300000"}, wantErr: "--snaplen must be from 0 to 262144"},
		{name: "json and pcap on stdout", args: []string{"pod/web", "-w", "-", "-o", "json"}, wantErr: "-w - writes the capture to stdout"},
		{name: "bad output", args: []string{"pod/web", "-o", "yaml"}, wantErr: `--output must be json or empty, not "yaml"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parse(t, tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || strings.Contains(err.Error(), "\n") {
					t.Fatalf("error = %v, want one line containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			spec := o.spec()
			if o.Filter != tt.wantFilter || spec.Expr() != tt.wantExpr {
				t.Errorf("filter %q expr %q, want %q and %q", o.Filter, spec.Expr(), tt.wantFilter, tt.wantExpr)
			}
		})
	}
}

func TestViewLines(t *testing.T) {
	var out bytes.Buffer
	v := &view{out: lineout.New(&out)}
	at := time.Date(2026, 11, 23, 10, 4, 5, 120e6, time.UTC)
	c, s := netip.MustParseAddrPort("10.88.0.1:5555"), netip.MustParseAddrPort("10.88.0.7:8080")
	v.exchange(capture.Exchange{Start: at, Client: c, Server: s, Proto: "HTTP/1.1", Method: "GET", Path: "/a?b=1", Status: 200, Latency: 1234 * time.Microsecond, RespBytes: 42})
	v.exchange(capture.Exchange{Start: at, Client: c, Server: s, Proto: "grpc", Method: "POST", Path: "/helloworld.Greeter/SayHello", Status: 200, GRPCStatus: "0", Partial: true})
	v.connection(capture.Connection{Start: at, Client: c, Server: s, Duration: 2 * time.Second, BytesIn: 10, BytesOut: 20, Gaps: 1})
	_ = v.out.Flush()
	want := "10:04:05.120 10.88.0.1:5555 HTTP/1.1 GET /a?b=1 200 1.23ms 0B/42B\n" +
		"10:04:05.120 10.88.0.1:5555 grpc POST /helloworld.Greeter/SayHello 200 grpc-status=0 0s 0B/0B (partial)\n" +
		"10:04:05.120 10.88.0.1:5555 -> 10.88.0.7:8080 TCP 2s 10B/20B (1 gaps)\n"
	if got := out.String(); got != want {
		t.Errorf("view:\n%s\nwant:\n%s", got, want)
	}
	out.Reset()
	v.json = true
	v.exchange(capture.Exchange{Start: at, Client: c, Server: s, Proto: "h2c", Method: "GET", Path: "/", Status: 404})
	_ = v.out.Flush()
	if got, want := out.String(), `{"kind":"http","time":"2026-11-23T10:04:05.12Z","client":"10.88.0.1:5555","server":"10.88.0.7:8080","proto":"h2c","method":"GET","path":"/","status":404,"latencyMs":0,"reqBytes":0,"respBytes":0}`+"\n"; got != want {
		t.Errorf("json:\n%s\nwant:\n%s", got, want)
	}
}

// TestViewBatchesLines: a burst of exchanges reaches the terminal in a few writes, not one per line,
// and all of it is there once the view is closed.
func TestViewBatchesLines(t *testing.T) {
	w := &cmdtest.CountingWriter{}
	v := newView(lineout.New(w), false, []int{8080}, "")
	c, s := netip.MustParseAddrPort("10.88.0.1:5555"), netip.MustParseAddrPort("10.88.0.7:8080")
	for i := range 100 {
		v.exchange(capture.Exchange{Start: time.Now(), Client: c, Server: s, Proto: "HTTP/1.1", Method: "GET", Path: fmt.Sprintf("/%d", i), Status: 200})
	}
	v.close()
	w.CheckBatched(t, 100)
}

// TestViewEscapesTraffic: what a client sent (an h2c :path with OSC 52, which writes the terminal's
// clipboard, a method, a gRPC status from a header) reaches the terminal escaped; JSON escapes it
// itself.
func TestViewEscapesTraffic(t *testing.T) {
	var out bytes.Buffer
	v := &view{out: lineout.New(&out)}
	at := time.Date(2026, 11, 23, 10, 4, 5, 120e6, time.UTC)
	c, s := netip.MustParseAddrPort("10.88.0.1:5555"), netip.MustParseAddrPort("10.88.0.7:8080")
	v.exchange(capture.Exchange{Start: at, Client: c, Server: s, Proto: "h2c", Method: "GET", Path: "/x\x1b]52;c;aGVsbG8=\a", Status: 200})
	v.exchange(capture.Exchange{Start: at, Client: c, Server: s, Proto: "grpc", Method: "P\u009bST", Path: "/a", Status: 200, GRPCStatus: "0\x1b[2J\x1b[H"})
	_ = v.out.Flush()
	want := "10:04:05.120 10.88.0.1:5555 h2c GET /x\\x1b]52;c;aGVsbG8=\\a 200 0s 0B/0B\n" +
		"10:04:05.120 10.88.0.1:5555 grpc P\\u009bST /a 200 grpc-status=0\\x1b[2J\\x1b[H 0s 0B/0B\n"
	if got := out.String(); got != want {
		t.Errorf("view:\n%q\nwant:\n%q", got, want)
	}
}

// TestRequestCarriesMesh: a dump of a pod with an Istio or Linkerd sidecar, resolved from the API (a
// fake clientset), asks the agent with the mesh's hint, and the progress line says where the agent
// captures: lo alone for --port, every interface without.
func TestRequestCarriesMesh(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	for _, tt := range []struct {
		name  string
		pod   func(*corev1.Pod)
		args  []string
		want  *wire.Mesh
		where string
	}{
		{name: "Istio native sidecar, --port", args: []string{"--port", "8080"},
			pod: func(p *corev1.Pod) {
				p.Spec.InitContainers = []corev1.Container{{Name: "istio-proxy", RestartPolicy: &always}}
			},
			want:  &wire.Mesh{Name: wire.MeshIstio, Mode: wire.MeshSidecar, ProxyUID: 1337},
			where: " on lo only (the Istio sidecar's plaintext connections to the app; eth0 carries the mesh's mTLS)"},
		{name: "Linkerd sidecar, everything",
			pod: func(p *corev1.Pod) {
				p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "linkerd-proxy"})
			},
			want:  &wire.Mesh{Name: wire.MeshLinkerd, Mode: wire.MeshSidecar, ProxyUID: 2102},
			where: " on every interface (Linkerd sidecar: the ports it captures are mTLS on eth0 and plaintext on lo; --port reads lo only)"},
		{name: "no mesh", args: []string{"--port", "8080"}, pod: func(*corev1.Pod) {}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}},
				Status:     corev1.PodStatus{Phase: corev1.PodRunning},
			}
			tt.pod(pod)
			tgt, err := target.Resolve(context.Background(), fake.NewClientset(pod), target.Options{Namespace: "shop", Resource: "pod/web"})
			if err != nil {
				t.Fatal(err)
			}
			o, err := parse(t, append([]string{"pod/web"}, tt.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			spec := o.request(tgt.Pod)
			if d := cmp.Diff(tt.want, spec.Mesh); d != "" {
				t.Errorf("mesh in the request (-want +got):\n%s", d)
			}
			if err := spec.Validate(); err != nil {
				t.Errorf("the agent refuses the request: %v", err)
			}
			if got := where(spec); got != tt.where {
				t.Errorf("where = %q, want %q", got, tt.where)
			}
		})
	}
}

// TestViewNamesPod: the views of a workload's pods share one output, and each line names its pod.
func TestViewNamesPod(t *testing.T) {
	var out bytes.Buffer
	shared := lineout.New(&out)
	at := time.Date(2026, 11, 23, 10, 4, 5, 120e6, time.UTC)
	c, s := netip.MustParseAddrPort("10.88.0.1:5555"), netip.MustParseAddrPort("10.88.0.7:8080")
	v1, v2 := &view{out: shared, pod: "web-1"}, &view{out: shared, pod: "web-2", json: true}
	v1.exchange(capture.Exchange{Start: at, Client: c, Server: s, Proto: "HTTP/1.1", Method: "GET", Path: "/a", Status: 200})
	v2.connection(capture.Connection{Start: at, Client: c, Server: s, Duration: 2 * time.Second, BytesIn: 10, BytesOut: 20})
	_ = shared.Flush()
	want := "[pod/web-1] 10:04:05.120 10.88.0.1:5555 HTTP/1.1 GET /a 200 0s 0B/0B\n" +
		`{"kind":"connection","pod":"web-2","time":"2026-11-23T10:04:05.12Z","client":"10.88.0.1:5555","server":"10.88.0.7:8080","latencyMs":2000,"reqBytes":10,"respBytes":20}` + "\n"
	if diff := cmp.Diff(want, out.String()); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
}

// TestMergedCapture: -w's file holds every pod's packets, on interfaces named after their pod, and a
// pod's stream the merger refuses is reported while the others are written and the writer that tees
// it never blocks.
func TestMergedCapture(t *testing.T) {
	stream := func(t *testing.T, at time.Time) []byte {
		t.Helper()
		var b bytes.Buffer
		w, err := pcapgo.NewNgWriterInterface(&b, pcapgo.NgInterface{Name: "eth0", LinkType: layers.LinkTypeEthernet, SnapLength: 65535}, pcapgo.DefaultNgWriterOptions)
		if err != nil {
			t.Fatal(err)
		}
		data := make([]byte, 60)
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: at, CaptureLength: len(data), Length: len(data)}, data); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	at := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	var file, errOut bytes.Buffer
	c := newMergedCapture(&file, &errOut)
	pods := []struct {
		name   string
		stream []byte
	}{{"web-1", stream(t, at)}, {"web-2", stream(t, at.Add(time.Millisecond))}, {"web-3", []byte("not a pcapng stream")}}
	for _, p := range pods {
		w := c.Pod(p.name)
		if _, err := w.Write(p.stream); err != nil {
			t.Errorf("%s: write: %v", p.name, err)
		}
		w.Close()
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut.String(), "warning: -w: the capture of pod web-3 is not written on: ") {
		t.Errorf("no warning about the refused stream: %q", errOut.String())
	}
	r, err := pcapgo.NewNgReader(&file, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		_, ci, err := r.ReadPacketData()
		if err != nil {
			break
		}
		ifc, err := r.Interface(ci.InterfaceIndex)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ifc.Name)
	}
	if diff := cmp.Diff([]string{"web-1/eth0", "web-2/eth0"}, got); diff != "" {
		t.Errorf("packets' interfaces (-want +got):\n%s", diff)
	}
}
