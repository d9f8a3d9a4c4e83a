//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// addEphemeral adds an ephemeral container through the pods/ephemeralcontainers subresource
// (what the plugin does) and waits until it runs.
func addEphemeral(ctx context.Context, t *testing.T, ns, pod string, ec corev1.EphemeralContainer) {
	t.Helper()
	cs := client(t)
	p, err := cs.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod %s: %v", pod, err)
	}
	p.Spec.EphemeralContainers = append(p.Spec.EphemeralContainers, ec)
	if _, err := cs.CoreV1().Pods(ns).UpdateEphemeralContainers(ctx, pod, p, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("add ephemeral container %s: %v", ec.Name, err)
	}
	eventually(ctx, t, 2*time.Minute, "ephemeral container "+ec.Name+" running", func(ctx context.Context) (bool, string) {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, s := range p.Status.EphemeralContainerStatuses {
			if s.Name == ec.Name {
				if s.State.Terminated != nil {
					t.Fatalf("ephemeral container %s terminated: %+v", ec.Name, s.State.Terminated)
				}
				return s.State.Running != nil, fmt.Sprintf("%+v", s.State)
			}
		}
		return false, "no status yet"
	})
}

func ephemeral(t *testing.T, name string, caps []corev1.Capability, cmd ...string) corev1.EphemeralContainer {
	ec := corev1.EphemeralContainer{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
		Name: name, Image: peersImage(t), ImagePullPolicy: corev1.PullIfNotPresent, Command: cmd,
	}}
	if caps != nil {
		ec.SecurityContext = &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: caps}}
	}
	return ec
}

// logsContain polls the container's log until it contains marker.
func waitLog(ctx context.Context, t *testing.T, ns, pod, container, marker string) string {
	t.Helper()
	var logs string
	eventually(ctx, t, time.Minute, fmt.Sprintf("log of %s/%s shows %q", pod, container, marker), func(ctx context.Context) (bool, string) {
		b, err := client(t).CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container}).DoRaw(ctx)
		if err != nil {
			return false, err.Error()
		}
		logs = string(b)
		return strings.Contains(logs, marker), logs
	})
	return logs
}

// TestEphemeralNetAdmin: an ephemeral container with NET_ADMIN manages nftables in the pod's
// network namespace (and only there); one without NET_ADMIN is refused by the kernel.
func TestEphemeralNetAdmin(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	ns := newNamespace(t, "netadmin")
	createPodReady(ctx, t, ns, peerPod(t, "target", nil))

	table := "tl_e2e_" + randSuffix()
	// The script reports and then idles, so the container stays Running and its log complete.
	script := fmt.Sprintf(`if nft add table inet %[1]s 2>&1 && nft list tables 2>&1; then echo RESULT=OK; else echo RESULT=FAIL; fi; exec sleep 3600`, table)

	addEphemeral(ctx, t, ns, "target", ephemeral(t, "netadmin", []corev1.Capability{"NET_ADMIN"}, "sh", "-c", script))
	logs := waitLog(ctx, t, ns, "target", "netadmin", "RESULT=")
	if !strings.Contains(logs, "RESULT=OK") || !strings.Contains(logs, "table inet "+table) {
		t.Errorf("with NET_ADMIN: want table inet %s created and listed, log:\n%s", table, logs)
	}
	// The table lives in the pod's netns, not the host's.
	if out, err := exec.CommandContext(ctx, "nft", "list", "table", "inet", table).CombinedOutput(); err == nil {
		t.Errorf("table inet %s is on the HOST: %s", table, out)
		exec.Command("nft", "delete", "table", "inet", table).Run()
	}

	script2 := strings.ReplaceAll(script, table, table+"_nocap")
	addEphemeral(ctx, t, ns, "target", ephemeral(t, "nocap", nil, "sh", "-c", script2))
	logs = waitLog(ctx, t, ns, "target", "nocap", "RESULT=")
	if !strings.Contains(logs, "RESULT=FAIL") || !strings.Contains(strings.ToLower(logs), "operation not permitted") {
		t.Errorf("without NET_ADMIN: want nft refused with EPERM, log:\n%s", logs)
	}
	// And listing is refused too: nfnetlink wants CAP_NET_ADMIN for every request.
	out, _, err := kubectl(ctx, t, "", "-n", ns, "exec", "target", "-c", "nocap", "--", "nft", "list", "tables")
	if err == nil {
		t.Errorf("nft list tables without NET_ADMIN succeeded: %q", out)
	}
	out, _, err = kubectl(ctx, t, "", "-n", ns, "exec", "target", "-c", "netadmin", "--", "nft", "list", "tables")
	if err != nil || !strings.Contains(out, "table inet "+table) {
		t.Errorf("nft list tables with NET_ADMIN: want table inet %s, got %q (%v)", table, out, err)
	}
}

// TestExecIntoEphemeral: `kubectl exec -i` into a running ephemeral container streams both
// ways, and what the exec'd process prints is not part of that container's log.
func TestExecIntoEphemeral(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	ns := newNamespace(t, "ephexec")
	createPodReady(ctx, t, ns, peerPod(t, "target", nil))

	started := "EPHEMERAL-STARTED-" + randSuffix()
	addEphemeral(ctx, t, ns, "target", ephemeral(t, "dbg", nil, "sh", "-c", "echo "+started+"; exec sleep 3600"))
	waitLog(ctx, t, ns, "target", "dbg", started)

	in, secret := "STDIN-"+randSuffix(), "EXEC-ONLY-"+randSuffix()
	out, _, err := kubectl(ctx, t, in+"\n", "-n", ns, "exec", "-i", "target", "-c", "dbg", "--",
		"sh", "-c", "read line; echo \"echoed:$line\"; echo "+secret+"; echo "+secret+"-stderr >&2")
	if err != nil {
		t.Fatalf("kubectl exec -i into ephemeral container: %v", err)
	}
	if !strings.Contains(out, "echoed:"+in) || !strings.Contains(out, secret) {
		t.Errorf("exec stdout %q: want echoed:%s and %s", out, in, secret)
	}
	logs, _, err := kubectl(ctx, t, "", "-n", ns, "logs", "target", "-c", "dbg")
	if err != nil {
		t.Fatalf("kubectl logs: %v", err)
	}
	if !strings.Contains(logs, started) {
		t.Errorf("kubectl logs of dbg lacks its own output %q: %q", started, logs)
	}
	if strings.Contains(logs, secret) || strings.Contains(logs, in) {
		t.Errorf("exec session leaked into kubectl logs: %q", logs)
	}
}
