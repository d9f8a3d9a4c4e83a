//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// userKubeconfig makes a service account bound to rules in ns and returns a kubeconfig for it, so the
// plugin runs as a user with exactly those permissions.
func userKubeconfig(ctx context.Context, t *testing.T, ns, name string, rules []rbacv1.PolicyRule) string {
	t.Helper()
	c := client(t)
	if _, err := c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tok, err := c.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ca := restConfig.CAFile
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: %q, certificate-authority: %q}}]
users: [{name: %s, user: {token: %q}}]
contexts: [{name: %s, context: {cluster: local, user: %s, namespace: %s}}]
current-context: %s
`, restConfig.Host, ca, name, tok.Status.Token, name, name, ns, name)
	path := filepath.Join(t.TempDir(), name+".kubeconfig")
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func podRules(extra ...rbacv1.PolicyRule) []rbacv1.PolicyRule {
	return append([]rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"pods/ephemeralcontainers"}, Verbs: []string{"patch"}},
	}, extra...)
}

// A user who may exec but not port-forward still gets a working session, over exec, told so in one line.
func TestPortForwardFallsBackToExecWithoutPortForwardRBAC(t *testing.T) {
	pfRequirePlugin(t)
	ctx := testContext(t, 2*time.Minute)
	ns := newNamespace(t, "pf-rbac-exec")
	createPodReady(ctx, t, ns, pfEchoPod(t, "target", nil, false))
	kc := userKubeconfig(ctx, t, ns, "dev", podRules(
		rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"get", "create"}},
	))
	pf := pfStart(t, "pf", ns, "--kubeconfig", kc, "pod/target", ":8080")
	port, _ := pf.localPort("localhost:8080", time.Minute)
	_, _, _ = pf.connected(time.Minute)
	pfMustEcho(ctx, t, port, "target")
	out := pf.output()
	if !strings.Contains(out, `warning: missing RBAC permission: apiGroups: [""], resources: ["pods/portforward"]`) ||
		!strings.Contains(out, "carrying data over exec instead") {
		t.Errorf("no one-line warning about the exec fallback:\n%s", out)
	}
	if !strings.Contains(out, "data via exec") {
		t.Errorf("session does not say it carries data over exec:\n%s", out)
	}
	if err := pf.stop(); err != nil {
		t.Errorf("Ctrl-C should end the session cleanly, got %v:\n%s", err, pf.output())
	}
}

// Refusals that must come before anything is added to the pod.
func TestPortForwardRefusesBeforeInjecting(t *testing.T) {
	pfRequirePlugin(t)
	ctx := testContext(t, 2*time.Minute)
	ns := newNamespace(t, "pf-refuse")
	createPodReady(ctx, t, ns, pfEchoPod(t, "target", nil, false))
	host := peerPod(t, "hostnet", nil, "/bin/sleep", "3600")
	host.Spec.HostNetwork = true
	createPodReady(ctx, t, ns, host)
	hostPID := peerPod(t, "hostpid", nil, "/bin/sleep", "3600")
	hostPID.Spec.HostPID = true
	createPodReady(ctx, t, ns, hostPID)
	noExec := userKubeconfig(ctx, t, ns, "noexec", podRules())
	for _, tc := range []struct {
		name string
		args []string
		pod  string
		want []string
	}{
		{
			name: "no exec permission",
			args: []string{"--kubeconfig", noExec, "pod/target", ":8080"},
			pod:  "target",
			want: []string{`missing RBAC permission`, `resources: ["pods/exec"]`, fmt.Sprintf("in namespace %q", ns)},
		},
		{
			name: "hostNetwork pod",
			args: []string{"pod/hostnet", ":8080"},
			pod:  "hostnet",
			want: []string{"hostNetwork", "--allow-host-network"},
		},
		{
			// The agent would sit in the node's PID namespace, where its peer check cannot hold.
			name: "hostPID pod",
			args: []string{"pod/hostpid", ":8080"},
			pod:  "hostpid",
			want: []string{"hostPID: true", "node's process namespace"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, rv := pfPodEphemeral(ctx, t, ns, tc.pod)
			pf := pfStart(t, "pf", ns, tc.args...)
			if err := pf.waitExit(time.Minute); err == nil {
				t.Fatalf("plugin succeeded; output:\n%s", pf.output())
			}
			var errLines []string
			for _, l := range pf.snapshot() {
				if strings.HasPrefix(l.text, "error: ") {
					errLines = append(errLines, l.text)
				}
			}
			if len(errLines) != 1 {
				t.Fatalf("want one error line, got %q", errLines)
			}
			for _, w := range tc.want {
				if !strings.Contains(errLines[0], w) {
					t.Errorf("error %q does not mention %q", errLines[0], w)
				}
			}
			after, rv2 := pfPodEphemeral(ctx, t, ns, tc.pod)
			if len(after) != len(before) || rv2 != rv {
				t.Errorf("the pod changed (ephemeral containers %v -> %v, resourceVersion %s -> %s)", before, after, rv, rv2)
			}
		})
	}
}

// A user allowed only "get" on the stream subresources (enough for WebSocket, not for SPDY's POST)
// still gets port-forward data: the refused SPDY upgrade falls back to WebSocket.
func TestPortForwardWithWebSocketOnlyRBAC(t *testing.T) {
	pfRequirePlugin(t)
	ctx := testContext(t, 2*time.Minute)
	ns := newNamespace(t, "pf-rbac-ws")
	createPodReady(ctx, t, ns, pfEchoPod(t, "target", nil, false))
	kc := userKubeconfig(ctx, t, ns, "dev", podRules(
		rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods/exec", "pods/portforward"}, Verbs: []string{"get"}},
	))
	pf := pfStart(t, "pf", ns, "--kubeconfig", kc, "pod/target", ":8080")
	port, _ := pf.localPort("localhost:8080", time.Minute)
	pf.connected(time.Minute)
	pfMustEcho(ctx, t, port, "target")
	if out := pf.output(); !strings.Contains(out, "data via port-forward over websocket") {
		t.Errorf("session should carry data over WebSocket port-forward:\n%s", out)
	}
	if err := pf.stop(); err != nil {
		t.Errorf("Ctrl-C should end the session cleanly, got %v:\n%s", err, pf.output())
	}
}
