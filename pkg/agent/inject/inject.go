package inject

import (
	"context"
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/client-go/kubernetes"
)

// Inject adds container to pod through the pods/ephemeralcontainers subresource and returns the pod as
// the server stored it.
//
// It sends a strategic merge patch computed from the pod's JSON before and after, as kubectl debug does,
// rather than UpdateEphemeralContainers: an update carries the pod's resourceVersion and fails with a
// conflict whenever anything else touched the pod since we read it (status updates do, often), whereas
// the patch merges by container name and adds exactly one entry, whatever else changed. The RBAC verb is
// therefore "patch", which the preflight checks.
func Inject(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, container corev1.EphemeralContainer) (*corev1.Pod, error) {
	return patch(ctx, client, pod, container, metav1.PatchOptions{})
}

// DryRun sends exactly the patch Inject would send, with dryRun=All: the API server runs
// authorization, PodSecurity and the admission webhooks that support dry run on it, and stores
// nothing. A webhook that does not support dry run fails the request (see IsDryRunUnsupported).
func DryRun(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, container corev1.EphemeralContainer) (*corev1.Pod, error) {
	return patch(ctx, client, pod, container, metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}})
}

func patch(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, container corev1.EphemeralContainer, opts metav1.PatchOptions) (*corev1.Pod, error) {
	before, err := json.Marshal(pod)
	if err != nil {
		return nil, fmt.Errorf("encoding pod %q: %w", pod.Namespace+"/"+pod.Name, err)
	}
	modified := pod.DeepCopy()
	modified.Spec.EphemeralContainers = append(modified.Spec.EphemeralContainers, container)
	after, err := json.Marshal(modified)
	if err != nil {
		return nil, fmt.Errorf("encoding pod %q with agent %q: %w", pod.Namespace+"/"+pod.Name, container.Name, err)
	}
	data, err := strategicpatch.CreateTwoWayMergePatch(before, after, corev1.Pod{})
	if err != nil {
		return nil, fmt.Errorf("building the patch that adds agent %q: %w", container.Name, err)
	}

	result, err := client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, data, opts, "ephemeralcontainers")
	if err != nil {
		return nil, explainPatchError(err, pod, &container)
	}
	return result, nil
}
