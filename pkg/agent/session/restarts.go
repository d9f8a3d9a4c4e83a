package session

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
)

// restarted lists, one line each, the containers of the pod that restarted between two looks at it.
// The agent has a PID namespace of its own, so an app's restart does not end the session; the user
// still needs to hear of it, since the app they are working against just lost its state.
func restarted(before, after *corev1.Pod) []string {
	was := map[string]int32{}
	for _, s := range statuses(before) {
		was[s.Name] = s.RestartCount
	}
	var lines []string
	for _, s := range statuses(after) {
		n, seen := was[s.Name]
		if !seen || s.RestartCount <= n {
			continue
		}
		why := "exit code unknown"
		if t := s.LastTerminationState.Terminated; t != nil {
			why = fmt.Sprintf("exit code %d", t.ExitCode)
			if t.Reason == "OOMKilled" {
				why += ", OOMKilled"
			}
		}
		lines = append(lines, fmt.Sprintf("container %q restarted (%s); the session goes on", s.Name, why))
	}
	return lines
}

// statuses are the pod's containers that can restart under a session: regular ones and sidecars
// (restartable init containers). Ephemeral containers, the agents, never restart.
func statuses(p *corev1.Pod) []corev1.ContainerStatus {
	return append(append([]corev1.ContainerStatus(nil), p.Status.ContainerStatuses...), p.Status.InitContainerStatuses...)
}

// follow reports restarts from one watch until it ends, and returns the pod as last seen and the
// version to watch from next.
func follow(ctx context.Context, w watch.Interface, name string, last *corev1.Pod, report func(string)) (*corev1.Pod, string) {
	rv := last.ResourceVersion
	for {
		select {
		case <-ctx.Done():
			return last, rv
		case ev, open := <-w.ResultChan():
			if !open {
				return last, rv
			}
			switch p, ok := ev.Object.(*corev1.Pod); {
			case ev.Type == watch.Error:
				// Mostly 410 Gone: our version is too old; start again from the current state.
				rv = ""
			case ok && p.Name == name:
				for _, l := range restarted(last, p) {
					report(l)
				}
				last, rv = p, p.ResourceVersion
			}
		}
	}
}

// restartRetry spaces the watch's reconnections; the apiserver ends watches every few minutes.
const restartRetry = time.Second

// watchRestarts reports every container restart of pod until ctx ends. It is best effort: a user who
// may not watch pods (reusing an agent needs no watch) gets no reports, and the session goes on.
func watchRestarts(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, report func(string)) {
	last := pod
	rv := pod.ResourceVersion
	sel := fields.OneTermEqualSelector("metadata.name", pod.Name).String()
	for {
		w, err := client.CoreV1().Pods(pod.Namespace).Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: rv})
		if err != nil {
			if ctx.Err() == nil {
				klog.V(2).InfoS("not watching the pod for container restarts", "pod", klog.KObj(pod), "err", err)
			}
			return
		}
		last, rv = follow(ctx, w, pod.Name, last, report)
		w.Stop()
		t := time.NewTimer(restartRetry)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
