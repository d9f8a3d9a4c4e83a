package target

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/transport"
)

// Pods are every pod TYPE/NAME names in namespace, ready or not (a command that only reads them, such
// as `kubectl trafficlab sessions`, wants them all), or with an empty resource every pod of namespace
// (every namespace when it is empty too).
func Pods(ctx context.Context, client kubernetes.Interface, namespace, resource string) ([]corev1.Pod, error) {
	if resource == "" {
		list, err := client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, explainListError(err, namespace)
		}
		return list.Items, nil
	}
	k, name, err := parseResource(resource)
	if err != nil {
		return nil, err
	}
	info := kinds()[k]
	if k == kindPod {
		pod, err := client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, explainGetError(err, info.gr, namespace)
		}
		return []corev1.Pod{*pod}, nil
	}
	var svc *corev1.Service
	if k == kindService {
		svc, err = client.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, explainGetError(err, info.gr, namespace)
		}
	}
	sel, err := selectorFor(ctx, client, k, namespace, name, svc)
	if err != nil {
		return nil, explainGetError(err, info.gr, namespace)
	}
	list, err := client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, explainListError(err, namespace)
	}
	if len(list.Items) == 0 {
		return nil, fmt.Errorf("no pod for %s %q in namespace %q (no pod matches selector %q)", info.noun, name, namespace, sel.String())
	}
	return list.Items, nil
}

// PreflightReadSessions checks with SelfSubjectAccessReviews that the user may list the pods of
// namespace (of every namespace when it is empty, as -A asks) and exec into them, which is what
// `kubectl trafficlab sessions` does: it asks each agent over exec. What is missing comes back as one
// *inject.MissingPermissionError.
func PreflightReadSessions(ctx context.Context, client kubernetes.Interface, namespace string, p transport.Protocol) error {
	checks := []check{{alternatives: []inject.Rule{{Resource: "pods", Verbs: []string{"list"}}}}, streamCheck("pods/exec", p)}
	return runChecks(ctx, client, namespace, "", checks)
}
