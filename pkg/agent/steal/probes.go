package steal

import (
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Istio rewrites the app's probes to its sidecar's status port and lists the originals in the
// sidecar's environment; pilot-agent then sends them to the app from istioProbeSource.
const (
	istioProxy       = "istio-proxy"
	istioAppProbers  = "ISTIO_KUBE_APP_PROBERS"
	istioProbeSource = "127.0.0.6"
)

// declaredProbe is one probe of the pod that reaches a port, and whose it is, for the messages.
type declaredProbe struct {
	// Container is the container that declares it; Which is liveness, readiness or startup (for
	// Istio's, the sidecar's probe path).
	Container, Which string
	Probe            wire.Probe
}

// podProbes are the pod's probes that reach its ports, as the kubelet (or, in an Istio pod,
// pilot-agent) sends them: every container's, as the containers share the ports, with named ports
// resolved against the declaring container's, and the addresses they come from that the agent
// cannot see for itself (the node's).
func podProbes(pod *corev1.Pod) ([]declaredProbe, []string, error) {
	var out []declaredProbe
	containers := append([]corev1.Container(nil), pod.Spec.Containers...)
	for _, c := range pod.Spec.InitContainers {
		// Sidecars (restartable init containers) have probes; other init containers cannot.
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			containers = append(containers, c)
		}
	}
	var sources []string
	for _, ip := range pod.Status.HostIPs {
		sources = append(sources, ip.IP)
	}
	if len(sources) == 0 && pod.Status.HostIP != "" {
		sources = append(sources, pod.Status.HostIP)
	}
	for i := range containers {
		c := &containers[i]
		for _, pr := range []struct {
			which string
			probe *corev1.Probe
		}{{"liveness", c.LivenessProbe}, {"readiness", c.ReadinessProbe}, {"startup", c.StartupProbe}} {
			if pr.probe == nil {
				continue
			}
			if p, ok := wireProbe(pr.probe.ProbeHandler, c, containers); ok {
				out = append(out, declaredProbe{Container: c.Name, Which: pr.which, Probe: p})
			}
		}
		if c.Name != istioProxy {
			continue
		}
		for _, e := range c.Env {
			if e.Name != istioAppProbers || e.Value == "" {
				continue
			}
			// Istio's prober list: its status-port path -> the app's original probe.
			var probers map[string]corev1.ProbeHandler
			if err := json.Unmarshal([]byte(e.Value), &probers); err != nil {
				return nil, nil, fmt.Errorf("read the app probes of container %q (%s): %w", c.Name, istioAppProbers, err)
			}
			paths := make([]string, 0, len(probers))
			for path := range probers {
				paths = append(paths, path)
			}
			sort.Strings(paths)
			for _, path := range paths {
				if p, ok := wireProbe(probers[path], nil, containers); ok {
					out = append(out, declaredProbe{Container: c.Name, Which: path, Probe: p})
				}
			}
			sources = append(sources, istioProbeSource)
		}
	}
	return out, sources, nil
}

// wireProbe is a probe handler as the agent matches it: its port (a named port resolved against c's
// ports, or, for Istio's list, which names no container, against every container's), and for HTTP
// the request target the kubelet sends. Exec probes reach no port.
func wireProbe(h corev1.ProbeHandler, c *corev1.Container, all []corev1.Container) (wire.Probe, bool) {
	var p wire.Probe
	var port intstr.IntOrString
	switch {
	case h.HTTPGet != nil:
		port = h.HTTPGet.Port
		p.Kind = wire.ProbeHTTP
		if strings.EqualFold(string(h.HTTPGet.Scheme), string(corev1.URISchemeHTTPS)) {
			p.Kind = wire.ProbeHTTPS
			break
		}
		p.Path = requestTarget(h.HTTPGet.Path)
		for _, hd := range h.HTTPGet.HTTPHeaders {
			p.Headers = append(p.Headers, wire.ProbeHeader{Name: hd.Name, Value: hd.Value})
		}
	case h.GRPC != nil:
		port = intstr.FromInt32(h.GRPC.Port)
		p.Kind, p.Path = wire.ProbeGRPC, "/grpc.health.v1.Health/Check"
	case h.TCPSocket != nil:
		port = h.TCPSocket.Port
		p.Kind = wire.ProbeTCP
	default:
		return p, false
	}
	p.Port = resolvePort(port, c, all)
	return p, p.Port > 0 && p.Port < 65536
}

// requestTarget is the target the kubelet's request line carries for an httpGet path: it parses
// the path as a URL, sets its own scheme and host, and sends the result's request URI (so "" and
// "healthz" are "/" and "/healthz", and what needs escaping is escaped).
func requestTarget(path string) string {
	u, err := url.Parse(path)
	if err != nil {
		u = &url.URL{Path: path}
	}
	u.Scheme, u.Host = "http", "pod:1"
	sent, err := url.Parse(u.String())
	if err != nil {
		return "/"
	}
	return sent.RequestURI()
}

func resolvePort(p intstr.IntOrString, c *corev1.Container, all []corev1.Container) int {
	if p.Type == intstr.Int {
		return int(p.IntVal)
	}
	if n, err := strconv.Atoi(p.StrVal); err == nil {
		return n
	}
	search := all
	if c != nil {
		search = []corev1.Container{*c}
	}
	for _, sc := range search {
		for _, cp := range sc.Ports {
			if cp.Name == p.StrVal {
				return int(cp.ContainerPort)
			}
		}
	}
	return 0
}

// wireProbes is what the agent is sent; nil when the pod declares no probe on a port.
func wireProbes(declared []declaredProbe, sources []string) *wire.Probes {
	if len(declared) == 0 {
		return nil
	}
	p := &wire.Probes{Sources: sources}
	seen := map[string]bool{}
	for _, d := range declared {
		key := fmt.Sprintf("%+v", d.Probe)
		if !seen[key] {
			seen[key] = true
			p.Declared = append(p.Declared, d.Probe)
		}
	}
	return p
}

// PodProbes are the pod's probes for the agent (wire.StealSpec and wire.MirrorSpec's Probes), nil
// when it declares none; an Istio pod whose prober list does not parse is an error.
func PodProbes(pod *corev1.Pod) (*wire.Probes, error) {
	declared, sources, err := podProbes(pod)
	if err != nil {
		return nil, err
	}
	return wireProbes(declared, sources), nil
}

// probeWarnings names the probes on stolen ports that --steal-probes takes from the app (probes
// stay with the app otherwise): with a filter, the HTTP and gRPC probes it matches (a filtered
// steal leaves what is not HTTP to the app), without one every probe. A stolen probe answered by a
// laptop, or not at all, restarts or unreadies the pod.
func probeWarnings(declared []declaredProbe, ports map[int]bool, stealProbes bool, match func(method, path string, headers []string) bool) []string {
	if !stealProbes {
		return nil
	}
	var out []string
	for _, d := range declared {
		if !ports[d.Probe.Port] {
			continue
		}
		if match != nil {
			method, headers, ok := probeRequest(d.Probe)
			if !ok || !match(method, d.Probe.Path, headers) {
				continue
			}
		}
		out = append(out, fmt.Sprintf("--steal-probes takes the %s probe (%s) of container %q (port %d) from the app; if your process does not answer it, the kubelet restarts or unreadies the pod", d.Which, d.Probe.Kind, d.Container, d.Probe.Port))
	}
	return out
}

// probeRequest is the request the kubelet sends for an HTTP or gRPC probe, as a filter sees it: its
// own User-Agent and Accept unless the probe's headers replace them.
func probeRequest(p wire.Probe) (method string, headers []string, ok bool) {
	switch p.Kind {
	case wire.ProbeHTTP:
		has := func(name string) bool {
			for _, h := range p.Headers {
				if strings.EqualFold(h.Name, name) {
					return true
				}
			}
			return false
		}
		if !has("User-Agent") {
			headers = append(headers, "User-Agent: kube-probe/1.33")
		}
		if !has("Accept") {
			headers = append(headers, "Accept: */*")
		}
		for _, h := range p.Headers {
			headers = append(headers, h.Name+": "+h.Value)
		}
		return "GET", headers, true
	case wire.ProbeGRPC:
		return "POST", []string{"User-Agent: kube-probe/1.33", "Content-Type: application/grpc"}, true
	}
	return "", nil, false
}

// passedByAddress are the lines said at start for each stolen port with a tcpSocket or HTTPS probe:
// the agent cannot read those, so it passes every connection from the kubelet's addresses to the
// port to the app, and other clients from those addresses are not stolen there either.
func passedByAddress(declared []declaredProbe, ports map[int]bool, sources []string) []string {
	byPort := map[int][]string{}
	for _, d := range declared {
		if !ports[d.Probe.Port] || (d.Probe.Kind != wire.ProbeTCP && d.Probe.Kind != wire.ProbeHTTPS) {
			continue
		}
		byPort[d.Probe.Port] = append(byPort[d.Probe.Port], fmt.Sprintf("%s %s probe of container %q", d.Probe.Kind, d.Which, d.Container))
	}
	var portList []int
	for p := range byPort {
		portList = append(portList, p)
	}
	sort.Ints(portList)
	from := "the node's addresses"
	if len(sources) > 0 {
		from = "the node's addresses (" + strings.Join(sources, ", ") + ")"
	}
	var out []string
	for _, p := range portList {
		out = append(out, fmt.Sprintf("port %d: connections from %s go to the app, not stolen, for the %s (the agent cannot read it); other clients from those addresses to port %d are not stolen either", p, from, strings.Join(byPort[p], ", "), p))
	}
	return out
}
