package inject

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Reusable is an agent already in the pod that a session can use instead of adding another.
type Reusable struct {
	Name string
	// Waiting is set when the agent does not run yet because its image could not be pulled and the
	// kubelet retries the pull: its state as kubectl shows it ("ImagePullBackOff: Back-off pulling
	// image ..."). The session waits on it (WaitOptions.PullGrace) rather than adding a second
	// container that would wait on the same pull: ephemeral containers can never be removed, and each
	// one the kubelet cannot start stays in the pod for good.
	Waiting string
}

// FindReusable looks for an agent in pod that can serve spec, so that repeated sessions do not pile up
// ephemeral containers (they can never be removed from the pod spec). It returns the agent and true
// when one fits. Otherwise why says, for the user, why a new agent is added instead; it is empty when
// the pod has no agent to reuse at all.
//
// An agent fits when it runs the wanted image (image tags carry the plugin version, so the protocol
// matches) and was given at least the capabilities spec needs. The newest fitting agent wins: it has
// the most idle time left. A running agent wins over one waiting on its image pull; an agent waiting
// on its pull fits only with the pull policy spec asks for, since another policy might pull where it
// cannot (or not pull where it has to).
func FindReusable(pod *corev1.Pod, spec AgentSpec) (agent Reusable, ok bool, why string) {
	want := spec.Capabilities
	if spec.Restricted {
		want = 0
	}
	running := map[string]bool{}
	pulling := map[string]string{}
	for _, s := range pod.Status.EphemeralContainerStatuses {
		switch {
		case s.State.Running != nil:
			running[s.Name] = true
		case waitingOnPull(s.State.Waiting):
			pulling[s.Name] = s.State.Waiting.Reason + suffix(s.State.Waiting.Message)
		}
	}

	var lacking, otherImage, otherPolicy string
	var waiting *Reusable
	for i := len(pod.Spec.EphemeralContainers) - 1; i >= 0; i-- {
		c := pod.Spec.EphemeralContainers[i]
		state, isPulling := pulling[c.Name]
		if !strings.HasPrefix(c.Name, NamePrefix) || !running[c.Name] && !isPulling {
			continue
		}
		what := "running agent"
		if isPulling {
			what = "agent waiting on its image pull"
		}
		if c.Image != spec.Image {
			if otherImage == "" {
				otherImage = fmt.Sprintf("the %s %s uses image %q, not %q; adding another", what, c.Name, c.Image, spec.Image)
			}
			continue
		}
		missing := capabilitiesOf(c.SecurityContext).Missing(want)
		if missing != 0 {
			if lacking == "" {
				lacking = fmt.Sprintf("the %s %s lacks %s; adding another (ephemeral containers cannot change)", what, c.Name, missing)
			}
			continue
		}
		if !isPulling {
			return Reusable{Name: c.Name}, true, ""
		}
		if spec.PullPolicy != "" && c.ImagePullPolicy != spec.PullPolicy {
			if otherPolicy == "" {
				otherPolicy = fmt.Sprintf("the %s %s has pull policy %q, not %q; adding another", what, c.Name, c.ImagePullPolicy, spec.PullPolicy)
			}
			continue
		}
		if waiting == nil {
			waiting = &Reusable{Name: c.Name, Waiting: state}
		}
	}
	switch {
	case waiting != nil:
		return *waiting, true, ""
	case lacking != "":
		return Reusable{}, false, lacking
	case otherPolicy != "":
		return Reusable{}, false, otherPolicy
	}
	return Reusable{}, false, otherImage
}

// waitingOnPull reports whether a waiting container is held by its image pull, which the kubelet
// retries with back-off for as long as the pod lives (InvalidImageName and ErrImageNeverPull too: it
// tries again at each sync, and a container added now with the same image would fail the same way).
func waitingOnPull(w *corev1.ContainerStateWaiting) bool {
	if w == nil {
		return false
	}
	switch w.Reason {
	case reasonErrImagePull, reasonImagePullBackOff, reasonInvalidImageName, reasonErrImageNeverPull:
		return true
	}
	return false
}

// Privileged reports whether an agent for spec holds a capability. Reusing such an agent lends the
// capability to the session, so it must take the permission that adding one takes
// (pods/ephemeralcontainers): anyone with pods/exec can otherwise use a leftover NET_ADMIN agent.
func (s AgentSpec) Privileged() bool {
	return !s.Restricted && s.Capabilities != 0
}
