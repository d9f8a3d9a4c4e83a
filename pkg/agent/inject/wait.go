package inject

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

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

// WaitOptions tune WaitRunning.
type WaitOptions struct {
	// PullGrace is how long an image pull failure that was there when the wait began is waited on
	// before it fails the wait, so that the kubelet's retry (its image back-off starts at 10s) can
	// still start the agent. A pull that fails while the wait watches (the kubelet's retry) fails it
	// at once. Zero fails at the first pull failure: right for an agent just added, whose first pull
	// is the one that failed.
	PullGrace time.Duration
	// Progress is told each new waiting state of the agent but ContainerCreating, as kubectl shows it
	// ("ImagePullBackOff: Back-off pulling image ..."); nil tells nothing.
	Progress func(state string)
}

// WaitRunning watches the pod until the agent container runs and returns the pod as last seen. It fails
// as soon as the agent cannot start (image pull, after opts.PullGrace, container config or runtime
// errors), has exited, or the pod is deleted or stops running. The caller bounds the wait through ctx.
func WaitRunning(ctx context.Context, client kubernetes.Interface, namespace, podName, containerName string, opts WaitOptions) (*corev1.Pod, error) {
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

	// A pull failure that was there when the wait began (the list's state) is held back for the
	// grace; the grace's timer ends the wait with it when no event comes in the meantime (the kubelet
	// updates nothing during its back-off). The timer starts only once the failure is held, so a
	// slow list or a busy machine cannot use the grace up before the state it is meant for is read,
	// and mu keeps the timer and the event handler from crossing.
	var (
		mu         sync.Mutex
		held       *ImagePullError
		expired    bool
		graceTimer *time.Timer
	)
	wctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		if graceTimer != nil {
			graceTimer.Stop()
		}
	}()
	first := true

	last, lastWaiting, lastReason := "no status yet", "", ""
	ev, err := watchtools.UntilWithSync(wctx, lw, &corev1.Pod{}, nil, func(ev watch.Event) (bool, error) {
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
		reason, state := "", ""
		if w := waitingState(pod, containerName); w != nil {
			reason, state = w.Reason, w.Reason+suffix(w.Message)
		}
		// A retry that failed while we watched: the state turned to ErrImagePull from another one.
		freshFailure := reason == reasonErrImagePull && lastReason != "" && lastReason != reasonErrImagePull
		lastReason = reason
		var pe *ImagePullError
		mu.Lock()
		held = nil
		if errors.As(err, &pe) && !freshFailure && opts.PullGrace > 0 {
			switch {
			case first:
				held, err = pe, nil
				graceTimer = time.AfterFunc(opts.PullGrace, func() {
					mu.Lock()
					expired = true
					h := held
					mu.Unlock()
					if h != nil {
						stop(h)
					}
				})
			case graceTimer != nil && !expired:
				held, err = pe, nil
			}
		}
		mu.Unlock()
		first = false
		// Only the states waited through are told: a failure is the error itself.
		if err == nil && !done && state != lastWaiting && reason != "" && reason != "ContainerCreating" && opts.Progress != nil {
			opts.Progress(state)
		}
		lastWaiting = state
		return done, err
	})
	if err != nil {
		var pe *ImagePullError
		if cause := context.Cause(wctx); errors.As(cause, &pe) {
			return nil, pe
		}
		if ctx.Err() != nil || errors.Is(err, watchtools.ErrWatchClosed) {
			return nil, fmt.Errorf("waiting for agent %q in pod %q (last seen: %s): %w", containerName, ref, last, err)
		}
		return nil, err
	}
	pod, _ := ev.Object.(*corev1.Pod)
	return pod, nil
}

// waitingState is the agent's waiting state, or nil.
func waitingState(pod *corev1.Pod, name string) *corev1.ContainerStateWaiting {
	for i := range pod.Status.EphemeralContainerStatuses {
		if s := &pod.Status.EphemeralContainerStatuses[i]; s.Name == name {
			return s.State.Waiting
		}
	}
	return nil
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
			return false, desc, newImagePullError(pod, imageOf(pod, name, status), w)
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
