//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// echoReply is the part of peer-echo's answer the tests read.
type echoReply struct {
	Pod        string              `json:"pod"`
	Method     string              `json:"method"`
	Path       string              `json:"path"`
	RemoteAddr string              `json:"remoteAddr"`
	Headers    map[string][]string `json:"headers"`
}

// TestServiceReachable: an echo Deployment behind a Service answers on its ClusterIP from
// the host (kube-proxy nftables rules) and on its DNS name from another pod (CoreDNS).
func TestServiceReachable(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	cs := client(t)
	ns := newNamespace(t, "svc")
	labels := map[string]string{"app": "echo"}

	spec := peerPodSpec(t)
	spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
	spec.Containers[0].ReadinessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
		PeriodSeconds: 1,
	}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec},
		},
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: corev1.ServiceSpec{
			Selector: labels,
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	eventually(ctx, t, 2*time.Minute, "deployment echo has 2 available replicas", func(ctx context.Context) (bool, string) {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, "echo", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return d.Status.AvailableReplicas == 2, fmt.Sprintf("%+v", d.Status)
	})
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil {
		t.Fatalf("list pods: %v", err)
	}
	backends := map[string]bool{}
	for _, p := range pods.Items {
		backends[p.Name] = true
	}

	// Host -> ClusterIP. No proxy from the environment: the request must take the kernel path.
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	url := "http://" + net.JoinHostPort(svc.Spec.ClusterIP, "80") + "/from-host"
	seen := map[string]bool{}
	eventually(ctx, t, time.Minute, "host reaches "+url+" and both backends answered", func(ctx context.Context) (bool, string) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := hc.Do(req)
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var r echoReply
		if err := json.Unmarshal(body, &r); err != nil {
			return false, fmt.Sprintf("status %d, body %q: %v", resp.StatusCode, body, err)
		}
		if !backends[r.Pod] || r.Path != "/from-host" {
			return false, fmt.Sprintf("unexpected reply %+v (backends %v)", r, backends)
		}
		seen[r.Pod] = true
		return len(seen) == len(backends), fmt.Sprintf("answered so far: %v", seen)
	})

	// Pod -> Service DNS name, resolved by CoreDNS through the kube-dns Service.
	createPodReady(ctx, t, ns, peerPod(t, "client", nil, "sleep", "3600"))
	fqdn := fmt.Sprintf("echo.%s.svc.cluster.local", ns)
	eventually(ctx, t, time.Minute, "pod client reaches http://"+fqdn, func(ctx context.Context) (bool, string) {
		out, stderr, err := kubectl(ctx, t, "", "-n", ns, "exec", "client", "--",
			// busybox-static 1.35's wget segfaults with -T; bound it with timeout(1) instead
			"timeout", "5", "wget", "-qO-", "http://"+fqdn+"/from-pod")
		if err != nil {
			return false, fmt.Sprintf("%v: %s", err, stderr)
		}
		var r echoReply
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			return false, fmt.Sprintf("body %q: %v", out, err)
		}
		return backends[r.Pod] && r.Path == "/from-pod", fmt.Sprintf("%+v", r)
	})
	out, _, err := kubectl(ctx, t, "", "-n", ns, "exec", "client", "--", "nslookup", fqdn)
	if err != nil || !strings.Contains(out, svc.Spec.ClusterIP) {
		t.Errorf("nslookup %s in pod: want %s, got %q (%v)", fqdn, svc.Spec.ClusterIP, out, err)
	}
}
