//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"
)

// A pod in a mesh mode that a redirect in the pod cannot come after (Istio's ambient and TPROXY
// interception modes) is refused by the verbs that would redirect (steal, mirror --mode redirect, exec
// --steal), in one line that names the mesh mode, and nothing is added to the pod; a sniffing mirror
// changes nothing in the pod and is not refused. The mesh here is only what the plugin reads, the
// pod's spec: the refusal comes before any rule. (Sidecar modes are served after the sidecar: see
// mesh_test.go.)
func TestMeshedPodRefusedBeforeInjecting(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	ns := newNamespace(t, "mesh-refuse")
	pod := pfEchoPod(t, "target", nil, false)
	sidecar := pod.Spec.Containers[0]
	sidecar.Name, sidecar.Command, sidecar.Ports = "istio-proxy", []string{"/bin/sleep", "3600"}, nil
	sidecar.ReadinessProbe, sidecar.LivenessProbe, sidecar.StartupProbe = nil, nil, nil
	pod.Spec.Containers = append(pod.Spec.Containers, sidecar)
	pod.Annotations = map[string]string{"sidecar.istio.io/status": "{}", "sidecar.istio.io/interceptionMode": "TPROXY"}
	ambient := pfEchoPod(t, "ambient", nil, false)
	ambient.Annotations = map[string]string{"ambient.istio.io/redirection": "enabled"}
	createPodReady(ctx, t, ns, pod)
	createPodReady(ctx, t, ns, ambient)
	for _, tc := range []struct {
		name, verb, pod string
		args            []string
		want            string
	}{
		{name: "steal", verb: "steal", pod: "target", args: []string{"--port", "8080:1"}, want: "Istio's TPROXY interception mode (annotation sidecar.istio.io/interceptionMode=TPROXY)"},
		{name: "redirect mirror", verb: "mirror", pod: "ambient", args: []string{"--port", "8080:1", "--mode", "redirect"}, want: "Istio's ambient mode"},
		{name: "exec --steal", verb: "exec", pod: "ambient", args: []string{"--steal", "8080", "--", "true"}, want: "Istio's ambient mode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, rv := pfPodEphemeral(ctx, t, ns, tc.pod)
			p := pluginStart(t, tc.verb, tc.verb, ns, append([]string{"pod/" + tc.pod}, tc.args...)...)
			if err := p.waitExit(time.Minute); err == nil {
				t.Fatalf("plugin succeeded; output:\n%s", p.output())
			}
			var errLines []string
			for _, l := range p.snapshot() {
				if strings.HasPrefix(l.text, "error: ") {
					errLines = append(errLines, l.text)
				}
			}
			if len(errLines) != 1 || !strings.Contains(errLines[0], tc.want) {
				t.Fatalf("want one error line naming %q, got %q", tc.want, errLines)
			}
			after, rv2 := pfPodEphemeral(ctx, t, ns, tc.pod)
			if len(after) != len(before) || rv2 != rv {
				t.Errorf("the pod changed (ephemeral containers %v -> %v, resourceVersion %s -> %s)", before, after, rv, rv2)
			}
		})
	}
	// The sniffing mirror gets past the check: it adds its agent and starts.
	m := pluginStart(t, "mirror-sniff", "mirror", ns, "pod/target", "--port", "8080:1")
	m.waitLine(0, "stderr", mirroringRE, 2*time.Minute)
	if err := m.stop(); err != nil {
		t.Errorf("the sniffing mirror ended with %v:\n%s", err, m.output())
	}
}

// TestMeshedPodWithoutRulesRefusedByTheAgent: a pod whose spec shows an Istio sidecar but whose network
// namespace has no Istio capture rules (a container that only bears the name) gets past the plugin's
// check, and the agent, which decides from the rules it reads, refuses the steal in one line before it
// installs any redirect: the pod keeps answering on the port.
func TestMeshedPodWithoutRulesRefusedByTheAgent(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	ns := newNamespace(t, "mesh-norules")
	pod := pfEchoPod(t, "target", nil, false)
	sidecar := pod.Spec.Containers[0]
	sidecar.Name, sidecar.Command, sidecar.Ports = "istio-proxy", []string{"/bin/sleep", "3600"}, nil
	sidecar.ReadinessProbe, sidecar.LivenessProbe, sidecar.StartupProbe = nil, nil, nil
	pod.Spec.Containers = append(pod.Spec.Containers, sidecar)
	createPodReady(ctx, t, ns, pod)
	p := pluginStart(t, "steal", "steal", ns, "pod/target", "--port", "8080:1")
	if err := p.waitExit(2 * time.Minute); err == nil {
		t.Fatalf("plugin succeeded; output:\n%s", p.output())
	}
	var errLines []string
	for _, l := range p.snapshot() {
		if strings.HasPrefix(l.text, "error: ") {
			errLines = append(errLines, l.text)
		}
	}
	if len(errLines) != 1 || !strings.Contains(errLines[0], "no capture rules of that mesh") {
		t.Fatalf("want one error line saying the pod has no Istio rules, got %q", errLines)
	}
}
