package inject

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// RunningAgents are the names of pod's agent containers that run now, in the order they were added:
// those that can hold sessions.
func RunningAgents(pod *corev1.Pod) []string {
	running := map[string]bool{}
	for _, s := range pod.Status.EphemeralContainerStatuses {
		if s.State.Running != nil {
			running[s.Name] = true
		}
	}
	var names []string
	for _, c := range pod.Spec.EphemeralContainers {
		if strings.HasPrefix(c.Name, NamePrefix) && running[c.Name] {
			names = append(names, c.Name)
		}
	}
	return names
}
