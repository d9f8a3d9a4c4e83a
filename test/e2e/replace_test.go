//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"regexp"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// TestReplacePortForward: port-forward to deploy/api with two replicas; the pod in use is deleted;
// the plugin says so in one line and goes on on the other ready pod, and the same local port answers
// from it.
func TestReplacePortForward(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	cs := client(t)
	ns := newNamespace(t, "replace")
	labels := map[string]string{"app": "api"}
	spec := peerPodSpec(t)
	spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
	spec.Containers[0].ReadinessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
		PeriodSeconds: 1,
	}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "api"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec},
		},
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	eventually(ctx, t, 2*time.Minute, "deployment api has 2 available replicas", func(ctx context.Context) (bool, string) {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, "api", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return d.Status.AvailableReplicas == 2, fmt.Sprintf("%+v", d.Status)
	})
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=api"})
	if err != nil {
		t.Fatal(err)
	}
	replicas := map[string]bool{}
	for _, p := range pods.Items {
		replicas[p.Name] = true
	}

	pf := pfStart(t, "pf", ns, "deploy/api", ":8080")
	port, _ := pf.localPort("localhost:8080", 30*time.Second)
	pf.connected(2 * time.Minute)
	r, err := pfRequest(ctx, port, "GET", "/before", nil)
	if err != nil {
		t.Fatalf("request before the deletion: %v", err)
	}
	first := r.Pod
	if !replicas[first] {
		t.Fatalf("answered by pod %q, not a replica of deploy/api (%v)", first, replicas)
	}
	from := len(pf.snapshot())

	deleted := time.Now()
	if err := cs.CoreV1().Pods(ns).Delete(ctx, first, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete pod %s: %v", first, err)
	}
	re := regexp.MustCompile(`^pod ` + regexp.QuoteMeta(first) + ` went away \((terminating|deleted)\); continuing on pod (\S+) of deployment/api$`)
	m, _, _ := pf.waitLine(from, "stderr", re, 2*time.Minute)
	took := time.Since(deleted)
	next := m[2]
	if !replicas[next] || next == first {
		t.Fatalf("continued on pod %q; want the other replica of %v", next, replicas)
	}
	t.Logf("pod %s deleted; the session went on on pod %s %v later", first, next, took.Round(time.Millisecond))

	// The same local port, at once, answers from the other pod.
	for i := range 5 {
		r, err := pfRequest(ctx, port, "GET", fmt.Sprintf("/after/%d", i), nil)
		if err != nil {
			t.Fatalf("request %d after the replacement: %v\n%s", i, err, pf.output())
		}
		if r.Pod != next {
			t.Fatalf("request %d answered by pod %q, want %q", i, r.Pod, next)
		}
	}
	select {
	case <-pf.done:
		t.Fatalf("the plugin ended: %s", pf.output())
	default:
	}
}
