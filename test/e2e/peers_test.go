//go:build e2e

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestPeers checks that every test peer in the peers image serves its protocol, straight
// to the pod IP from the host: HTTP/1.1 + h2c echo with /bytes, gRPC greeter + health,
// WebSocket echo, UDP echo.
func TestPeers(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 3*time.Minute)
	ns := newNamespace(t, "peers")
	pod := peerPod(t, "peers", nil)
	base := pod.Spec.Containers[0]
	pod.Spec.Containers = nil
	for _, c := range []struct {
		name  string
		port  int32
		probe *corev1.Probe
	}{
		{"echo", 8080, &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1}},
		{"greeter", 50051, &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 50051}}, PeriodSeconds: 1}},
		{"wsecho", 8081, &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8081)}}, PeriodSeconds: 1}},
		{"udpecho", 9053, nil},
	} {
		ct := *base.DeepCopy()
		ct.Name, ct.Command, ct.ReadinessProbe = c.name, []string{"/usr/local/bin/peer-" + c.name}, c.probe
		pod.Spec.Containers = append(pod.Spec.Containers, ct)
	}
	ip := createPodReady(ctx, t, ns, pod).Status.PodIP

	t.Run("h2c", func(t *testing.T) {
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, Protocols: &protos}}
		resp, err := hc.Post("http://"+net.JoinHostPort(ip, "8080")+"/sink", "text/plain", strings.NewReader("abc"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r struct {
			Pod, Proto, BodySha256 string
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte("abc"))
		if r.Proto != "HTTP/2.0" || r.Pod != "peers" || r.BodySha256 != hex.EncodeToString(sum[:]) {
			t.Errorf("reply %+v", r)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil}}
		resp, err := hc.Get("http://" + net.JoinHostPort(ip, "8080") + "/bytes?n=8388608")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := hex.EncodeToString(h.Sum(nil)), resp.Trailer.Get("X-Body-Sha256"); n != 8388608 || got != want {
			t.Errorf("got %d bytes sha256 %s, trailer says %s", n, got, want)
		}
	})
	t.Run("grpc", func(t *testing.T) {
		cc, err := grpc.NewClient(net.JoinHostPort(ip, "50051"), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		hr, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health: %v %v", hr, err)
		}
		r, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "e2e"})
		if err != nil || r.GetMessage() != "Hello e2e from peers" {
			t.Errorf("SayHello: %q %v", r.GetMessage(), err)
		}
	})
	t.Run("websocket", func(t *testing.T) {
		c, _, err := websocket.Dial(ctx, "ws://"+net.JoinHostPort(ip, "8081")+"/ws", &websocket.DialOptions{HTTPClient: &http.Client{Transport: &http.Transport{Proxy: nil}}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		c.SetReadLimit(1 << 20)
		for _, msg := range []string{"one", strings.Repeat("x", 100000)} {
			if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			typ, b, err := c.Read(ctx)
			if err != nil || typ != websocket.MessageText || string(b) != msg {
				t.Fatalf("echo of %d bytes: type %v, %d bytes back, %v", len(msg), typ, len(b), err)
			}
		}
		c.Close(websocket.StatusNormalClosure, "")
	})
	t.Run("udp", func(t *testing.T) {
		conn, err := net.Dial("udp4", net.JoinHostPort(ip, "9053"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		msg := "udp-" + randSuffix()
		buf := make([]byte, 1500)
		// UDP may lose a datagram: resend until the echo arrives or the deadline passes.
		eventually(ctx, t, 20*time.Second, "udp echo", func(context.Context) (bool, string) {
			if _, err := conn.Write([]byte(msg)); err != nil {
				return false, err.Error()
			}
			conn.SetReadDeadline(time.Now().Add(time.Second))
			n, err := conn.Read(buf)
			if err != nil {
				return false, err.Error()
			}
			return string(buf[:n]) == msg, string(buf[:n])
		})
	})
}
