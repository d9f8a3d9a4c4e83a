package inject

import (
	"context"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
)

// Waiting reasons after which the kubelet will not start the agent without someone changing something,
// so waiting longer only hides the cause.
const (
	reasonErrImagePull       = "ErrImagePull"
	reasonImagePullBackOff   = "ImagePullBackOff"
	reasonInvalidImageName   = "InvalidImageName"
	reasonErrImageNeverPull  = "ErrImageNeverPull"
	reasonCreateConfigError  = "CreateContainerConfigError"
	reasonCreateContainerErr = "CreateContainerError"
	reasonRunContainerError  = "RunContainerError"
)

// WaitRunning watches the pod until the agent container runs and returns the pod as last seen. It fails
// as soon as the agent cannot start (image pull, container config or runtime errors), has exited, or the
// pod is deleted or stops running. The caller bounds the wait through ctx.
func WaitRunning(ctx context.Context, client kubernetes.Interface, namespace, podName, containerName string) (*corev1.Pod, error) {
	ref := namespace + "/" + podName
	// A field selector on the name keeps the watch to this one pod, as kubectl debug's waitForContainer
	// does; UntilWithSync lists first, so a container that is already running is seen at once.
	fieldSelector := fields.OneTermEqualSelector("metadata.name", podName).String()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, options metav1.ListOptions) (runtime.Object, error) {
			options.FieldSelector = fieldSelector
			return client.CoreV1().Pods(namespace).List(ctx, options)
		},
		WatchFuncWithContext: func(ctx context.Context, options metav1.ListOptions) (watch.Interface, error) {
			options.FieldSelector = fieldSelector
			return client.CoreV1().Pods(namespace).Watch(ctx, options)
		},
	}

	last := "no status yet"
	ev, err := watchtools.UntilWithSync(ctx, lw, &corev1.Pod{}, nil, func(ev watch.Event) (bool, error) {
		pod, ok := ev.Object.(*corev1.Pod)
		if ok && pod.Name != podName {
			// The server filters by the field selector; this only guards against a client that does not.
			return false, nil
		}
		if ev.Type == watch.Deleted {
			// A delete may carry a tombstone instead of the pod, hence checked before the type.
			return false, fmt.Errorf("pod %q was deleted while waiting for agent %q", ref, containerName)
		}
		if !ok {
			return false, fmt.Errorf("watching pod %q: unexpected object %T", ref, ev.Object)
		}
		done, desc, err := agentState(pod, containerName)
		if desc != "" {
			last = desc
		}
		return done, err
	})
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, watchtools.ErrWatchClosed) {
			return nil, fmt.Errorf("waiting for agent %q in pod %q (last seen: %s): %w", containerName, ref, last, err)
		}
		return nil, err
	}
	pod, _ := ev.Object.(*corev1.Pod)
	return pod, nil
}

// agentState says whether the agent runs, or why it never will; desc describes the state for a timeout.
func agentState(pod *corev1.Pod, name string) (done bool, desc string, err error) {
	ref := pod.Namespace + "/" + pod.Name
	if pod.DeletionTimestamp != nil {
		return false, "", fmt.Errorf("pod %q is being deleted; the agent %q cannot start", ref, name)
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return false, "", fmt.Errorf("pod %q stopped running (phase %s) before agent %q started", ref, pod.Status.Phase, name)
	}
	var status *corev1.ContainerStatus
	for i := range pod.Status.EphemeralContainerStatuses {
		if pod.Status.EphemeralContainerStatuses[i].Name == name {
			status = &pod.Status.EphemeralContainerStatuses[i]
		}
	}
	if status == nil {
		return false, "", nil
	}
	st := status.State
	switch {
	case st.Running != nil:
		return true, "running", nil
	case st.Terminated != nil:
		t := st.Terminated
		return false, "", fmt.Errorf("agent %q in pod %q exited with code %d (%s)%s", name, ref, t.ExitCode, orUnknown(t.Reason), suffix(t.Message))
	case st.Waiting != nil:
		w := st.Waiting
		desc = "waiting: " + orUnknown(w.Reason)
		switch w.Reason {
		case reasonErrImagePull, reasonImagePullBackOff, reasonInvalidImageName, reasonErrImageNeverPull:
			return false, desc, fmt.Errorf("agent image %q cannot be pulled (%s)%s; check the image name and that the node can reach its registry",
				imageOf(pod, name, status), w.Reason, suffix(w.Message))
		case reasonCreateConfigError, reasonCreateContainerErr, reasonRunContainerError:
			return false, desc, fmt.Errorf("agent %q in pod %q cannot start (%s)%s", name, ref, w.Reason, suffix(w.Message))
		}
		return false, desc, nil
	}
	return false, "", nil
}

// imageOf prefers the image the pod spec asked for: the status may report a resolved digest instead.
func imageOf(pod *corev1.Pod, name string, status *corev1.ContainerStatus) string {
	for _, c := range pod.Spec.EphemeralContainers {
		if c.Name == name {
			return c.Image
		}
	}
	return status.Image
}

func orUnknown(s string) string {
	if s == "" {
		return "no reason given"
	}
	return s
}

// suffix renders a runtime message as ": msg" on one line; with FallbackToLogsOnError the message may be
// the last lines of the agent's log.
func suffix(msg string) string {
	msg = strings.Join(strings.Fields(strings.ReplaceAll(msg, "\n", " | ")), " ")
	msg = strings.Trim(msg, " |")
	if msg == "" {
		return ""
	}
	const maxLen = 400
	if len(msg) > maxLen {
		msg = "…" + msg[len(msg)-maxLen:]
	}
	return ": " + msg
}
