package inject

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// FindReusable looks for a running agent in pod that can serve spec, so that repeated sessions do not
// pile up ephemeral containers (they can never be removed from the pod spec). It returns the agent's
// name and true when one fits. Otherwise why says, for the user, why a new agent is added instead; it is
// empty when the pod has no running agent at all.
//
// An agent fits when it runs the wanted image (image tags carry the plugin version, so the protocol
// matches) and was given at least the capabilities spec needs. The newest fitting agent wins: it has
// the most idle time left.
func FindReusable(pod *corev1.Pod, spec AgentSpec) (name string, ok bool, why string) {
	want := spec.Capabilities
	if spec.Restricted {
		want = 0
	}
	running := map[string]bool{}
	for _, s := range pod.Status.EphemeralContainerStatuses {
		if s.State.Running != nil {
			running[s.Name] = true
		}
	}

	var lacking, otherImage string
	for i := len(pod.Spec.EphemeralContainers) - 1; i >= 0; i-- {
		c := pod.Spec.EphemeralContainers[i]
		if !strings.HasPrefix(c.Name, NamePrefix) || !running[c.Name] {
			continue
		}
		if c.Image != spec.Image {
			if otherImage == "" {
				otherImage = fmt.Sprintf("the running agent %s uses image %q, not %q; adding another", c.Name, c.Image, spec.Image)
			}
			continue
		}
		missing := capabilitiesOf(c.SecurityContext).Missing(want)
		if missing == 0 {
			return c.Name, true, ""
		}
		if lacking == "" {
			lacking = fmt.Sprintf("the running agent %s lacks %s; adding another (ephemeral containers cannot change)", c.Name, missing)
		}
	}
	if lacking != "" {
		return "", false, lacking
	}
	return "", false, otherImage
}

// Privileged reports whether an agent for spec holds a capability. Reusing such an agent lends the
// capability to the session, so it must take the permission that adding one takes
// (pods/ephemeralcontainers): anyone with pods/exec can otherwise use a leftover NET_ADMIN agent.
func (s AgentSpec) Privileged() bool {
	return !s.Restricted && s.Capabilities != 0
}
