package target

import (
	"context"
	"errors"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
)

const ns = "shop"

type podOpt func(*corev1.Pod)

// pod returns a ready, running pod on a Linux node with one container "app".
func pod(name string, lbls map[string]string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: lbls, CreationTimestamp: metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))},
		Spec:       corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "app"}}},
		Status: corev1.PodStatus{
			Phase:             corev1.PodRunning,
			Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "app", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}},
		},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func notReady(p *corev1.Pod) {
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}
}

func pending(p *corev1.Pod) {
	p.Status.Phase = corev1.PodPending
	p.Status.Conditions = nil
	p.Status.ContainerStatuses = nil
}

func withContainers(names ...string) podOpt {
	return func(p *corev1.Pod) {
		p.Spec.Containers = nil
		p.Status.ContainerStatuses = nil
		for _, n := range names {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: n})
			p.Status.ContainerStatuses = append(p.Status.ContainerStatuses,
				corev1.ContainerStatus{Name: n, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}})
		}
	}
}

func labelSel(l map[string]string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: l}
}

func meta(name string) metav1.ObjectMeta { return metav1.ObjectMeta{Name: name, Namespace: ns} }

func web() map[string]string { return map[string]string{"app": "web"} }

// cluster holds one object of every supported kind. The web pods are: web-1 ready, web-2 pending,
// web-3 running but not ready, so every workload selecting app=web must land on web-1.
func cluster(extra ...runtime.Object) []runtime.Object {
	cold := map[string]string{"app": "cold"}
	objs := []runtime.Object{
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{"kubernetes.io/os": "linux"}}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "win-1", Labels: map[string]string{"kubernetes.io/os": "windows"}}},
		pod("web-2", web(), pending),
		pod("web-1", web()),
		pod("web-3", web(), notReady),
		pod("cold-1", cold, notReady),
		pod("cold-2", cold, pending),
		&appsv1.Deployment{ObjectMeta: meta("web"), Spec: appsv1.DeploymentSpec{Selector: labelSel(web())}},
		&appsv1.Deployment{ObjectMeta: meta("cold"), Spec: appsv1.DeploymentSpec{Selector: labelSel(cold)}},
		&appsv1.StatefulSet{ObjectMeta: meta("web"), Spec: appsv1.StatefulSetSpec{Selector: labelSel(web())}},
		&appsv1.DaemonSet{ObjectMeta: meta("web"), Spec: appsv1.DaemonSetSpec{Selector: labelSel(web())}},
		&appsv1.ReplicaSet{ObjectMeta: meta("web-5d4f"), Spec: appsv1.ReplicaSetSpec{Selector: labelSel(web())}},
		&corev1.ReplicationController{ObjectMeta: meta("web"), Spec: corev1.ReplicationControllerSpec{Selector: web()}},
		&batchv1.Job{ObjectMeta: meta("web"), Spec: batchv1.JobSpec{Selector: labelSel(web())}},
		&corev1.Service{ObjectMeta: meta("web"), Spec: corev1.ServiceSpec{Selector: web()}},
		&corev1.Service{ObjectMeta: meta("cold"), Spec: corev1.ServiceSpec{Selector: cold}},
		&corev1.Service{ObjectMeta: meta("external"), Spec: corev1.ServiceSpec{}},
	}
	return append(objs, extra...)
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name          string
		opts          Options
		extra         []runtime.Object
		wantPod       string
		wantContainer string
	}{
		{name: "pod/NAME", opts: Options{Resource: "pod/web-1"}, wantPod: "web-1", wantContainer: "app"},
		{name: "pods/NAME", opts: Options{Resource: "pods/web-1"}, wantPod: "web-1", wantContainer: "app"},
		{name: "po/NAME", opts: Options{Resource: "po/web-1"}, wantPod: "web-1", wantContainer: "app"},
		{name: "bare NAME is a pod", opts: Options{Resource: "web-1"}, wantPod: "web-1", wantContainer: "app"},
		{name: "Pod/NAME, any case", opts: Options{Resource: "Pod/web-1"}, wantPod: "web-1", wantContainer: "app"},
		{name: "pods.v1/NAME", opts: Options{Resource: "pods.v1/web-1"}, wantPod: "web-1", wantContainer: "app"},
		{name: "a named pod need not be ready", opts: Options{Resource: "pod/web-3"}, wantPod: "web-3", wantContainer: "app"},
		{name: "deployment", opts: Options{Resource: "deployment/web"}, wantPod: "web-1", wantContainer: "app"},
		{name: "deploy", opts: Options{Resource: "deploy/web"}, wantPod: "web-1", wantContainer: "app"},
		{name: "deployments.apps", opts: Options{Resource: "deployments.apps/web"}, wantPod: "web-1", wantContainer: "app"},
		{name: "deployment.v1.apps", opts: Options{Resource: "deployment.v1.apps/web"}, wantPod: "web-1", wantContainer: "app"},
		{name: "statefulset", opts: Options{Resource: "statefulset/web"}, wantPod: "web-1", wantContainer: "app"},
		{name: "sts", opts: Options{Resource: "sts/web"}, wantPod: "web-1", wantContainer: "app"},
		{name: "daemonset", opts: Options{Resource: "daemonsets/web"}, wantPod: "web-1", wantContainer: "app"},
		{name: "ds", opts: Options{Resource: "ds/web"}, wantPod: "web-1", wantContainer: "app"},
		{name: "replicaset", opts: Options{Resource: "replicaset/web-5d4f"}, wantPod: "web-1", wantContainer: "app"},
		{name: "rs", opts: Options{Resource: "rs/web-5d4f"}, wantPod: "web-1", wantContainer: "app"},
		{name: "rc", opts: Options{Resource: "rc/web"}, wantPod: "web-1", wantContainer: "app"},
		{name: "job", opts: Options{Resource: "job/web"}, wantPod: "web-1", wantContainer: "app"},
		{name: "jobs.batch", opts: Options{Resource: "jobs.batch/web"}, wantPod: "web-1", wantContainer: "app"},
		{name: "service picks its ready pod", opts: Options{Resource: "svc/web"}, wantPod: "web-1", wantContainer: "app"},
		{name: "services", opts: Options{Resource: "services/web"}, wantPod: "web-1", wantContainer: "app"},
		{name: "-l selector", opts: Options{Selector: "app=web"}, wantPod: "web-1", wantContainer: "app"},
		{name: "-l set-based selector", opts: Options{Selector: "app in (web, other)"}, wantPod: "web-1", wantContainer: "app"},
		{
			name: "of two ready pods the longer-ready one wins, as kubectl picks",
			opts: Options{Selector: "app=web"},
			extra: []runtime.Object{pod("web-0", web(), func(p *corev1.Pod) {
				p.Status.Conditions[0].LastTransitionTime = metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
			})},
			// web-1 has a zero ready time, which kubectl's ordering ranks below a known one.
			wantPod: "web-0", wantContainer: "app",
		},
		{
			name:          "-c picks a container",
			opts:          Options{Resource: "pod/multi", Container: "sidecar"},
			extra:         []runtime.Object{pod("multi", nil, withContainers("app", "sidecar"))},
			wantPod:       "multi",
			wantContainer: "sidecar",
		},
		{
			name:          "without -c the first container",
			opts:          Options{Resource: "pod/multi"},
			extra:         []runtime.Object{pod("multi", nil, withContainers("app", "sidecar"))},
			wantPod:       "multi",
			wantContainer: "app",
		},
		{
			name: "without -c the default-container annotation",
			opts: Options{Resource: "pod/multi"},
			extra: []runtime.Object{pod("multi", nil, withContainers("app", "sidecar"), func(p *corev1.Pod) {
				p.Annotations = map[string]string{DefaultContainerAnnotation: "sidecar"}
			})},
			wantPod:       "multi",
			wantContainer: "sidecar",
		},
		{
			name: "a default-container annotation naming no container falls back to the first",
			opts: Options{Resource: "pod/multi"},
			extra: []runtime.Object{pod("multi", nil, withContainers("app", "sidecar"), func(p *corev1.Pod) {
				p.Annotations = map[string]string{DefaultContainerAnnotation: "gone"}
			})},
			wantPod:       "multi",
			wantContainer: "app",
		},
		{
			name: "-c may name a sidecar (restartable init container)",
			opts: Options{Resource: "pod/mesh", Container: "proxy"},
			extra: []runtime.Object{pod("mesh", nil, func(p *corev1.Pod) {
				p.Spec.InitContainers = []corev1.Container{{Name: "proxy", RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways)}}
				p.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: "proxy", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}
			})},
			wantPod:       "mesh",
			wantContainer: "proxy",
		},
		{
			name:          "hostNetwork pod with --allow-host-network",
			opts:          Options{Resource: "pod/hostnet", AllowHostNetwork: true},
			extra:         []runtime.Object{pod("hostnet", nil, func(p *corev1.Pod) { p.Spec.HostNetwork = true })},
			wantPod:       "hostnet",
			wantContainer: "app",
		},
		{
			name:          "a node the user may not read is no reason to refuse",
			opts:          Options{Resource: "pod/elsewhere"},
			extra:         []runtime.Object{pod("elsewhere", nil, func(p *corev1.Pod) { p.Spec.NodeName = "unknown-node" })},
			wantPod:       "elsewhere",
			wantContainer: "app",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset(cluster(tc.extra...)...)
			tc.opts.Namespace = ns
			got, err := Resolve(context.Background(), client, tc.opts)
			if err != nil {
				t.Fatalf("Resolve() error = %v", err)
			}
			if got.Pod.Name != tc.wantPod || got.Container != tc.wantContainer {
				t.Errorf("Resolve() = %s/%s, want %s/%s", got.Pod.Name, got.Container, tc.wantPod, tc.wantContainer)
			}
			assertReadOnly(t, client)
		})
	}
}

func TestResolveErrors(t *testing.T) {
	forbidDeployments := func(c *fake.Clientset) {
		c.PrependReactor("get", "deployments", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "apps", Resource: "deployments"}, "web",
				errors.New(`User "dev" cannot get resource "deployments" in API group "apps" in the namespace "shop"`))
		})
	}
	tests := []struct {
		name    string
		opts    Options
		extra   []runtime.Object
		react   func(*fake.Clientset)
		wantErr string
		prefix  bool // wantErr is only the start: the rest is the parser's own words
		// refused: the pod was found but no agent can join it (a *PodRefusedError, which doctor reports as a line).
		refused bool
	}{
		{
			name:    "pod not found names the namespace",
			opts:    Options{Resource: "pod/nope"},
			wantErr: `pods "nope" not found in namespace "shop"`,
		},
		{
			name:    "deployment not found",
			opts:    Options{Resource: "deploy/nope"},
			wantErr: `deployments.apps "nope" not found in namespace "shop"`,
		},
		{
			name:    "service not found",
			opts:    Options{Resource: "svc/nope"},
			wantErr: `services "nope" not found in namespace "shop"`,
		},
		{
			name:    "workload without a ready pod",
			opts:    Options{Resource: "deployment/cold"},
			wantErr: `no ready pod for deployment "cold" in namespace "shop" (2 pods: 1 Pending, 1 running but not ready)`,
		},
		{
			name:    "service with only unready endpoints",
			opts:    Options{Resource: "svc/cold"},
			wantErr: `no ready pod for service "cold" in namespace "shop" (2 pods: 1 Pending, 1 running but not ready)`,
		},
		{
			name:    "selector matching nothing",
			opts:    Options{Selector: "app=none"},
			wantErr: `no ready pod for selector "app=none" in namespace "shop" (no pod matches selector "app=none")`,
		},
		{
			name: "terminating pods are not ready",
			opts: Options{Selector: "app=going"},
			extra: []runtime.Object{pod("going-1", map[string]string{"app": "going"}, func(p *corev1.Pod) {
				p.DeletionTimestamp = &metav1.Time{Time: time.Now()}
				p.Finalizers = []string{"x"}
			})},
			wantErr: `no ready pod for selector "app=going" in namespace "shop" (1 pod: 1 terminating)`,
		},
		{
			name:    "invalid selector",
			opts:    Options{Selector: "app in ("},
			wantErr: `invalid selector "app in (": `,
			prefix:  true,
		},
		{
			name:    "service without selector",
			opts:    Options{Resource: "svc/external"},
			wantErr: `service "external" in namespace "shop" has no pod selector; target a pod instead`,
		},
		{
			name:    "unsupported type",
			opts:    Options{Resource: "cronjob/nightly"},
			wantErr: `resource type "cronjob" cannot be targeted; use a pod, deployment, statefulset, daemonset, replicaset, replicationcontroller, job or service`,
		},
		{
			name:    "wrong group",
			opts:    Options{Resource: "deployments.batch/web"},
			wantErr: `resource type "deployments.batch" cannot be targeted; use a pod, deployment, statefulset, daemonset, replicaset, replicationcontroller, job or service`,
		},
		{
			name:    "not TYPE/NAME",
			opts:    Options{Resource: "deploy/"},
			wantErr: `"deploy/" is not TYPE/NAME`,
		},
		{
			name:    "both TYPE/NAME and selector",
			opts:    Options{Resource: "pod/web-1", Selector: "app=web"},
			wantErr: `name exactly one target: TYPE/NAME or --selector`,
		},
		{
			name:    "neither",
			opts:    Options{},
			wantErr: `name exactly one target: TYPE/NAME or --selector`,
		},
		{
			name:    "pod not running says its phase",
			opts:    Options{Resource: "pod/web-2"},
			wantErr: `pod "shop/web-2" is not running (phase Pending)`,
			refused: true,
		},
		{
			name:    "pod succeeded",
			opts:    Options{Resource: "pod/done"},
			extra:   []runtime.Object{pod("done", nil, func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded })},
			wantErr: `pod "shop/done" is not running (phase Succeeded)`,
			refused: true,
		},
		{
			name: "terminating pod",
			opts: Options{Resource: "pod/going"},
			extra: []runtime.Object{pod("going", nil, func(p *corev1.Pod) {
				p.DeletionTimestamp = &metav1.Time{Time: time.Now()}
				p.Finalizers = []string{"x"}
			})},
			wantErr: `pod "shop/going" is terminating`,
			refused: true,
		},
		{
			name:    "container not found lists the valid names",
			opts:    Options{Resource: "pod/multi", Container: "db"},
			extra:   []runtime.Object{pod("multi", nil, withContainers("app", "sidecar"))},
			wantErr: `container "db" not found in pod "shop/multi"; valid containers: app, sidecar`,
		},
		{
			name: "an init container that is not a sidecar is no target",
			opts: Options{Resource: "pod/init", Container: "migrate"},
			extra: []runtime.Object{pod("init", nil, func(p *corev1.Pod) {
				p.Spec.InitContainers = []corev1.Container{{Name: "migrate"}}
			})},
			wantErr: `container "migrate" not found in pod "shop/init"; valid containers: app`,
		},
		{
			name: "target container not running",
			opts: Options{Resource: "pod/crashing"},
			extra: []runtime.Object{pod("crashing", nil, func(p *corev1.Pod) {
				p.Status.ContainerStatuses[0].State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}
			})},
			wantErr: `container "app" in pod "shop/crashing" is not running (waiting: CrashLoopBackOff)`,
		},
		{
			name:    "windows pod by spec.os.name",
			opts:    Options{Resource: "pod/win"},
			extra:   []runtime.Object{pod("win", nil, func(p *corev1.Pod) { p.Spec.OS = &corev1.PodOS{Name: corev1.Windows} })},
			wantErr: `pod "shop/win" is a Windows pod (spec.os.name); the agent runs on Linux only`,
			refused: true,
		},
		{
			name: "windows pod by node selector",
			opts: Options{Resource: "pod/win"},
			extra: []runtime.Object{pod("win", nil, func(p *corev1.Pod) {
				p.Spec.NodeSelector = map[string]string{"kubernetes.io/os": "windows"}
			})},
			wantErr: `pod "shop/win" is a Windows pod (nodeSelector kubernetes.io/os=windows); the agent runs on Linux only`,
			refused: true,
		},
		{
			name:    "windows pod by node label",
			opts:    Options{Resource: "pod/win"},
			extra:   []runtime.Object{pod("win", nil, func(p *corev1.Pod) { p.Spec.NodeName = "win-1" })},
			wantErr: `pod "shop/win" runs on Windows node "win-1"; the agent runs on Linux only`,
			refused: true,
		},
		{
			name:    "hostNetwork refused without the opt-in",
			opts:    Options{Resource: "pod/hostnet"},
			extra:   []runtime.Object{pod("hostnet", nil, func(p *corev1.Pod) { p.Spec.HostNetwork = true })},
			wantErr: `pod "shop/hostnet" uses hostNetwork: true, so the agent would work in the node's network: a steal there takes the port from every client of the node itself (node daemons, other hostNetwork pods, the kubelet's probes), though not the traffic of the node's other pods, and the agent's data port listens on the node's loopback; pass --allow-host-network to go ahead (--flush-connections stays refused there)`,
			refused: true,
		},
		{
			name:    "hostPID refused",
			opts:    Options{Resource: "pod/hostpid"},
			extra:   []runtime.Object{pod("hostpid", nil, func(p *corev1.Pod) { p.Spec.HostPID = true })},
			wantErr: `pod "shop/hostpid" uses hostPID: true, so the agent would run in the node's process namespace; trafficlab does not attach to such pods (target a pod without hostPID)`,
			refused: true,
		},
		{
			name:    "get denied by RBAC names the missing rule",
			opts:    Options{Resource: "deploy/web"},
			react:   forbidDeployments,
			wantErr: `missing RBAC permission: apiGroups: ["apps"], resources: ["deployments"], verbs: ["get"] in namespace "shop"`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset(cluster(tc.extra...)...)
			if tc.react != nil {
				tc.react(client)
			}
			tc.opts.Namespace = ns
			got, err := Resolve(context.Background(), client, tc.opts)
			if err == nil {
				t.Fatalf("Resolve() = %s, want error %q", got.Pod.Name, tc.wantErr)
			}
			msg := err.Error()
			matches := msg == tc.wantErr || (tc.prefix && strings.HasPrefix(msg, tc.wantErr))
			var refused *PodRefusedError
			if errors.As(err, &refused) != tc.refused {
				t.Errorf("Resolve() error is a *PodRefusedError: %v, want %v", !tc.refused, tc.refused)
			}
			if !matches {
				t.Errorf("Resolve() error =\n%s\nwant\n%s", msg, tc.wantErr)
			}
			assertReadOnly(t, client)
		})
	}
}

// assertReadOnly fails if resolution changed anything: above all, no agent may be patched in.
func assertReadOnly(t *testing.T, client *fake.Clientset) {
	t.Helper()
	for _, a := range client.Actions() {
		switch a.GetVerb() {
		case "get", "list", "watch":
		default:
			t.Errorf("resolution made a %s %s/%s request", a.GetVerb(), a.GetResource().Resource, a.GetSubresource())
		}
	}
}

func TestNotFoundWrapsAPIError(t *testing.T) {
	client := fake.NewClientset()
	_, err := Resolve(context.Background(), client, Options{Namespace: ns, Resource: "pod/x"})
	if !apierrors.IsNotFound(err) {
		t.Errorf("apierrors.IsNotFound(%v) = false; the API error must stay reachable", err)
	}
	var perm *inject.MissingPermissionError
	if errors.As(err, &perm) {
		t.Errorf("a not-found error reads as a permission error")
	}
}

func TestWorkload(t *testing.T) {
	for _, tt := range []struct {
		o      Options
		want   string
		wantOK bool
	}{
		{o: Options{Resource: "deploy/api"}, want: "deployment/api", wantOK: true},
		{o: Options{Resource: "Services.v1/web"}, want: "service/web", wantOK: true},
		{o: Options{Selector: "app=api"}, want: `selector "app=api"`, wantOK: true},
		{o: Options{Resource: "pod/web"}},
		{o: Options{Resource: "web"}},
		{o: Options{Resource: "cronjob/x"}},
	} {
		got, ok := tt.o.Workload()
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("%+v.Workload() = %q, %v; want %q, %v", tt.o, got, ok, tt.want, tt.wantOK)
		}
	}
}

// TestResolveWorkload: a workload is every one of its ready pods (not the pending or unready ones),
// a pod named as such or --one-pod is one, and more ready pods than --max-pods are refused with the
// count.
func TestResolveWorkload(t *testing.T) {
	more := []runtime.Object{pod("web-0", web()), pod("web-9", web())}
	for _, tc := range []struct {
		name     string
		opts     Options
		wantPods []string
		follow   bool
		wantErr  string
	}{
		{name: "deployment", opts: Options{Resource: "deploy/web", MaxPods: 20}, wantPods: []string{"web-0", "web-1", "web-9"}, follow: true},
		{name: "service", opts: Options{Resource: "svc/web", MaxPods: 20}, wantPods: []string{"web-0", "web-1", "web-9"}, follow: true},
		{name: "-l", opts: Options{Selector: "app=web", MaxPods: 20}, wantPods: []string{"web-0", "web-1", "web-9"}, follow: true},
		{name: "exactly --max-pods", opts: Options{Resource: "deploy/web", MaxPods: 3}, wantPods: []string{"web-0", "web-1", "web-9"}, follow: true},
		{
			name: "more than --max-pods", opts: Options{Resource: "deploy/web", MaxPods: 2},
			wantErr: "deploy/web has 3 ready pods, more than --max-pods 2: raise --max-pods, or pass --one-pod to use one of them",
		},
		{name: "--one-pod", opts: Options{Resource: "deploy/web", MaxPods: 2, OnePod: true}, wantPods: []string{"web-0"}},
		{name: "pod/NAME", opts: Options{Resource: "pod/web-3", MaxPods: 20}, wantPods: []string{"web-3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Namespace = ns
			client := fake.NewClientset(cluster(more...)...)
			wl, err := ResolveWorkload(context.Background(), client, tc.opts)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("ResolveWorkload() = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range wl.Pods {
				got = append(got, p.Name)
			}
			sort.Strings(got)
			if diff := cmp.Diff(tc.wantPods, got); diff != "" {
				t.Errorf("pods (-want +got):\n%s", diff)
			}
			if (wl.Selector != nil) != tc.follow {
				t.Errorf("selector %v; want one: %v", wl.Selector, tc.follow)
			}
		})
	}
}

// TestReady: the pods a workload session covers.
func TestReady(t *testing.T) {
	terminating := func(p *corev1.Pod) {
		p.DeletionTimestamp = &metav1.Time{Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	}
	for _, tc := range []struct {
		pod  *corev1.Pod
		want bool
	}{
		{pod("ready", nil), true},
		{pod("unready", nil, notReady), false},
		{pod("pending", nil, pending), false},
		{pod("terminating", nil, terminating), false},
	} {
		if got := Ready(tc.pod); got != tc.want {
			t.Errorf("Ready(%s) = %v, want %v", tc.pod.Name, got, tc.want)
		}
	}
}

// TestStarting: the pods a workload session adds its agent to before they are Ready.
func TestStarting(t *testing.T) {
	terminating := func(p *corev1.Pod) {
		p.DeletionTimestamp = &metav1.Time{Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	}
	unscheduled := func(p *corev1.Pod) { p.Spec.NodeName = "" }
	failed := func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }
	for _, tc := range []struct {
		pod  *corev1.Pod
		want bool
	}{
		{pod("ready", nil), false},
		{pod("unready", nil, notReady), true},
		{pod("pending", nil, pending), true},
		{pod("unscheduled", nil, pending, unscheduled), false},
		{pod("terminating", nil, notReady, terminating), false},
		{pod("failed", nil, notReady, failed), false},
	} {
		if got := Starting(tc.pod); got != tc.want {
			t.Errorf("Starting(%s) = %v, want %v", tc.pod.Name, got, tc.want)
		}
	}
	// A starting pod's container need not run yet; ForPod still refuses it.
	p := pod("pending", nil, pending)
	if _, err := ForStartingPod(context.Background(), fake.NewClientset(), p, Options{}, nil); err != nil {
		t.Errorf("ForStartingPod(pending) = %v", err)
	}
	if _, err := ForPod(context.Background(), fake.NewClientset(), p, Options{}, nil, 1); err == nil {
		t.Error("ForPod(pending) accepted a pod that is not running")
	}
}
