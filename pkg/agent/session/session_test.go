package session

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
)

func TestIdleTimeout(t *testing.T) {
	for _, tt := range []struct {
		name    string
		set     bool
		d       time.Duration
		caps    inject.Capabilities
		want    time.Duration
		wantErr string
	}{
		{name: "default without capabilities", d: DefaultIdleTimeout, want: DefaultIdleTimeout},
		{name: "never, without capabilities", set: true, d: 0, want: 0},
		{name: "default for NET_ADMIN is short", d: DefaultIdleTimeout, caps: inject.NetAdmin, want: DefaultPrivilegedIdleTimeout},
		{name: "default for NET_RAW is short", d: DefaultIdleTimeout, caps: inject.NetRaw, want: DefaultPrivilegedIdleTimeout},
		{name: "chosen for NET_ADMIN", set: true, d: 5 * time.Minute, caps: inject.NetAdmin, want: 5 * time.Minute},
		{
			name: "never refused for NET_ADMIN", set: true, d: 0, caps: inject.NetAdmin,
			wantErr: `--agent-idle-timeout must be from 1s to 10m0s for an agent with NET_ADMIN, which anyone allowed to exec into the pod can use while it stays, not "0s"`,
		},
		{
			name: "too long refused for NET_RAW", set: true, d: time.Hour, caps: inject.NetRaw,
			wantErr: `--agent-idle-timeout must be from 1s to 10m0s for an agent with NET_RAW, which anyone allowed to exec into the pod can use while it stays, not "1h0m0s"`,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := NewOptions()
			o.AgentIdleTimeout, o.AgentIdleTimeoutSet = tt.d, tt.set
			got, err := o.idleTimeout(tt.caps)
			if errString(err) != tt.wantErr || got != tt.want {
				t.Errorf("idleTimeout(%v) = %v, %q; want %v, %q", tt.caps, got, errString(err), tt.want, tt.wantErr)
			}
		})
	}
}

// The flag remembers that it was given, even with the default's value.
func TestIdleTimeoutFlag(t *testing.T) {
	o := NewOptions()
	fs := pflagSet(&o)
	if err := fs.Parse([]string{"--agent-idle-timeout=10m"}); err != nil {
		t.Fatal(err)
	}
	if !o.AgentIdleTimeoutSet || o.AgentIdleTimeout != 10*time.Minute {
		t.Errorf("after --agent-idle-timeout=10m: %v, set %v", o.AgentIdleTimeout, o.AgentIdleTimeoutSet)
	}
	if _, err := o.idleTimeout(inject.NetAdmin); err != nil {
		t.Errorf("10m for NET_ADMIN refused: %v", err)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// reusablePod is a running pod with a running agent of image that has caps.
func reusablePod(image string, caps ...corev1.Capability) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", ResourceVersion: "1"},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "app", Image: "nginx"}},
			EphemeralContainers: []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
				Name: "trafficlab-aaaaa", Image: image,
				SecurityContext: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: caps, Drop: []corev1.Capability{"ALL"}}},
			}}},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning,
			EphemeralContainerStatuses: []corev1.ContainerStatus{{
				Name: "trafficlab-aaaaa", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}},
			}},
		},
	}
}

// M8: a user who may exec into the pod but not add ephemeral containers is refused a leftover NET_ADMIN
// agent, before the plugin execs into it, as they would be refused adding one.
func TestReusePrivilegedAgentNeedsEphemeralContainersPermission(t *testing.T) {
	o := NewOptions()
	client := fake.NewClientset(reusablePod(o.AgentImage, "NET_ADMIN"))
	client.Resources = []*metav1.APIResourceList{{GroupVersion: "v1", APIResources: []metav1.APIResource{
		{Name: "pods"}, {Name: "pods/exec"}, {Name: "pods/ephemeralcontainers"},
	}}}
	client.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		review := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview).DeepCopy()
		// Everything but pods/ephemeralcontainers.
		review.Status.Allowed = review.Spec.ResourceAttributes.Subresource != "ephemeralcontainers"
		return true, review, nil
	})
	var out bytes.Buffer
	_, err := Start(context.Background(), target.Kube{Client: client}, o, Request{
		Target:       target.Options{Namespace: "shop", Resource: "pod/web"},
		Capabilities: inject.NetAdmin,
	}, &out)
	var missing *inject.MissingPermissionError
	if !errors.As(err, &missing) {
		t.Fatalf("Start() = %v, want a missing permission; output:\n%s", err, out.String())
	}
	if diff := cmp.Diff([]inject.Rule{{Resource: "pods/ephemeralcontainers", Verbs: []string{"patch"}}}, missing.Rules); diff != "" {
		t.Errorf("missing rules (-want +got):\n%s", diff)
	}
}

func TestRestarted(t *testing.T) {
	pod := func(restarts int32, last *corev1.ContainerStateTerminated) *corev1.Pod {
		return &corev1.Pod{Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
			{Name: "app", RestartCount: restarts, LastTerminationState: corev1.ContainerState{Terminated: last}},
			{Name: "cache", RestartCount: 2},
		}}}
	}
	for _, tt := range []struct {
		name          string
		before, after *corev1.Pod
		want          []string
	}{
		{name: "nothing changed", before: pod(0, nil), after: pod(0, nil)},
		{
			name: "killed", before: pod(0, nil), after: pod(1, &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "Error"}),
			want: []string{`container "app" restarted (exit code 137); the session goes on`},
		},
		{
			name: "out of memory", before: pod(1, nil), after: pod(2, &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "OOMKilled"}),
			want: []string{`container "app" restarted (exit code 137, OOMKilled); the session goes on`},
		},
		{
			name: "no last state", before: pod(0, nil), after: pod(1, nil),
			want: []string{`container "app" restarted (exit code unknown); the session goes on`},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, restarted(tt.before, tt.after)); diff != "" {
				t.Errorf("restarted (-want +got):\n%s", diff)
			}
		})
	}
}

// The pod watch reports a restart as it happens, and after a watch error goes on from the pod's
// current state.
func TestWatchRestarts(t *testing.T) {
	before := reusablePod("img")
	before.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app"}}
	client := fake.NewClientset()
	watches := make(chan *watch.FakeWatcher, 2)
	var rvs []string
	client.PrependWatchReactor("pods", func(a k8stesting.Action) (bool, watch.Interface, error) {
		rvs = append(rvs, a.(k8stesting.WatchActionImpl).GetWatchRestrictions().ResourceVersion)
		w := watch.NewFakeWithChanSize(4, false)
		watches <- w
		return true, w, nil
	})
	lines := make(chan string, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchRestarts(ctx, client, before, func(l string) { lines <- l })
	}()
	w := <-watches
	after := before.DeepCopy()
	after.ResourceVersion = "2"
	after.Status.ContainerStatuses[0].RestartCount = 1
	after.Status.ContainerStatuses[0].LastTerminationState.Terminated = &corev1.ContainerStateTerminated{ExitCode: 137}
	w.Modify(after)
	if got, want := <-lines, `container "app" restarted (exit code 137); the session goes on`; got != want {
		t.Errorf("reported %q, want %q", got, want)
	}
	w.Error(&metav1.Status{Code: 410})
	w.Stop()
	<-watches
	cancel()
	<-done
	if diff := cmp.Diff([]string{"1", ""}, rvs); diff != "" {
		t.Errorf("watched from versions (-want +got):\n%s", diff)
	}
}

func pflagSet(o *Options) *pflag.FlagSet {
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	o.AddFlags(fs)
	return fs
}

// The failed agent stays in the pod and the kubelet retries its pull, so the next session waits on it
// instead of adding another; a retry that fails while it waits ends the session with the reason.
func TestStartWaitsOnAgentWhosePullFailed(t *testing.T) {
	o := NewOptions()
	pod := reusablePod(o.AgentImage)
	backOff := corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff", Message: `Back-off pulling image "x"`}}
	pod.Status.EphemeralContainerStatuses[0].State = backOff
	client := fake.NewClientset(pod)
	client.Resources = []*metav1.APIResourceList{{GroupVersion: "v1", APIResources: []metav1.APIResource{
		{Name: "pods"}, {Name: "pods/exec"}, {Name: "pods/portforward"}, {Name: "pods/ephemeralcontainers"},
	}}}
	client.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		review := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview).DeepCopy()
		review.Status.Allowed = true
		return true, review, nil
	})
	patches := 0
	client.PrependReactor("patch", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		patches++
		return true, nil, errors.New("no patch expected")
	})
	w := watch.NewFakeWithChanSize(10, false)
	client.PrependWatchReactor("pods", func(k8stesting.Action) (bool, watch.Interface, error) { return true, w, nil })
	failed := pod.DeepCopy()
	failed.Status.EphemeralContainerStatuses[0].State.Waiting = &corev1.ContainerStateWaiting{Reason: "ErrImagePull", Message: "dial tcp 127.0.0.1:1: connect: connection refused"}
	w.Modify(failed)

	var out bytes.Buffer
	_, err := Start(context.Background(), target.Kube{Client: client}, o, Request{
		Target: target.Options{Namespace: "shop", Resource: "pod/web"},
	}, &out)
	var pull *inject.ImagePullError
	if !errors.As(err, &pull) || pull.Reason != "ErrImagePull" {
		t.Fatalf("Start() = %v, want the retry's ErrImagePull; output:\n%s", err, out.String())
	}
	if patches != 0 {
		t.Errorf("%d patches: another agent was added", patches)
	}
	if want := `waiting for agent trafficlab-aaaaa in pod shop/web (ImagePullBackOff: Back-off pulling image "x")`; !strings.Contains(out.String(), want) {
		t.Errorf("output does not say %q:\n%s", want, out.String())
	}
	if n := strings.Count(out.String(), "ImagePullBackOff"); n != 1 {
		t.Errorf("the back-off is told %d times, want once:\n%s", n, out.String())
	}
}
