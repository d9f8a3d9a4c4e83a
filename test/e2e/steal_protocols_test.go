//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

type localGreeter struct{ pb.UnimplementedGreeterServer }

func (localGreeter) SayHello(_ context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	return &pb.HelloReply{Message: "Hello " + in.GetName() + " from laptop"}, nil
}

// startLocalGreeter is the developer's gRPC server: the greeter with health and reflection, so grpcurl
// works against it as against the pod's.
func startLocalGreeter(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	pb.RegisterGreeterServer(s, localGreeter{})
	healthpb.RegisterHealthServer(s, health.NewServer())
	reflection.Register(s)
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
	return ln.Addr().(*net.TCPAddr).Port
}

// TestStealFilteredGRPC: grpcurl against the greeter; calls with the header are answered by the local
// greeter, the others by the pod's. grpcurl's reflection call is a bidirectional stream, so both ends
// of the proxy carry streaming as well as unary calls.
func TestStealFilteredGRPC(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("grpcurl"); err != nil {
		t.Fatalf("grpcurl is not on PATH (make e2e builds it with hack/tools/install.sh): %v", err)
	}
	ctx := testContext(t, 4*time.Minute)
	ns := newNamespace(t, "steal-grpc")
	pod := peerPod(t, "greeter", nil, "/usr/local/bin/peer-greeter")
	pod.Spec.Containers[0].ReadinessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 50051}},
		PeriodSeconds: 1,
	}
	pod = createPodReady(ctx, t, ns, pod)
	local := startLocalGreeter(t)
	stealStart(t, "steal", ns, "pod/greeter", "--port", fmt.Sprintf("50051:%d", local), "--header-filter", "^x-steal: yes$")
	addr := net.JoinHostPort(pod.Status.PodIP, "50051")
	call := func(header bool) string {
		args := []string{"-plaintext", "-max-time", "20", "-d", `{"name":"e2e"}`}
		if header {
			args = append(args, "-H", "x-steal: yes")
		}
		args = append(args, addr, "helloworld.Greeter/SayHello")
		out, err := exec.CommandContext(ctx, "grpcurl", args...).CombinedOutput()
		if err != nil {
			t.Errorf("grpcurl %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	for i := range 3 {
		if out := call(true); !strings.Contains(out, "Hello e2e from laptop") {
			t.Errorf("call %d with the header: %q, want the local greeter", i, out)
		}
		if out := call(false); !strings.Contains(out, "Hello e2e from greeter") {
			t.Errorf("call %d without the header: %q, want the pod's greeter", i, out)
		}
	}
	// An error status travels back in trailers.
	out, err := exec.CommandContext(ctx, "grpcurl", "-plaintext", "-max-time", "20", "-H", "x-steal: yes", addr, "helloworld.Greeter/NoSuchMethod").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "NoSuchMethod") {
		t.Errorf("a call to a missing method: %v: %s; want grpcurl's error naming it", err, out)
	}
}

// TestStealFilteredWebSocket: the upgrade request is decided like any request, then the connection is
// spliced raw both ways.
func TestStealFilteredWebSocket(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	ns := newNamespace(t, "steal-ws")
	pod := peerPod(t, "ws", nil, "/usr/local/bin/peer-wsecho")
	pod.Spec.Containers[0].ReadinessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8081)}},
		PeriodSeconds: 1,
	}
	pod = createPodReady(ctx, t, ns, pod)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte("laptop:"), msg...)); err != nil {
				return
			}
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	local := ln.Addr().(*net.TCPAddr).Port

	stealStart(t, "steal", ns, "pod/ws", "--port", fmt.Sprintf("8081:%d", local), "--header-filter", "^X-Steal: yes$")
	url := "ws://" + net.JoinHostPort(pod.Status.PodIP, "8081") + "/ws"
	for _, steal := range []bool{true, false} {
		h := http.Header{}
		prefix := ""
		if steal {
			h.Set("X-Steal", "yes")
			prefix = "laptop:"
		}
		c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h})
		if err != nil {
			t.Fatalf("dial %s (stolen %v): %v", url, steal, err)
		}
		for i := range 5 {
			msg := fmt.Sprintf("message %d", i)
			if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			_, got, err := c.Read(ctx)
			if err != nil || string(got) != prefix+msg {
				t.Errorf("stolen %v: got %q, %v; want %q", steal, got, err, prefix+msg)
			}
		}
		c.Close(websocket.StatusNormalClosure, "")
	}
}
