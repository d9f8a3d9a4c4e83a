package steal

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// probeWarnings names the httpGet and gRPC probes on stolen ports that the steal would take from the
// app: only with --steal-probes (probes are passed to the app otherwise), and, with a filter, only
// those the filter matches. A stolen probe answered by a laptop, or not at all, restarts the pod.
func probeWarnings(pod *corev1.Pod, ports map[int]bool, stealProbes bool, match func(method, path string, headers []string) bool) []string {
	if !stealProbes {
		return nil
	}
	var out []string
	for _, c := range pod.Spec.Containers {
		for _, pr := range []struct {
			kind  string
			probe *corev1.Probe
		}{{"liveness", c.LivenessProbe}, {"readiness", c.ReadinessProbe}, {"startup", c.StartupProbe}} {
			if pr.probe == nil {
				continue
			}
			port, method, path, headers := probeRequest(&c, pr.probe)
			if port == 0 || !ports[port] {
				continue
			}
			if match != nil && !match(method, path, headers) {
				continue
			}
			out = append(out, fmt.Sprintf("--steal-probes takes the %s probe of container %q (port %d) from the app; if your process does not answer it, the kubelet restarts or unreadies the pod", pr.kind, c.Name, port))
		}
	}
	return out
}

// probeRequest is the request the kubelet sends for a probe, as a filter would see it.
func probeRequest(c *corev1.Container, p *corev1.Probe) (port int, method, path string, headers []string) {
	ua := "User-Agent: kube-probe/1.33"
	switch {
	case p.HTTPGet != nil:
		port = namedPort(c, p.HTTPGet.Port)
		path = p.HTTPGet.Path
		if path == "" {
			path = "/"
		}
		headers = []string{ua, "Accept: */*"}
		for _, h := range p.HTTPGet.HTTPHeaders {
			headers = append(headers, h.Name+": "+h.Value)
		}
		return port, "GET", path, headers
	case p.GRPC != nil:
		return int(p.GRPC.Port), "POST", "/grpc.health.v1.Health/Check", []string{ua, "Content-Type: application/grpc"}
	}
	return 0, "", "", nil
}

func namedPort(c *corev1.Container, p intstr.IntOrString) int {
	if p.Type == intstr.Int {
		return int(p.IntVal)
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort)
		}
	}
	return 0
}
