package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
)

// webPod is a ready pod of deployment web.
func webPod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", UID: types.UID("uid-" + name), Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "app", Image: "nginx"}}},
		Status: corev1.PodStatus{
			Phase:             corev1.PodRunning,
			Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "app", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}},
		},
	}
}

// syncBuffer is the session's error output, read by the test while the session writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fanoutWorld is a fake cluster with deployment web and its pods, where patches to the pods in refuse
// are refused, and a session whose agents are reached through fake tunnels.
type fanoutWorld struct {
	client *fake.Clientset
	out    *syncBuffer

	mu      sync.Mutex
	patched []string
	// patchedAtFirstConnect is how many patches had been sent when the first tunnel was opened.
	patchedAtFirstConnect int
	conns                 map[string]*fakeConn
	joined, left, patches chan string
	// waited records, per pod, the agent connect was told to wait on as one waiting on its pull.
	waited map[string]string
	// watching gets a value when a watch of the pods starts: the fake clientset replays nothing that
	// happened between the informer's list and its watch, so a test changes pods once it watches.
	watching chan struct{}
}

func newFanoutWorld(t *testing.T, refuse map[string]bool, pods ...*corev1.Pod) *fanoutWorld {
	t.Helper()
	objs := []runtime.Object{&appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Spec:       appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}},
	}}
	for _, p := range pods {
		objs = append(objs, p)
	}
	w := &fanoutWorld{
		client: fake.NewClientset(objs...), out: &syncBuffer{}, patchedAtFirstConnect: -1,
		conns: map[string]*fakeConn{}, joined: make(chan string, 10), left: make(chan string, 10), patches: make(chan string, 20),
		watching: make(chan struct{}, 10),
	}
	w.client.Resources = []*metav1.APIResourceList{{GroupVersion: "v1", APIResources: []metav1.APIResource{
		{Name: "pods"}, {Name: "pods/exec"}, {Name: "pods/portforward"}, {Name: "pods/ephemeralcontainers"},
	}}}
	w.client.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		review := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview).DeepCopy()
		review.Status.Allowed = true
		return true, review, nil
	})
	w.client.PrependWatchReactor("pods", func(a k8stesting.Action) (bool, watch.Interface, error) {
		wi, err := w.client.Tracker().Watch(a.GetResource(), a.GetNamespace())
		w.watching <- struct{}{}
		return true, wi, err
	})
	w.client.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		name := a.(k8stesting.PatchAction).GetName()
		w.mu.Lock()
		w.patched = append(w.patched, name)
		w.mu.Unlock()
		w.patches <- name
		if refuse[name] {
			return true, nil, errors.New("admission webhook \"policy\" denied the request")
		}
		// The agent's start is the fake tunnel's business; the patch only has to be accepted.
		return true, webPod(name), nil
	})
	return w
}

// session starts a workload session over the world, with tunnels that end when the test says.
func (fw *fanoutWorld) session(t *testing.T, tgt target.Options) (*Workload, error) {
	t.Helper()
	o := NewOptions()
	o.Quiet = true
	join := func(_ context.Context, p *Pod) (func(), error) {
		fw.joined <- p.Name()
		return func() { fw.left <- p.Name() }, nil
	}
	w, err := newWorkload(target.Kube{Client: fw.client}, o, Request{Target: tgt, Capabilities: inject.NetAdmin}, fw.out, join)
	if err != nil {
		t.Fatal(err)
	}
	w.connect = func(_ context.Context, pp *pending) (*Pod, error) {
		fw.mu.Lock()
		defer fw.mu.Unlock()
		if fw.patchedAtFirstConnect < 0 {
			fw.patchedAtFirstConnect = len(fw.patched)
		}
		if pp.waiting {
			if fw.waited == nil {
				fw.waited = map[string]string{}
			}
			fw.waited[pp.target.Pod.Name] = pp.agent + " (waiting)"
		}
		c := &fakeConn{done: make(chan struct{}), err: errors.New("heartbeat timeout")}
		fw.conns[pp.target.Pod.Name] = c
		return &Pod{Target: pp.target, Agent: pp.agent, conn: c, closer: func() {}}, nil
	}
	return w, w.run(context.Background())
}

// lose ends the tunnel to pod's agent.
func (fw *fanoutWorld) lose(pod string) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	close(fw.conns[pod].done)
}

func names(pods []*Pod) []string {
	var n []string
	for _, p := range pods {
		n = append(n, p.Name())
	}
	return n
}

func receive(t *testing.T, ch chan string, what string) string {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s", what)
		return ""
	}
}

// TestWorkloadCoversEveryReadyPod: every ready pod is joined, each patch sent before any tunnel is
// opened; a pod whose patch is refused is reported by name and the others go on.
func TestWorkloadCoversEveryReadyPod(t *testing.T) {
	notReady := webPod("web-4")
	notReady.Status.Conditions[0].Status = corev1.ConditionFalse
	fw := newFanoutWorld(t, map[string]bool{"web-2": true}, webPod("web-1"), webPod("web-2"), webPod("web-3"), notReady)
	w, err := fw.session(t, target.Options{Namespace: "shop", Resource: "deployment/web", MaxPods: 20})
	if err != nil {
		t.Fatalf("run: %v; output:\n%s", err, fw.out)
	}
	defer w.Close()
	if diff := cmp.Diff([]string{"web-1", "web-3"}, names(w.Pods())); diff != "" {
		t.Errorf("joined pods (-want +got):\n%s", diff)
	}
	if fw.patchedAtFirstConnect != 3 {
		t.Errorf("%d of 3 patches sent when the first tunnel was opened, want all", fw.patchedAtFirstConnect)
	}
	if got, want := w.Coverage(), "2/3 pods of deployment/web"; got != want {
		t.Errorf("coverage %q, want %q", got, want)
	}
	refused := regexp.MustCompile(`(?m)^warning: pod web-2 is not covered: adding agent "trafficlab-[a-z0-9]+" to pod "shop/web-2": admission webhook "policy" denied the request$`)
	if !refused.MatchString(fw.out.String()) {
		t.Errorf("output does not report web-2's refusal (%s):\n%s", refused, fw.out)
	}
}

// TestWorkloadWaitsOnAgentWhosePullFailed: a pod whose agent waits on its image pull gets no second
// agent; the session waits on that one (connect is told so) while the other pods get theirs.
func TestWorkloadWaitsOnAgentWhosePullFailed(t *testing.T) {
	pulling := webPod("web-1")
	pulling.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
		Name: "trafficlab-aaaaa", Image: NewOptions().AgentImage,
		SecurityContext: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN"}, Drop: []corev1.Capability{"ALL"}}},
	}}}
	pulling.Status.EphemeralContainerStatuses = []corev1.ContainerStatus{{Name: "trafficlab-aaaaa", State: corev1.ContainerState{
		Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff", Message: `Back-off pulling image "x"`},
	}}}
	fw := newFanoutWorld(t, nil, pulling, webPod("web-2"))
	w, err := fw.session(t, target.Options{Namespace: "shop", Resource: "deployment/web", MaxPods: 20})
	if err != nil {
		t.Fatalf("run: %v; output:\n%s", err, fw.out)
	}
	defer w.Close()
	if diff := cmp.Diff([]string{"web-2"}, fw.patched); diff != "" {
		t.Errorf("patched pods (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]string{"web-1": "trafficlab-aaaaa (waiting)"}, fw.waited); diff != "" {
		t.Errorf("agents waited on (-want +got):\n%s", diff)
	}
}

// TestWorkloadMaxPods: a workload with more ready pods than --max-pods is refused with the count,
// before any patch; --one-pod takes one of them.
func TestWorkloadMaxPods(t *testing.T) {
	fw := newFanoutWorld(t, nil, webPod("web-1"), webPod("web-2"), webPod("web-3"))
	_, err := fw.session(t, target.Options{Namespace: "shop", Resource: "deployment/web", MaxPods: 2})
	want := "deployment/web has 3 ready pods, more than --max-pods 2: raise --max-pods, or pass --one-pod to use one of them"
	if errString(err) != want {
		t.Errorf("run = %v, want %q", err, want)
	}
	if len(fw.patched) != 0 {
		t.Errorf("patched %q before refusing", fw.patched)
	}
	w, err := fw.session(t, target.Options{Namespace: "shop", Resource: "deployment/web", MaxPods: 2, OnePod: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if n := len(w.Pods()); n != 1 {
		t.Errorf("--one-pod joined %d pods", n)
	}
}

// TestWorkloadFollowsPods: a pod that becomes ready during the session is joined, with its
// Ready->joined gap; a deleted pod leaves; a lost agent of one pod leaves only that pod; the end
// reports the gaps.
func TestWorkloadFollowsPods(t *testing.T) {
	fw := newFanoutWorld(t, nil, webPod("web-1"), webPod("web-2"))
	w, err := fw.session(t, target.Options{Namespace: "shop", Resource: "deployment/web", MaxPods: 20})
	if err != nil {
		t.Fatalf("run: %v; output:\n%s", err, fw.out)
	}
	receive(t, fw.joined, "join")
	receive(t, fw.joined, "join")
	receive(t, fw.patches, "patch")
	receive(t, fw.patches, "patch")
	select {
	case <-fw.watching:
	case <-time.After(10 * time.Second):
		t.Fatal("the session does not watch the workload's pods")
	}
	ctx := context.Background()
	pods := fw.client.CoreV1().Pods("shop")

	// Scheduled, its containers not started yet: its agent is added at once, and it joins once Ready.
	late := webPod("web-3")
	late.Status.Phase, late.Status.Conditions, late.Status.ContainerStatuses = corev1.PodPending, nil, nil
	if _, err := pods.Create(ctx, late, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, fw.patches, "the agent patch of web-3 before it is Ready"); got != "web-3" {
		t.Errorf("patched %s, want web-3", got)
	}
	select {
	case name := <-fw.joined:
		t.Fatalf("%s joined before it was Ready", name)
	default:
	}
	late.Status = webPod("web-3").Status
	if _, err := pods.UpdateStatus(ctx, late, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got string
	select {
	case got = <-fw.joined:
	case <-time.After(10 * time.Second):
		t.Fatalf("no join of web-3; output:\n%s", fw.out)
	}
	if got != "web-3" {
		t.Errorf("joined %s, want web-3", got)
	}

	if err := pods.Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, fw.left, "web-1 leaving"); got != "web-1" {
		t.Errorf("%s left, want web-1", got)
	}

	fw.lose("web-2")
	if got := receive(t, fw.left, "web-2 leaving"); got != "web-2" {
		t.Errorf("%s left, want web-2", got)
	}
	select {
	case <-w.Done():
		t.Fatalf("session ended with %v while web-3 is covered", w.Err())
	default:
	}
	if diff := cmp.Diff([]string{"web-3"}, names(w.Pods())); diff != "" {
		t.Errorf("pods after the changes (-want +got):\n%s", diff)
	}
	w.Close()
	if got := receive(t, fw.left, "web-3 leaving at the end"); got != "web-3" {
		t.Errorf("%s left at the end, want web-3", got)
	}
	out := fw.out.String()
	for _, want := range []string{
		"warning: lost the agent in pod web-2: heartbeat timeout; the session goes on with 1/2 pods of deployment/web",
		"1 pod joined during the session: Ready -> joined p50 ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestWorkloadOnePodLost: with one pod (pod/NAME), a lost agent ends the session, as it always did.
func TestWorkloadOnePodLost(t *testing.T) {
	fw := newFanoutWorld(t, nil, webPod("web-1"))
	w, err := fw.session(t, target.Options{Namespace: "shop", Resource: "pod/web-1", MaxPods: 20})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	fw.lose("web-1")
	err = w.Wait(context.Background())
	if want := "lost the agent: pod web-1: heartbeat timeout"; errString(err) != want {
		t.Errorf("Wait = %v, want %q", err, want)
	}
	if got, want := w.Coverage(), "pod web-1"; got != want {
		t.Errorf("coverage %q, want %q", got, want)
	}
}

func TestGapSummary(t *testing.T) {
	for _, tt := range []struct {
		gaps []time.Duration
		want string
	}{
		{nil, ""},
		{[]time.Duration{1234 * time.Millisecond}, "1 pod joined during the session: Ready -> joined p50 1.23s, max 1.23s"},
		{[]time.Duration{3 * time.Second, time.Second, 2 * time.Second, 10 * time.Second}, "4 pods joined during the session: Ready -> joined p50 2s, max 10s"},
	} {
		t.Run(fmt.Sprint(tt.gaps), func(t *testing.T) {
			if diff := cmp.Diff(tt.want, gapSummary(tt.gaps)); diff != "" {
				t.Errorf("gapSummary (-want +got):\n%s", diff)
			}
		})
	}
}
