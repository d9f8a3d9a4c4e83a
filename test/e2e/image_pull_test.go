//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestAgentImagePull: an agent image the node cannot pull ends the session with the kubelet's reason
// and the fix, long before --agent-wait-timeout, and the pod keeps running. The failed agent stays in
// the pod (ephemeral containers are never removed) and the kubelet retries its pull, so a second
// session waits on that agent instead of adding another, and fails the same way.
//
// The image's registry is a loopback port with no listener: the pull fails on this machine, and
// nothing leaves it.
func TestAgentImagePull(t *testing.T) {
	ctx := testContext(t, 4*time.Minute)
	ns := newNamespace(t, "pull")
	created := createPodReady(ctx, t, ns, peerPod(t, "web", nil))
	const image = "127.0.0.1:1/trafficlab-agent:missing"

	// session runs port-forward (no capability needed) until it ends by itself. Its context is shorter
	// than the default --agent-wait-timeout (2m): a session that waited for the timeout instead of
	// failing on the pull is killed by it, and fails the checks below.
	session := func(what string) string {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 75*time.Second)
		defer cancel()
		start := time.Now()
		_, stderr, err := kubectl(sctx, t, "", "trafficlab", "port-forward", "-n", ns, "pod/web", ":8080", "--agent-image", image)
		if sctx.Err() != nil {
			t.Fatalf("%s: still running after %s, so it waited past the pull failure; stderr:\n%s", what, time.Since(start).Round(time.Millisecond), stderr)
		}
		if err == nil {
			t.Fatalf("%s: succeeded with an image that cannot be pulled; stderr:\n%s", what, stderr)
		}
		t.Logf("%s ended after %s", what, time.Since(start).Round(time.Millisecond))
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		last := lines[len(lines)-1]
		want := fmt.Sprintf("error: agent image %q cannot be pulled (", image)
		if !strings.HasPrefix(last, want) || !strings.Contains(last, "127.0.0.1:1") || !strings.Contains(last, "--agent-registry") {
			t.Errorf("%s: last line %q, want one line starting %q with the kubelet's message and the fix", what, last, want)
		}
		return stderr
	}
	agents := func() []corev1.EphemeralContainer {
		t.Helper()
		p, err := client(t).CoreV1().Pods(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get pod: %v", err)
		}
		if p.Status.Phase != corev1.PodRunning {
			t.Errorf("pod phase %s, want Running", p.Status.Phase)
		}
		for i, cs := range p.Status.ContainerStatuses {
			if before := created.Status.ContainerStatuses[i].RestartCount; cs.RestartCount != before {
				t.Errorf("container %s restarted: %d restarts, %d before", cs.Name, cs.RestartCount, before)
			}
		}
		var out []corev1.EphemeralContainer
		for _, c := range p.Spec.EphemeralContainers {
			if strings.HasPrefix(c.Name, "trafficlab-") {
				out = append(out, c)
			}
		}
		return out
	}

	session("first session")
	first := agents()
	if len(first) != 1 || first[0].Image != image {
		t.Fatalf("after the first session: agents %+v, want one with image %q", first, image)
	}

	stderr := session("second session")
	if want := fmt.Sprintf("waiting for agent %s in pod %s/web (", first[0].Name, ns); !strings.Contains(stderr, want) {
		t.Errorf("second session: no %q line; stderr:\n%s", want, stderr)
	}
	if strings.Contains(stderr, "adding agent") {
		t.Errorf("second session added an agent; stderr:\n%s", stderr)
	}
	if second := agents(); len(second) != 1 || second[0].Name != first[0].Name {
		t.Errorf("after the second session: agents %+v, want only %s", second, first[0].Name)
	}
}
