//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"
)

// A pod in a mesh mode the redirect cannot come after (Istio's TPROXY interception, ambient) is
// refused by the verbs that redirect (steal, mirror --mode redirect, exec --steal), in one line that
// names the mesh mode, and nothing is added to the pod; a sniffing mirror changes nothing in the pod
// and is not refused. The mesh here is only a container of the mesh's name and its annotations,
// which is what the plugin reads: the refusal comes before any rule.
func TestMeshedPodRefusedBeforeInjecting(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	ns := newNamespace(t, "mesh-refuse")
	pod := pfEchoPod(t, "target", nil, false)
	sidecar := pod.Spec.Containers[0]
	sidecar.Name, sidecar.Command, sidecar.Ports = "istio-proxy", []string{"/bin/sleep", "3600"}, nil
	sidecar.ReadinessProbe, sidecar.LivenessProbe, sidecar.StartupProbe = nil, nil, nil
	pod.Spec.Containers = append(pod.Spec.Containers, sidecar)
	pod.Annotations = map[string]string{"sidecar.istio.io/interceptionMode": "TPROXY"}
	ambient := pfEchoPod(t, "ambient", nil, false)
	ambient.Annotations = map[string]string{"ambient.istio.io/redirection": "enabled"}
	createPodReady(ctx, t, ns, pod)
	createPodReady(ctx, t, ns, ambient)
	for _, tc := range []struct {
		name, verb, pod string
		args            []string
		want            string
	}{
		{name: "steal", verb: "steal", pod: "target", args: []string{"--port", "8080:1"}, want: `Istio's TPROXY interception mode (annotation sidecar.istio.io/interceptionMode=TPROXY)`},
		{name: "redirect mirror", verb: "mirror", pod: "ambient", args: []string{"--port", "8080:1", "--mode", "redirect"}, want: "Istio's ambient mode"},
		{name: "exec --steal", verb: "exec", pod: "target", args: []string{"--steal", "8080", "--", "true"}, want: "Istio's TPROXY interception mode"},
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
