//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/utils/ptr"
)

// doctorReport is `doctor -o json` as docs and scripts read it: the field names are the contract.
type doctorReport struct {
	Namespace string       `json:"namespace"`
	Pod       string       `json:"pod"`
	Checks    []doctorLine `json:"checks"`
	Verbs     []doctorLine `json:"verbs"`
	ExitCode  int          `json:"exitCode"`
}

type doctorLine struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
	How     string `json:"how"`
	Fix     string `json:"fix"`
}

// doctor runs `kubectl trafficlab doctor -n NS -o json ARGS...` and returns the report and the exit code.
func doctor(ctx context.Context, t *testing.T, ns string, args ...string) (doctorReport, int) {
	t.Helper()
	pfRequirePlugin(t)
	stdout, _, err := kubectl(ctx, t, "", append([]string{"trafficlab", "doctor", "-n", ns, "-o", "json"}, args...)...)
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var rep doctorReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("doctor -o json printed no report (%v):\n%s", err, stdout)
	}
	if rep.ExitCode != code {
		t.Errorf("report says exit code %d, the command exited %d", rep.ExitCode, code)
	}
	return rep, code
}

func (r doctorReport) line(t *testing.T, name string) doctorLine {
	t.Helper()
	for _, l := range append(slices.Clone(r.Checks), r.Verbs...) {
		if l.Name == name {
			return l
		}
	}
	t.Fatalf("no line %q in %+v", name, r)
	return doctorLine{}
}

// wantVerbs checks every verb's status, and that each line's text holds the given pieces.
func (r doctorReport) wantVerbs(t *testing.T, want map[string]string, says map[string][]string) {
	t.Helper()
	got := map[string]string{}
	for _, v := range r.Verbs {
		got[v.Name] = v.Status
	}
	for name, status := range want {
		if got[name] != status {
			t.Errorf("verb %s: %q, want %q (%+v)", name, got[name], status, r.line(t, name))
		}
	}
	if len(got) != len(want) {
		t.Errorf("verbs %v, want %v", got, want)
	}
	for name, pieces := range says {
		l := r.line(t, name)
		text := l.Message + " | " + l.How + " | " + l.Fix
		for _, p := range pieces {
			if !strings.Contains(text, p) {
				t.Errorf("%s: %q does not say %q", name, text, p)
			}
		}
	}
}

// doctorTarget makes a namespace with a running pod "target", then sets its PodSecurity level (the pod
// itself predates the label, as an app's would).
func doctorTarget(ctx context.Context, t *testing.T, prefix, level string) string {
	t.Helper()
	ns := newNamespace(t, prefix)
	createPodReady(ctx, t, ns, pfEchoPod(t, "target", nil, false))
	if level != "" {
		if _, _, err := kubectl(ctx, t, "", "label", "namespace", ns, "pod-security.kubernetes.io/enforce="+level); err != nil {
			t.Fatal(err)
		}
	}
	return ns
}

// unchanged fails t when the dry runs added an ephemeral container or otherwise wrote the pod.
func unchanged(ctx context.Context, t *testing.T, ns string, before []string, rv string) {
	t.Helper()
	after, rv2 := pfPodEphemeral(ctx, t, ns, "target")
	if len(after) != len(before) || rv2 != rv {
		t.Errorf("doctor changed the pod: ephemeral containers %v -> %v, resourceVersion %s -> %s", before, after, rv, rv2)
	}
}

// At PodSecurity baseline the NET_ADMIN agent is refused and the sniffing one, which keeps NET_RAW from
// the runtime and adds nothing, is admitted: doctor says so from the server's own dry runs, and the pod
// is left as it was.
func TestDoctorBaselineNamespace(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 3*time.Minute)
	ns := doctorTarget(ctx, t, "doctor-baseline", "baseline")
	before, rv := pfPodEphemeral(ctx, t, ns, "target")

	rep, code := doctor(ctx, t, ns, "pod/target")
	if code != 3 {
		t.Errorf("exit code %d, want 3 (a verb is unusable)", code)
	}
	rep.wantVerbs(t,
		map[string]string{"steal": "fail", "mirror-redirect": "fail", "mirror-sniff": "ok", "dump": "ok", "port-forward": "ok", "exec": "ok"},
		map[string][]string{
			"steal":       {`PodSecurity "baseline`, "NET_ADMIN"},
			"dump":        {"server dry run accepted the agent container (NET_RAW kept from the runtime's default)", "--add-net-raw (for runtimes without NET_RAW by default) is refused here"},
			"exec":        {"server dry run accepted the agent container (no capability, non-root)"},
			"podsecurity": {`enforces PodSecurity "baseline"`},
			"runtime":     {"containerd", "NET_RAW by default"},
			"kernel":      {"node "},
		})
	unchanged(ctx, t, ns, before, rv)

	// Without a pod the label alone says which verbs cannot work; the rest needs the dry run.
	rep, code = doctor(ctx, t, ns)
	if code != 3 {
		t.Errorf("namespace-level exit code %d, want 3", code)
	}
	rep.wantVerbs(t,
		map[string]string{"steal": "fail", "mirror-redirect": "fail", "mirror-sniff": "unknown", "dump": "unknown", "port-forward": "unknown", "exec": "unknown"},
		map[string][]string{"pod": {"need a target pod"}, "dump": {"doctor pod/NAME"}})

	// The text form: one line per check, kubectl-style, and which verbs work.
	out, _, err := kubectl(ctx, t, "", "trafficlab", "doctor", "-n", ns, "pod/target", "-q")
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Errorf("text run: %v, want exit code 3", err)
	}
	for _, want := range []string{"\nFAIL     steal ", "\nOK       dump ", "\nusable: mirror-sniff, dump, port-forward, exec; unusable: steal, mirror-redirect; unknown: none\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("text output lacks %q:\n%s", want, out)
		}
	}
	unchanged(ctx, t, ns, before, rv)
}

// At restricted only the agent without capabilities, non-root, is admitted, and only to a pod that
// meets restricted itself: PodSecurity judges the whole pod whenever a container is added.
func TestDoctorRestrictedNamespace(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 3*time.Minute)
	ns := newNamespace(t, "doctor-restricted")
	strict := pfEchoPod(t, "target", nil, false)
	strict.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](1000), SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	strict.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false), Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
	createPodReady(ctx, t, ns, strict)
	createPodReady(ctx, t, ns, pfEchoPod(t, "loose", nil, false))
	if _, _, err := kubectl(ctx, t, "", "label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted"); err != nil {
		t.Fatal(err)
	}
	before, rv := pfPodEphemeral(ctx, t, ns, "target")
	rep, code := doctor(ctx, t, ns, "pod/target")
	if code != 3 {
		t.Errorf("exit code %d, want 3", code)
	}
	rep.wantVerbs(t,
		map[string]string{"steal": "fail", "mirror-redirect": "fail", "mirror-sniff": "fail", "dump": "fail", "port-forward": "ok", "exec": "ok"},
		map[string][]string{
			"dump":         {`PodSecurity "restricted`, "the agent container must not set runAsUser=0"},
			"port-forward": {"(no capability, non-root)"},
		})
	unchanged(ctx, t, ns, before, rv)

	// A pod that predates the label and does not meet it takes no agent at all.
	rep, _ = doctor(ctx, t, ns, "pod/loose")
	rep.wantVerbs(t,
		map[string]string{"steal": "fail", "mirror-redirect": "fail", "mirror-sniff": "fail", "dump": "fail", "port-forward": "fail", "exec": "fail"},
		map[string][]string{"exec": {`container "main"`, "the pod's own containers violate the level", "target a pod that meets the namespace's level"}})
}

// A user with the documented Role but pods/portforward: every verb works, with data over exec, and
// doctor names the rule that would make it faster; what the user may not read (nodes, the namespace,
// webhook configurations) is unknown, not a failure.
func TestDoctorWithoutPortForwardRBAC(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 3*time.Minute)
	ns := doctorTarget(ctx, t, "doctor-rbac", "privileged")
	kc := userKubeconfig(ctx, t, ns, "dev", podRules(
		rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"get", "create"}},
	))
	before, rv := pfPodEphemeral(ctx, t, ns, "target")
	rep, code := doctor(ctx, t, ns, "--kubeconfig", kc, "pod/target")
	if code != 0 {
		t.Errorf("exit code %d, want 0 (every verb usable)", code)
	}
	all := map[string]string{"steal": "warn", "mirror-redirect": "warn", "mirror-sniff": "warn", "dump": "warn", "port-forward": "warn", "exec": "warn"}
	rule := `{apiGroups: [""], resources: ["pods/portforward"], verbs: ["create", "get"]}`
	rep.wantVerbs(t, all, map[string][]string{
		"steal":             {"server dry run accepted the agent container (NET_ADMIN)", "data over exec", rule},
		"rbac-port-forward": {"pods/portforward is forbidden", rule, ns},
		"rbac-exec":         {"may exec"},
		"kernel":            {"cannot read node", "forbidden"},
		"runtime":           {"cannot read node", "forbidden"},
		"podsecurity":       {"cannot read namespace", "forbidden"},
		"webhooks":          {"cannot list admission webhook configurations (forbidden)"},
	})
	for _, name := range []string{"kernel", "runtime", "podsecurity", "webhooks"} {
		if s := rep.line(t, name).Status; s != "unknown" {
			t.Errorf("%s: %q, want unknown", name, s)
		}
	}
	unchanged(ctx, t, ns, before, rv)
}
