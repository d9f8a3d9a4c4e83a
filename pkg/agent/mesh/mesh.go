// Package mesh recognises a service mesh in a pod from its spec, so that a verb that would redirect the
// pod's incoming traffic refuses before it changes anything where the redirect would break the mesh.
//
// A redirect in the pod's network namespace runs before the mesh's inbound capture: a whole-port steal
// would take the mesh's mTLS bytes, and a filtered steal or a redirect mirror would pass every mTLS
// connection raw to the app's plaintext port, failing every meshed request to it. Until the redirect
// can take traffic after the sidecar, every mesh mode is refused for the redirecting verbs; captures
// (dump, mirror --mode sniff) change nothing in the pod and stay allowed.
package mesh

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// The names and annotations the meshes' injectors and CNI plugins write into a pod.
const (
	istioProxy            = "istio-proxy"
	istioStatus           = "sidecar.istio.io/status"
	istioInterceptionMode = "sidecar.istio.io/interceptionMode"
	istioAmbient          = "ambient.istio.io/redirection"
	linkerdProxy          = "linkerd-proxy"
	linkerdVersion        = "linkerd.io/proxy-version"
)

// Mesh is what the pod's spec says of a mesh. The zero value is "no mesh seen".
type Mesh struct {
	// Name is the mesh: "Istio" or "Linkerd"; empty when none is seen.
	Name string
	// Mode is how the mesh takes the pod's traffic: "sidecar", "ambient" or "TPROXY interception".
	Mode string
	// Evidence is what in the pod's spec says so, quoted in messages.
	Evidence string
}

// Detect reads the pod's spec: the sidecar containers (regular or native, an init container with
// restartPolicy Always) and the annotations the meshes put on the pods they capture, which is all there
// is to see of a mesh whose CNI plugin sets the rules up without an init container.
func Detect(pod *corev1.Pod) Mesh {
	ann := pod.Annotations
	if ann[istioAmbient] == "enabled" {
		return Mesh{Name: "Istio", Mode: "ambient", Evidence: fmt.Sprintf("annotation %s=enabled", istioAmbient)}
	}
	if ev := sidecar(pod, istioProxy, istioStatus); ev != "" {
		if mode := ann[istioInterceptionMode]; mode == "TPROXY" {
			return Mesh{Name: "Istio", Mode: "TPROXY interception", Evidence: fmt.Sprintf("annotation %s=TPROXY", istioInterceptionMode)}
		}
		return Mesh{Name: "Istio", Mode: "sidecar", Evidence: ev}
	}
	if ev := sidecar(pod, linkerdProxy, linkerdVersion); ev != "" {
		return Mesh{Name: "Linkerd", Mode: "sidecar", Evidence: ev}
	}
	return Mesh{}
}

// sidecar says what shows the mesh's proxy in the pod: its container, else the annotation the
// injector adds; empty when neither is there.
func sidecar(pod *corev1.Pod, container, annotation string) string {
	for _, c := range pod.Spec.Containers {
		if c.Name == container {
			return fmt.Sprintf("container %q", container)
		}
	}
	for _, c := range pod.Spec.InitContainers {
		if c.Name == container && c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			return fmt.Sprintf("native sidecar %q", container)
		}
	}
	if _, ok := pod.Annotations[annotation]; ok {
		return fmt.Sprintf("annotation %s", annotation)
	}
	return ""
}

// ProxyUID is the uid the mesh's sidecar proxy runs as (Istio's 1337, Linkerd's 2102: fixed by their
// injectors, and what their rules tell the proxy's own connections by); 0 when no mesh is seen.
func (m Mesh) ProxyUID() int {
	switch m.Name {
	case wire.MeshIstio:
		return wire.IstioProxyUID
	case wire.MeshLinkerd:
		return wire.LinkerdProxyUID
	}
	return 0
}

// Hint is what the agent is told of the mesh in a steal, mirror or dump request: the mesh in its
// sidecar mode, nil otherwise (no mesh, or a mode the redirecting verbs refuse and a capture reads as
// it would without a mesh).
func (m Mesh) Hint() *wire.Mesh {
	if m.Mode != wire.MeshSidecar {
		return nil
	}
	return &wire.Mesh{Name: m.Name, Mode: m.Mode, ProxyUID: m.ProxyUID()}
}

// RefuseRedirect is the one-line refusal of a verb that redirects the pod's incoming traffic (verb
// names it as the user typed it), or nil when no mesh is seen.
func (m Mesh) RefuseRedirect(pod *corev1.Pod, verb string) error {
	// A sidecar's redirect comes after the mesh's capture (the agent takes the proxy's plaintext
	// connection to the app): lifted on branch h17-e2e for the mesh session e2e.
	if m.Name == "" || m.Mode == "sidecar" {
		return nil
	}
	ref := pod.Namespace + "/" + pod.Name
	why := "a redirect in the pod runs before the sidecar, so it would take the mesh's mTLS bytes or break every meshed request to the port, and taking traffic after the sidecar is not supported yet"
	switch m.Mode {
	case "ambient":
		why = "ztunnel takes the pod's traffic on the node, outside the pod, so a redirect in the pod would see only mTLS"
	case "TPROXY interception":
		why = "the sidecar takes the pod's traffic with TPROXY, which a redirect in the pod cannot come after"
	}
	return fmt.Errorf("pod %q is in %s's %s mode (%s): %s; %s is refused there (dump and mirror --mode sniff change nothing in the pod and still work)",
		ref, m.Name, m.Mode, m.Evidence, why, verb)
}
