package mesh

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

func podWith(ann map[string]string, containers []corev1.Container, inits ...corev1.Container) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", Annotations: ann},
		Spec:       corev1.PodSpec{Containers: containers, InitContainers: inits},
	}
}

func TestDetect(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	app := corev1.Container{Name: "app"}
	tests := []struct {
		name string
		pod  *corev1.Pod
		want Mesh
	}{
		{name: "no mesh", pod: podWith(nil, []corev1.Container{app})},
		{name: "Istio sidecar container", pod: podWith(nil, []corev1.Container{app, {Name: "istio-proxy"}}),
			want: Mesh{Name: "Istio", Mode: "sidecar", Evidence: `container "istio-proxy"`}},
		{name: "Istio native sidecar", pod: podWith(nil, []corev1.Container{app}, corev1.Container{Name: "istio-proxy", RestartPolicy: &always}),
			want: Mesh{Name: "Istio", Mode: "sidecar", Evidence: `native sidecar "istio-proxy"`}},
		{name: "a plain init container of that name is no sidecar", pod: podWith(nil, []corev1.Container{app}, corev1.Container{Name: "istio-proxy"})},
		{name: "Istio status annotation only", pod: podWith(map[string]string{"sidecar.istio.io/status": "{}"}, []corev1.Container{app}),
			want: Mesh{Name: "Istio", Mode: "sidecar", Evidence: "annotation sidecar.istio.io/status"}},
		{name: "Istio TPROXY", pod: podWith(map[string]string{"sidecar.istio.io/interceptionMode": "TPROXY"}, []corev1.Container{app, {Name: "istio-proxy"}}),
			want: Mesh{Name: "Istio", Mode: "TPROXY interception", Evidence: "annotation sidecar.istio.io/interceptionMode=TPROXY"}},
		{name: "Istio REDIRECT mode is the sidecar mode", pod: podWith(map[string]string{"sidecar.istio.io/interceptionMode": "REDIRECT"}, []corev1.Container{app, {Name: "istio-proxy"}}),
			want: Mesh{Name: "Istio", Mode: "sidecar", Evidence: `container "istio-proxy"`}},
		{name: "Istio ambient", pod: podWith(map[string]string{"ambient.istio.io/redirection": "enabled"}, []corev1.Container{app}),
			want: Mesh{Name: "Istio", Mode: "ambient", Evidence: "annotation ambient.istio.io/redirection=enabled"}},
		{name: "ambient disabled", pod: podWith(map[string]string{"ambient.istio.io/redirection": "disabled"}, []corev1.Container{app})},
		{name: "Linkerd sidecar", pod: podWith(nil, []corev1.Container{{Name: "linkerd-proxy"}, app}),
			want: Mesh{Name: "Linkerd", Mode: "sidecar", Evidence: `container "linkerd-proxy"`}},
		{name: "Linkerd native sidecar", pod: podWith(nil, []corev1.Container{app}, corev1.Container{Name: "linkerd-proxy", RestartPolicy: &always}),
			want: Mesh{Name: "Linkerd", Mode: "sidecar", Evidence: `native sidecar "linkerd-proxy"`}},
		{name: "Linkerd annotation only (linkerd-cni)", pod: podWith(map[string]string{"linkerd.io/proxy-version": "edge-26.1.1"}, []corev1.Container{app}),
			want: Mesh{Name: "Linkerd", Mode: "sidecar", Evidence: "annotation linkerd.io/proxy-version"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if d := cmp.Diff(tt.want, Detect(tt.pod)); d != "" {
				t.Errorf("Detect (-want +got):\n%s", d)
			}
		})
	}
}

func TestRefuseRedirect(t *testing.T) {
	// No mesh, and a sidecar (the redirect comes after its capture), are not refused.
	for _, pod := range []*corev1.Pod{
		podWith(nil, []corev1.Container{{Name: "app"}}),
		podWith(nil, []corev1.Container{{Name: "app"}, {Name: "istio-proxy"}}),
		podWith(nil, []corev1.Container{{Name: "linkerd-proxy"}}),
	} {
		if err := Detect(pod).RefuseRedirect(pod, "steal"); err != nil {
			t.Errorf("%v is refused: %v", pod.Spec.Containers, err)
		}
	}
	for _, tt := range []struct {
		pod  *corev1.Pod
		verb string
		want []string
	}{
		{pod: podWith(map[string]string{"ambient.istio.io/redirection": "enabled"}, nil), verb: "mirror --mode redirect",
			want: []string{"Istio's ambient mode", "ztunnel", "mirror --mode redirect is refused"}},
		{pod: podWith(map[string]string{"sidecar.istio.io/interceptionMode": "TPROXY", "sidecar.istio.io/status": "{}"}, nil), verb: "steal",
			want: []string{`pod "shop/web" is in Istio's TPROXY interception mode`, "TPROXY", "steal is refused", "mirror --mode sniff"}},
	} {
		err := Detect(tt.pod).RefuseRedirect(tt.pod, tt.verb)
		if err == nil {
			t.Errorf("%v: not refused", tt.pod.Annotations)
			continue
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("refusal is not one line: %q", err)
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("refusal %q lacks %q", err, w)
			}
		}
	}
}

// TestHint: a pod in a sidecar mode sends the agent the mesh with its proxy's uid; no mesh, ambient and
// TPROXY send none (the redirecting verbs refuse them, and a capture reads them as a pod without one).
func TestHint(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	app := corev1.Container{Name: "app"}
	for _, tt := range []struct {
		name string
		pod  *corev1.Pod
		want *wire.Mesh
	}{
		{name: "no mesh", pod: podWith(nil, []corev1.Container{app})},
		{name: "Istio sidecar", pod: podWith(nil, []corev1.Container{app, {Name: "istio-proxy"}}),
			want: &wire.Mesh{Name: "Istio", Mode: "sidecar", ProxyUID: 1337}},
		{name: "Istio native sidecar", pod: podWith(nil, []corev1.Container{app}, corev1.Container{Name: "istio-proxy", RestartPolicy: &always}),
			want: &wire.Mesh{Name: "Istio", Mode: "sidecar", ProxyUID: 1337}},
		{name: "Linkerd by its annotation (linkerd-cni)", pod: podWith(map[string]string{"linkerd.io/proxy-version": "edge-26.1.1"}, []corev1.Container{app}),
			want: &wire.Mesh{Name: "Linkerd", Mode: "sidecar", ProxyUID: 2102}},
		{name: "Istio ambient", pod: podWith(map[string]string{"ambient.istio.io/redirection": "enabled"}, []corev1.Container{app})},
		{name: "Istio TPROXY", pod: podWith(map[string]string{"sidecar.istio.io/interceptionMode": "TPROXY"}, []corev1.Container{app, {Name: "istio-proxy"}})},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := Detect(tt.pod).Hint()
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("Hint (-want +got):\n%s", d)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("the hint fails the agent's check: %v", err)
			}
		})
	}
}
