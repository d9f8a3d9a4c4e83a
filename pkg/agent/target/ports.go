package target

import (
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
)

// PortSpec is one --port REMOTE[:LOCAL]. Remote is a number or a port name until resolved against the
// target; Port is then the pod's port.
type PortSpec struct {
	Remote string
	Local  int
	Port   int
}

// ParsePortSpec parses REMOTE[:LOCAL]; LOCAL defaults to REMOTE when REMOTE is a number.
func ParsePortSpec(s string) (PortSpec, error) {
	remote, local, hasLocal := strings.Cut(s, ":")
	if remote == "" {
		return PortSpec{}, fmt.Errorf("--port %q: REMOTE is empty; use REMOTE[:LOCAL], e.g. 80 or 80:8080", s)
	}
	ps := PortSpec{Remote: remote}
	if n, err := strconv.Atoi(remote); err == nil {
		if n < 1 || n > 65535 {
			return PortSpec{}, fmt.Errorf("--port %q: port %d is out of range 1-65535", s, n)
		}
		ps.Port, ps.Local = n, n
	} else if errs := validation.IsValidPortName(remote); len(errs) > 0 {
		return PortSpec{}, fmt.Errorf("--port %q: %q is neither a port number nor a port name", s, remote)
	}
	if hasLocal {
		n, err := strconv.Atoi(local)
		if err != nil || n < 1 || n > 65535 {
			return PortSpec{}, fmt.Errorf("--port %q: LOCAL must be a port number from 1 to 65535", s)
		}
		ps.Local = n
	}
	if ps.Local == 0 {
		return PortSpec{}, fmt.Errorf("--port %q: a named port needs a LOCAL port, e.g. %s:8080", s, remote)
	}
	return ps, nil
}

// ResolvePorts turns each spec's REMOTE into the pod's port, as kubectl port-forward does: through the
// Service's targetPort for a Service target, through the container's named ports otherwise. It returns
// warnings for ports the container does not declare: an undeclared port may still be served.
func ResolvePorts(t *Target, specs []PortSpec) ([]PortSpec, []string, error) {
	out := make([]PortSpec, len(specs))
	var warnings []string
	seen := map[int]string{}
	for i, s := range specs {
		port, err := resolveOne(t, s.Remote)
		if err != nil {
			return nil, nil, err
		}
		s.Port = port
		if prev, ok := seen[port]; ok {
			return nil, nil, fmt.Errorf("--port %q and --port %q both name the pod's port %d", prev, s.Remote, port)
		}
		seen[port] = s.Remote
		out[i] = s
		if !declares(t.Pod, t.Container, port) {
			warnings = append(warnings, fmt.Sprintf("container %q does not declare port %d; using it anyway", t.Container, port))
		}
	}
	return out, warnings, nil
}

func resolveOne(t *Target, remote string) (int, error) {
	if t.Service != nil {
		sp, err := servicePort(t.Service, remote)
		if err != nil {
			return 0, err
		}
		return targetPort(t.Pod, sp)
	}
	if n, err := strconv.Atoi(remote); err == nil {
		return n, nil
	}
	for _, c := range t.Pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == remote && p.Protocol != corev1.ProtocolUDP && p.Protocol != corev1.ProtocolSCTP {
				return int(p.ContainerPort), nil
			}
		}
	}
	return 0, fmt.Errorf("--port %q: pod %q has no TCP container port named %q", remote, t.Pod.Name, remote)
}

func servicePort(svc *corev1.Service, remote string) (corev1.ServicePort, error) {
	n, numErr := strconv.Atoi(remote)
	var names []string
	for _, p := range svc.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue
		}
		if (numErr == nil && int(p.Port) == n) || (numErr != nil && p.Name == remote) {
			return p, nil
		}
		names = append(names, portLabel(p))
	}
	return corev1.ServicePort{}, fmt.Errorf("--port %q: service %q has no TCP port %q; its TCP ports are %s", remote, svc.Name, remote, strings.Join(names, ", "))
}

func portLabel(p corev1.ServicePort) string {
	if p.Name != "" {
		return fmt.Sprintf("%d (%s)", p.Port, p.Name)
	}
	return strconv.Itoa(int(p.Port))
}

// targetPort is the pod port a Service port sends to; a named targetPort is looked up in the pod's
// containers, as the endpoints controller does.
func targetPort(pod *corev1.Pod, sp corev1.ServicePort) (int, error) {
	switch {
	case sp.TargetPort.Type == intstr.Int && sp.TargetPort.IntVal == 0:
		return int(sp.Port), nil
	case sp.TargetPort.Type == intstr.Int:
		return int(sp.TargetPort.IntVal), nil
	}
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == sp.TargetPort.StrVal {
				return int(p.ContainerPort), nil
			}
		}
	}
	return 0, fmt.Errorf("service port %d targets port %q, which pod %q does not name", sp.Port, sp.TargetPort.StrVal, pod.Name)
}

func declares(pod *corev1.Pod, container string, port int) bool {
	for _, c := range pod.Spec.Containers {
		if c.Name != container {
			continue
		}
		for _, p := range c.Ports {
			if int(p.ContainerPort) == port {
				return true
			}
		}
	}
	return false
}
