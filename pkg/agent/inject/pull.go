package inject

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// ImagePullError is an agent whose image the node cannot pull, with what to do about it.
type ImagePullError struct {
	Image string
	// Reason and Message are the kubelet's waiting state (ErrImagePull, ImagePullBackOff, ...).
	Reason, Message string
	// Pod is namespace/name; PullSecrets are the names of its imagePullSecrets, which are the only
	// credentials an ephemeral container's pull gets besides the node's own.
	Pod         string
	PullSecrets []string
}

func newImagePullError(pod *corev1.Pod, image string, w *corev1.ContainerStateWaiting) *ImagePullError {
	e := &ImagePullError{Image: image, Reason: w.Reason, Message: w.Message, Pod: pod.Namespace + "/" + pod.Name}
	for _, s := range pod.Spec.ImagePullSecrets {
		e.PullSecrets = append(e.PullSecrets, s.Name)
	}
	return e
}

func (e *ImagePullError) Error() string {
	return fmt.Sprintf("agent image %q cannot be pulled (%s)%s; %s", e.Image, e.Reason, suffix(e.Message), e.fix())
}

// Kinds of pull failure, told apart by the registry's answer in the kubelet's message.
const (
	pullDenied   = "denied"
	pullNotFound = "not found"
)

// deniedMarks are how containerd and CRI-O relay a registry's 401 or 403 (and Docker Hub's wording for
// a private or missing repository); notFoundMarks their 404s.
var (
	deniedMarks   = []string{"401 unauthorized", "403 forbidden", "unauthorized", "forbidden", "pull access denied", "no basic auth credentials", "authentication required", "access denied", "denied:"}
	notFoundMarks = []string{"404 not found", "manifest unknown", "name unknown", ": not found", "not found:"}
)

// pullFailure sorts a pull error message: denied (credentials), not found, or "" (anything else:
// the network, TLS, a registry that is down).
func pullFailure(msg string) string {
	m := strings.ToLower(msg)
	for _, s := range deniedMarks {
		if strings.Contains(m, s) {
			return pullDenied
		}
	}
	for _, s := range notFoundMarks {
		if strings.Contains(m, s) {
			return pullNotFound
		}
	}
	return ""
}

// fix says what to do, in one clause.
func (e *ImagePullError) fix() string {
	switch e.Reason {
	case reasonInvalidImageName:
		return "the node refuses the reference: name a valid one with --agent-image or --agent-registry"
	case reasonErrImageNeverPull:
		return "the pull policy is Never and the node does not have the image: load it onto the node or use --image-pull-policy IfNotPresent"
	}
	mirror := fmt.Sprintf("mirror it, digest kept, into a registry the cluster can pull from (crane copy %q REGISTRY/PATH/%s) and use --agent-registry REGISTRY/PATH or --agent-image", e.Image, mirrorName(e.Image))
	switch pullFailure(e.Message) {
	case pullDenied:
		creds := fmt.Sprintf("pod %q has none", e.Pod)
		if len(e.PullSecrets) > 0 {
			q := make([]string, len(e.PullSecrets))
			for i, s := range e.PullSecrets {
				q[i] = fmt.Sprintf("%q", s)
			}
			creds = fmt.Sprintf("pod %q has %s", e.Pod, strings.Join(q, ", "))
		}
		return fmt.Sprintf("the registry refused the credentials: an ephemeral container is pulled with its pod's imagePullSecrets (%s) or the node's own credentials, which cannot be changed for it; %s", creds, mirror)
	case pullNotFound:
		return fmt.Sprintf("the registry has no image %q: push it there, or name one the cluster can pull with --agent-image or --agent-registry", e.Image)
	}
	return "check the image name and that the node can reach its registry, or " + mirror
}

// mirrorName is the image's last path element with its tag, as a mirror would name it:
// ghcr.io/trafficlab/trafficlab-agent:v1@sha256:... gives trafficlab-agent:v1.
func mirrorName(image string) string {
	name, _, _ := strings.Cut(image, "@")
	if i := strings.LastIndex(name, "/"); i >= 0 {
		name = name[i+1:]
	}
	return name
}
