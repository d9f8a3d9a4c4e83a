package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
)

// fakeLeg is one pod's session whose tunnel the test ends.
type fakeLeg struct {
	p      *corev1.Pod
	done   chan struct{}
	closed atomic.Bool
}

func newFakeLeg(p *corev1.Pod) *fakeLeg { return &fakeLeg{p: p, done: make(chan struct{})} }

func (l *fakeLeg) pod() *corev1.Pod { return l.p }

// Dial answers with a connection that names the pod it was dialed on.
func (l *fakeLeg) Dial(context.Context, string, string) (io.ReadWriteCloser, error) {
	select {
	case <-l.done:
		return nil, errors.New("dialed a lost tunnel")
	default:
	}
	if l.closed.Load() {
		return nil, errors.New("dialed a closed session")
	}
	return podConn{l.p.Name}, nil
}

func (l *fakeLeg) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return nil, errors.New("not used here")
}
func (l *fakeLeg) Done() <-chan struct{} { return l.done }
func (l *fakeLeg) Err() error            { return errors.New("every data connection to the agent is closed") }
func (l *fakeLeg) Close() error          { l.closed.Store(true); return nil }

type podConn struct{ pod string }

func (podConn) Read([]byte) (int, error)    { return 0, io.EOF }
func (podConn) Write(p []byte) (int, error) { return len(p), nil }
func (podConn) Close() error                { return nil }

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func readyPod(name string, started time.Time) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", UID: types.UID("uid-" + name), Labels: map[string]string{"app": "api"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}},
		Status: corev1.PodStatus{
			Phase:      corev1.PodRunning,
			StartTime:  &metav1.Time{Time: started},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "app", Ready: true,
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}},
		},
	}
}

// followWorld is a Deployment of two ready pods in a fake clientset, a Follower on the pod resolved
// first, and what the Follower started since.
type followWorld struct {
	client  *fake.Clientset
	f       *Follower
	errOut  *lockedBuffer
	first   *fakeLeg
	started chan *fakeLeg
	watches chan string // the pod of each watch the Follower opened
}

func newFollowWorld(t *testing.T, resource string, mayWatch bool) *followWorld {
	t.Helper()
	now := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	deploy := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "shop"},
		Spec:       appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "api"}}},
	}
	w := &followWorld{
		client: fake.NewClientset(deploy, readyPod("api-a", now), readyPod("api-b", now.Add(time.Minute)),
			&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "shop"}, Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "api"}}}),
		errOut:  &lockedBuffer{},
		started: make(chan *fakeLeg, 4),
		watches: make(chan string, 4),
	}
	// The watch is open before the test deletes a pod.
	w.client.PrependWatchReactor("pods", func(a k8stesting.Action) (bool, watch.Interface, error) {
		wa := a.(k8stesting.WatchActionImpl)
		if !mayWatch {
			return true, nil, apierrors.NewForbidden(corev1.Resource("pods"), "", errors.New(`User "dev" cannot watch resource "pods"`))
		}
		wi, err := w.client.Tracker().Watch(corev1.SchemeGroupVersion.WithResource("pods"), a.GetNamespace())
		name, _ := wa.WatchRestrictions.Fields.RequiresExactMatch("metadata.name")
		w.watches <- name
		return true, wi, err
	})
	opts := target.Options{Namespace: "shop", Resource: resource}
	tgt, err := target.Resolve(context.Background(), w.client, opts)
	if err != nil {
		t.Fatal(err)
	}
	w.first = newFakeLeg(tgt.Pod)
	start := func(ctx context.Context, req Request) (leg, error) {
		name := strings.TrimPrefix(req.Target.Resource, "pod/")
		p, err := w.client.CoreV1().Pods("shop").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		l := newFakeLeg(p)
		w.started <- l
		return l, nil
	}
	w.f = newFollower(context.Background(), w.client, Request{Target: opts}, w.first, w.errOut, true, start)
	t.Cleanup(func() { _ = w.f.Close() })
	return w
}

func (w *followWorld) dialedPod(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := w.f.Dial(ctx, "tcp", "localhost:80")
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	return c.(podConn).pod
}

// waitLine waits until the Follower has printed exactly want.
func (w *followWorld) waitLine(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for w.errOut.String() != want {
		if time.Now().After(deadline) || len(w.errOut.String()) > len(want) {
			t.Fatalf("printed %q, want %q", w.errOut.String(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

func (w *followWorld) waitWatch(t *testing.T, pod string) {
	t.Helper()
	select {
	case got := <-w.watches:
		if got != pod {
			t.Fatalf("watching pod %q, want %q", got, pod)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no watch of pod %q", pod)
	}
}

func (w *followWorld) wait(t *testing.T) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := w.f.Wait(ctx)
	if ctx.Err() != nil {
		t.Fatal("the session did not end")
	}
	return err
}

// TestFollowerReplacesGonePod: deploy/api with two ready pods; the pod in use is deleted: the session
// goes on on the other, in one line, dials go there and the old pod's session is closed. That one
// deleted too, none is left: the session ends with a line that says so.
func TestFollowerReplacesGonePod(t *testing.T) {
	w := newFollowWorld(t, "deploy/api", true)
	first := w.first.p.Name // the most recently started: api-b
	other := map[string]string{"api-a": "api-b", "api-b": "api-a"}[first]
	if got := w.dialedPod(t); got != first {
		t.Fatalf("dialed pod %q, want %q", got, first)
	}
	w.waitWatch(t, first)
	if err := w.client.CoreV1().Pods("shop").Delete(context.Background(), first, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	var next *fakeLeg
	select {
	case next = <-w.started:
	case <-time.After(10 * time.Second):
		t.Fatal("no replacement was started")
	}
	if next.p.Name != other {
		t.Fatalf("replacement on pod %q, want %q", next.p.Name, other)
	}
	w.waitLine(t, fmt.Sprintf("pod %s went away (deleted); continuing on pod %s of deployment/api\n", first, other))
	if got := w.dialedPod(t); got != other {
		t.Errorf("dialed pod %q after the replacement, want %q", got, other)
	}
	if !w.first.closed.Load() {
		t.Error("the gone pod's session was not closed")
	}

	// The replacement's pod goes too, and its tunnel with it; no pod is left.
	w.waitWatch(t, other)
	if err := w.client.CoreV1().Pods("shop").Delete(context.Background(), other, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err := w.wait(t)
	want := fmt.Sprintf(`pod %s went away (deleted) and no other pod of deployment/api can take the session: no ready pod for deployment "api" in namespace "shop" (no pod matches selector "app=api")`, other)
	if err == nil || err.Error() != want {
		t.Errorf("Wait = %v, want %q", err, want)
	}
	if _, err := w.f.Dial(context.Background(), "tcp", "localhost:80"); err == nil {
		t.Error("Dial succeeded after the session ended")
	}
}

// TestFollowerTunnelLostPodThere: the tunnel ends while its pod is still there and ready (the
// network, not the pod): the session ends as before, on no other pod.
func TestFollowerTunnelLostPodThere(t *testing.T) {
	w := newFollowWorld(t, "deploy/api", true)
	close(w.first.done)
	err := w.wait(t)
	if err == nil || err.Error() != "lost the agent: every data connection to the agent is closed" {
		t.Errorf("Wait = %v, want the lost agent", err)
	}
	if len(w.started) != 0 {
		t.Error("a replacement was started for a pod that is still there")
	}
}

// TestFollowerKeepsNamedPod: pod/NAME is kept to the end, as kubectl does: its deletion ends the
// session.
func TestFollowerKeepsNamedPod(t *testing.T) {
	w := newFollowWorld(t, "pod/api-a", true)
	if err := w.client.CoreV1().Pods("shop").Delete(context.Background(), "api-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	close(w.first.done)
	if err := w.wait(t); err == nil || !strings.HasPrefix(err.Error(), "lost the agent: ") {
		t.Errorf("Wait = %v, want the lost agent", err)
	}
	if len(w.started) != 0 || w.errOut.String() != "" {
		t.Errorf("a named pod was replaced: %q", w.errOut.String())
	}
}

// TestFollowerEvictedSeenAtTunnelEnd: a user who may not watch pods learns of the eviction when the
// tunnel ends; the session goes on on the other pod.
func TestFollowerEvictedSeenAtTunnelEnd(t *testing.T) {
	w := newFollowWorld(t, "svc/api", false)
	first := w.first.p.DeepCopy()
	other := map[string]string{"api-a": "api-b", "api-b": "api-a"}[first.Name]
	first.Status.Phase, first.Status.Reason = corev1.PodFailed, "Evicted"
	if _, err := w.client.CoreV1().Pods("shop").UpdateStatus(context.Background(), first, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	close(w.first.done)
	w.waitLine(t, fmt.Sprintf("pod %s went away (evicted); continuing on pod %s of service/api\n", first.Name, other))
	if got := w.dialedPod(t); got != other {
		t.Errorf("dialed pod %q after the eviction, want %q", got, other)
	}
}

func TestGoneReason(t *testing.T) {
	joined := readyPod("api-a", time.Now())
	for _, tt := range []struct {
		name string
		edit func(*corev1.Pod)
		want string
	}{
		{"still there", func(*corev1.Pod) {}, ""},
		{"not ready is not gone", func(p *corev1.Pod) { p.Status.Conditions = nil }, ""},
		{"terminating", func(p *corev1.Pod) { p.DeletionTimestamp = &metav1.Time{} }, "terminating"},
		{"evicted", func(p *corev1.Pod) { p.Status.Phase, p.Status.Reason = corev1.PodFailed, "Evicted" }, "evicted"},
		{"failed", func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }, "phase Failed"},
		{"same name, new pod", func(p *corev1.Pod) { p.UID = "other" }, "deleted, and a new pod has its name"},
	} {
		now := joined.DeepCopy()
		tt.edit(now)
		if got := goneReason(joined, now); got != tt.want {
			t.Errorf("%s: goneReason = %q, want %q", tt.name, got, tt.want)
		}
	}
}
