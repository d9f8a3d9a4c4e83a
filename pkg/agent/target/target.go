// Package target turns what the user named on the command line (TYPE/NAME or a label selector, and
// optionally a container) into one running pod and container the agent can join, and checks before
// anything is changed that the agent can be added there.
package target

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/kubectl/pkg/util/podutils"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
)

// DefaultContainerAnnotation preselects a pod's main container for kubectl and, likewise, for trafficlab.
const DefaultContainerAnnotation = "kubectl.kubernetes.io/default-container"

// osLabel is the well-known node label with the node's operating system.
const osLabel = "kubernetes.io/os"

// Options says what to target.
type Options struct {
	Namespace string
	// Resource is TYPE/NAME (pod, deployment, statefulset, daemonset, replicaset, replicationcontroller,
	// job or service, in any form kubectl accepts) or a bare pod NAME. Exactly one of Resource and
	// Selector is set.
	Resource string
	// Selector is a label selector (-l); the most active ready pod it matches is chosen.
	Selector string
	// OnePod keeps a workload verb (steal, mirror, dump) to one pod of the workload, the most active
	// ready one, as port-forward and exec always do.
	OnePod bool
	// MaxPods is the most ready pods a workload verb covers; more is refused (0: no limit).
	MaxPods int
	// Container is -c; empty picks the default-container annotation, else the first container.
	Container string
	// AllowHostNetwork accepts pods with hostNetwork: true, where the agent works on the node's network.
	AllowHostNetwork bool
}

// SetResource takes TYPE/NAME from a verb's arguments (already checked to be at most one); given
// together with --selector it is refused, since the two name the pod in different ways.
func (o *Options) SetResource(args []string) error {
	if len(args) == 0 {
		return nil
	}
	if o.Selector != "" {
		return fmt.Errorf("give TYPE/NAME %q or --selector %q, not both", args[0], o.Selector)
	}
	o.Resource = args[0]
	return nil
}

// Target is the pod an agent will join, and the container whose ports and probes apply (the agent
// has a PID namespace of its own, so it joins no container's processes).
type Target struct {
	Pod       *corev1.Pod
	Container string
	// Service is set when the target was named as a Service, whose ports a verb may translate.
	Service *corev1.Service
	// Replicas is how many ready pods the name or selector matched; the target is one of them.
	Replicas int
}

// Resolve finds the target and checks it can take an agent. It only reads from the API server.
func Resolve(ctx context.Context, client kubernetes.Interface, o Options) (*Target, error) {
	if (o.Resource == "") == (o.Selector == "") {
		return nil, fmt.Errorf("name exactly one target: TYPE/NAME or --selector")
	}
	f, err := findPod(ctx, client, o)
	if err != nil {
		return nil, err
	}
	return ForPod(ctx, client, f.pod, o, f.svc, f.replicas)
}

// ForPod checks that pod can take an agent and picks its container (-c, else the default): a
// workload's pods each go through it, those that join during a session too. svc and replicas are
// what the name resolved to (Target.Service, Target.Replicas).
func ForPod(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, o Options, svc *corev1.Service, replicas int) (*Target, error) {
	return forPod(ctx, client, pod, o, svc, replicas, false)
}

// ForStartingPod is ForPod for a pod of a workload that is scheduled but not Ready yet (Pending, or
// Running with its containers starting): a workload session adds the agent then, so that the kubelet
// starts it alongside the app's containers (ephemeral containers need not wait for the pod's
// initialization) and the pod joins the moment it is Ready.
func ForStartingPod(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, o Options, svc *corev1.Service) (*Target, error) {
	return forPod(ctx, client, pod, o, svc, 0, true)
}

func forPod(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, o Options, svc *corev1.Service, replicas int, starting bool) (*Target, error) {
	if err := checkPod(ctx, client, pod, o.AllowHostNetwork, starting); err != nil {
		return nil, &PodRefusedError{Err: err}
	}
	container, err := pickContainer(pod, o.Container, starting)
	if err != nil {
		return nil, err
	}
	return &Target{Pod: pod, Container: container, Service: svc, Replicas: replicas}, nil
}

// Starting says a pod of a workload is scheduled and on its way to Ready: ForStartingPod takes it.
func Starting(p *corev1.Pod) bool {
	switch {
	case p.DeletionTimestamp != nil || p.Spec.NodeName == "" || Ready(p):
		return false
	case p.Status.Phase == corev1.PodPending || p.Status.Phase == corev1.PodRunning:
		return true
	}
	return false
}

// Workload is every ready pod a name or selector matches, for the verbs that span a workload (steal,
// mirror, dump): each pod gets its own agent.
type Workload struct {
	// Pods are the ready pods, most active first; with --one-pod, or for a pod named as such, only one.
	Pods []*corev1.Pod
	// Service is set when the workload was named as a Service.
	Service *corev1.Service
	// Selector selects the workload's pods, for the watch that joins the pods that become ready later
	// and lets go of those that leave; nil when the session keeps to one pod.
	Selector labels.Selector
	// ResourceVersion is the version of the pod list, where that watch starts.
	ResourceVersion string
}

// ResolveWorkload finds every ready pod of the target, refusing more than o.MaxPods before anything
// is changed. It only reads from the API server.
func ResolveWorkload(ctx context.Context, client kubernetes.Interface, o Options) (*Workload, error) {
	if (o.Resource == "") == (o.Selector == "") {
		return nil, fmt.Errorf("name exactly one target: TYPE/NAME or --selector")
	}
	f, err := findPod(ctx, client, o)
	if err != nil {
		return nil, err
	}
	if f.sel == nil || o.OnePod {
		return &Workload{Pods: f.ready[:1], Service: f.svc}, nil
	}
	if o.MaxPods > 0 && len(f.ready) > o.MaxPods {
		return nil, fmt.Errorf("%s has %d ready pods, more than --max-pods %d: raise --max-pods, or pass --one-pod to use one of them", o.Named(), len(f.ready), o.MaxPods)
	}
	return &Workload{Pods: f.ready, Service: f.svc, Selector: f.sel, ResourceVersion: f.rv}, nil
}

// Ready says whether a pod of a workload is one a session covers: running, ready and not terminating
// (an agent in a pod that is starting or stopping would lose its session with the pod).
func Ready(p *corev1.Pod) bool {
	return p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && podutils.IsPodReady(p)
}

// PodRefusedError is a pod that was found but that no agent can join (terminating, not running, Windows,
// hostPID, hostNetwork without --allow-host-network): every verb is refused there, whereas the other
// errors of Resolve are about the name or the user's access.
type PodRefusedError struct{ Err error }

func (e *PodRefusedError) Error() string { return e.Err.Error() }
func (e *PodRefusedError) Unwrap() error { return e.Err }

type found struct {
	pod      *corev1.Pod
	svc      *corev1.Service
	replicas int
	// ready are the ready pods, most active first (pod is the first); sel selects the workload's pods
	// (nil for a pod named as such), and rv is the version of the list they came from.
	ready []*corev1.Pod
	sel   labels.Selector
	rv    string
}

func findPod(ctx context.Context, client kubernetes.Interface, o Options) (found, error) {
	ns := o.Namespace
	if o.Selector != "" {
		sel, err := labels.Parse(o.Selector)
		if err != nil {
			return found{}, fmt.Errorf("invalid selector %q: %w", o.Selector, err)
		}
		return readyPod(ctx, client, ns, sel, fmt.Sprintf("selector %q", o.Selector))
	}

	k, name, err := parseResource(o.Resource)
	if err != nil {
		return found{}, err
	}
	info := kinds()[k]
	if k == kindPod {
		pod, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return found{}, explainGetError(err, info.gr, ns)
		}
		return found{pod: pod, replicas: 1, ready: []*corev1.Pod{pod}}, nil
	}
	var svc *corev1.Service
	if k == kindService {
		svc, err = client.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return found{}, explainGetError(err, info.gr, ns)
		}
	}
	sel, err := selectorFor(ctx, client, k, ns, name, svc)
	if err != nil {
		return found{}, explainGetError(err, info.gr, ns)
	}
	f, err := readyPod(ctx, client, ns, sel, fmt.Sprintf("%s %q", info.noun, name))
	f.svc = svc
	return f, err
}

// selectorFor reads the label selector of the pods a workload or service owns, as kubectl's
// polymorphichelpers.SelectorsForObject does.
func selectorFor(ctx context.Context, client kubernetes.Interface, k kind, ns, name string, svc *corev1.Service) (labels.Selector, error) {
	get := metav1.GetOptions{}
	var ls *metav1.LabelSelector
	switch k {
	case kindDeployment:
		o, err := client.AppsV1().Deployments(ns).Get(ctx, name, get)
		if err != nil {
			return nil, err
		}
		ls = o.Spec.Selector
	case kindStatefulSet:
		o, err := client.AppsV1().StatefulSets(ns).Get(ctx, name, get)
		if err != nil {
			return nil, err
		}
		ls = o.Spec.Selector
	case kindDaemonSet:
		o, err := client.AppsV1().DaemonSets(ns).Get(ctx, name, get)
		if err != nil {
			return nil, err
		}
		ls = o.Spec.Selector
	case kindReplicaSet:
		o, err := client.AppsV1().ReplicaSets(ns).Get(ctx, name, get)
		if err != nil {
			return nil, err
		}
		ls = o.Spec.Selector
	case kindJob:
		o, err := client.BatchV1().Jobs(ns).Get(ctx, name, get)
		if err != nil {
			return nil, err
		}
		ls = o.Spec.Selector
	case kindReplicationController:
		o, err := client.CoreV1().ReplicationControllers(ns).Get(ctx, name, get)
		if err != nil {
			return nil, err
		}
		return selectorFromSet(o.Spec.Selector, "replicationcontroller", name, ns)
	case kindService:
		return selectorFromSet(svc.Spec.Selector, "service", name, ns)
	default:
		return nil, fmt.Errorf("resource kind %d has no pod selector", k)
	}
	if ls == nil || (len(ls.MatchLabels) == 0 && len(ls.MatchExpressions) == 0) {
		return nil, fmt.Errorf("%s %q in namespace %q has no pod selector", kinds()[k].noun, name, ns)
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		return nil, fmt.Errorf("invalid pod selector of %s %q: %w", kinds()[k].noun, name, err)
	}
	return sel, nil
}

func selectorFromSet(set map[string]string, noun, name, ns string) (labels.Selector, error) {
	if len(set) == 0 {
		// A selector-less service is backed by hand-made endpoints, which name no pod to join.
		return nil, fmt.Errorf("%s %q in namespace %q has no pod selector; target a pod instead", noun, name, ns)
	}
	return labels.SelectorFromSet(set), nil
}

// readyPod picks the pod kubectl exec and port-forward would pick (the most active one, by kubectl's
// own ordering) among those that are ready: an agent in a pod that is starting or stopping would lose
// its session with the pod.
func readyPod(ctx context.Context, client kubernetes.Interface, ns string, sel labels.Selector, what string) (found, error) {
	list, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return found{}, explainListError(err, ns)
	}
	if len(list.Items) == 0 {
		return found{}, fmt.Errorf("no ready pod for %s in namespace %q (no pod matches selector %q)", what, ns, sel.String())
	}
	var ready []*corev1.Pod
	notReady := map[string]int{}
	for i := range list.Items {
		p := &list.Items[i]
		switch {
		case p.DeletionTimestamp != nil:
			notReady["terminating"]++
		case p.Status.Phase != corev1.PodRunning:
			notReady[string(p.Status.Phase)]++
		case !podutils.IsPodReady(p):
			notReady["running but not ready"]++
		default:
			ready = append(ready, p)
		}
	}
	if len(ready) == 0 {
		return found{}, fmt.Errorf("no ready pod for %s in namespace %q (%s)", what, ns, summarize(len(list.Items), notReady))
	}
	sort.Sort(sort.Reverse(podutils.ActivePods(ready)))
	return found{pod: ready[0], replicas: len(ready), ready: ready, sel: sel, rv: list.ResourceVersion}, nil
}

func summarize(total int, counts map[string]int) string {
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%d %s", counts[k], k)
	}
	noun := "pods"
	if total == 1 {
		noun = "pod"
	}
	return fmt.Sprintf("%d %s: %s", total, noun, strings.Join(parts, ", "))
}

// checkPod refuses pods the agent cannot or should not join, before anything is added to them; a
// starting pod may still be Pending.
func checkPod(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, allowHostNetwork, starting bool) error {
	ref := pod.Namespace + "/" + pod.Name
	if pod.DeletionTimestamp != nil {
		return fmt.Errorf("pod %q is terminating", ref)
	}
	startingPending := starting && pod.Status.Phase == corev1.PodPending
	if pod.Status.Phase != corev1.PodRunning && !startingPending {
		return fmt.Errorf("pod %q is not running (phase %s)", ref, orUnknown(string(pod.Status.Phase)))
	}
	if pod.Spec.OS != nil && pod.Spec.OS.Name == corev1.Windows {
		return fmt.Errorf("pod %q is a Windows pod (spec.os.name); the agent runs on Linux only", ref)
	}
	if pod.Spec.NodeSelector[osLabel] == string(corev1.Windows) {
		return fmt.Errorf("pod %q is a Windows pod (nodeSelector %s=windows); the agent runs on Linux only", ref, osLabel)
	}
	if pod.Spec.HostPID {
		// Every container of such a pod, an ephemeral one included, is in the node's PID namespace: the
		// agent's peer check and its own PID namespace, which keep the app's restarts away, would not hold.
		return fmt.Errorf("pod %q uses hostPID: true, so the agent would run in the node's process namespace; trafficlab does not attach to such pods (target a pod without hostPID)", ref)
	}
	if pod.Spec.HostNetwork && !allowHostNetwork {
		return fmt.Errorf("pod %q uses hostNetwork: true, so the agent would work in the node's network: a steal there takes the port from every client of the node itself (node daemons, other hostNetwork pods, the kubelet's probes), though not the traffic of the node's other pods, and the agent's data port listens on the node's loopback; pass --allow-host-network to go ahead (--flush-connections stays refused there)", ref)
	}
	if pod.Spec.NodeName != "" {
		// Best effort: reading nodes needs a cluster-scoped permission many users lack, and most Windows
		// pods are already caught above.
		node, err := client.CoreV1().Nodes().Get(ctx, pod.Spec.NodeName, metav1.GetOptions{})
		if err == nil && node.Labels[osLabel] == string(corev1.Windows) {
			return fmt.Errorf("pod %q runs on Windows node %q; the agent runs on Linux only", ref, node.Name)
		}
	}
	return nil
}

// pickContainer chooses the container the agent targets, the way kubectl's podcmd defaults it. Only
// regular containers and sidecars (restartable init containers) qualify: their ports and probes are
// the ones a verb works with.
func pickContainer(pod *corev1.Pod, name string, starting bool) (string, error) {
	ref := pod.Namespace + "/" + pod.Name
	valid := targetableContainers(pod)
	if len(valid) == 0 {
		return "", fmt.Errorf("pod %q has no containers", ref)
	}
	if name == "" {
		name = valid[0]
		if ann := pod.Annotations[DefaultContainerAnnotation]; ann != "" && contains(valid, ann) {
			name = ann
		}
	} else if !contains(valid, name) {
		return "", fmt.Errorf("container %q not found in pod %q; valid containers: %s", name, ref, strings.Join(valid, ", "))
	}
	if s := containerStatus(pod, name); s != nil && s.State.Running == nil && !starting {
		return "", fmt.Errorf("container %q in pod %q is not running (%s)", name, ref, describeState(s.State))
	}
	return name, nil
}

func targetableContainers(pod *corev1.Pod) []string {
	var names []string
	for _, c := range pod.Spec.Containers {
		names = append(names, c.Name)
	}
	for _, c := range pod.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			names = append(names, c.Name)
		}
	}
	return names
}

func containerStatus(pod *corev1.Pod, name string) *corev1.ContainerStatus {
	for _, list := range [][]corev1.ContainerStatus{pod.Status.ContainerStatuses, pod.Status.InitContainerStatuses} {
		for i := range list {
			if list[i].Name == name {
				return &list[i]
			}
		}
	}
	return nil
}

func describeState(s corev1.ContainerState) string {
	switch {
	case s.Waiting != nil:
		return "waiting: " + orUnknown(s.Waiting.Reason)
	case s.Terminated != nil:
		return fmt.Sprintf("terminated: %s, exit code %d", orUnknown(s.Terminated.Reason), s.Terminated.ExitCode)
	}
	return "state unknown"
}

func orUnknown(s string) string {
	if s == "" {
		return "Unknown"
	}
	return s
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// explainGetError names the namespace in a not-found error (the server's text does not), and turns a
// denial into the Role rule that is missing.
func explainGetError(err error, gr schema.GroupResource, ns string) error {
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("%w in namespace %q", err, ns)
	case isAuthorizationDenial(err):
		return &inject.MissingPermissionError{Namespace: ns, Rules: []inject.Rule{{APIGroup: gr.Group, Resource: gr.Resource, Verbs: []string{"get"}}}, Err: err}
	}
	return err
}

func explainListError(err error, ns string) error {
	if isAuthorizationDenial(err) {
		return &inject.MissingPermissionError{Namespace: ns, Rules: []inject.Rule{{Resource: "pods", Verbs: []string{"list"}}}, Err: err}
	}
	return err
}

// isAuthorizationDenial tells RBAC's 403 (`User "x" cannot get resource ...`) from admission 403s.
func isAuthorizationDenial(err error) bool {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return false
	}
	s := status.Status()
	return s.Code == http.StatusForbidden && strings.Contains(s.Message, " cannot ")
}
