package inject

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

const testAgent = "trafficlab-abcde"

// podWithAgent is the target pod after the patch, with the agent in the given state (zero: no status).
func podWithAgent(state corev1.ContainerState) *corev1.Pod {
	p := runningPod()
	p.ResourceVersion = "1"
	p.Spec.EphemeralContainers = []corev1.EphemeralContainer{{
		EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: testAgent, Image: testImage},
		TargetContainerName:      "app",
	}}
	if state != (corev1.ContainerState{}) {
		p.Status.EphemeralContainerStatuses = []corev1.ContainerStatus{{Name: testAgent, Image: testImage, State: state}}
	}
	return p
}

func waitingFor(reason, msg string) corev1.ContainerState {
	return corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
}

func TestWaitRunning(t *testing.T) {
	creating := waitingFor("ContainerCreating", "")
	tests := []struct {
		name    string
		initial *corev1.Pod
		events  func(w *watch.FakeWatcher)
		wantErr string // empty: the agent must be reported running
	}{
		{
			name:    "already running when listed",
			initial: podWithAgent(running()),
		},
		{
			name:    "running after creating",
			initial: podWithAgent(creating),
			events: func(w *watch.FakeWatcher) {
				w.Modify(podWithAgent(corev1.ContainerState{}))
				w.Modify(podWithAgent(running()))
			},
		},
		{
			name:    "another pod's events are ignored",
			initial: podWithAgent(creating),
			events: func(w *watch.FakeWatcher) {
				other := podWithAgent(waitingFor("ImagePullBackOff", "x"))
				other.Name = "other"
				w.Add(other)
				w.Delete(other)
				w.Modify(podWithAgent(running()))
			},
		},
		{
			name:    "image pull back-off fails fast with the image",
			initial: podWithAgent(creating),
			events: func(w *watch.FakeWatcher) {
				w.Modify(podWithAgent(waitingFor("ImagePullBackOff", `Back-off pulling image "ghcr.io/trafficlab/trafficlab-agent:v1.2.3"`)))
			},
			wantErr: `agent image "ghcr.io/trafficlab/trafficlab-agent:v1.2.3" cannot be pulled (ImagePullBackOff): Back-off pulling image "ghcr.io/trafficlab/trafficlab-agent:v1.2.3"; check the image name and that the node can reach its registry`,
		},
		{
			name:    "err image pull fails fast",
			initial: podWithAgent(waitingFor("ErrImagePull", "rpc error: not found")),
			wantErr: `agent image "ghcr.io/trafficlab/trafficlab-agent:v1.2.3" cannot be pulled (ErrImagePull): rpc error: not found; check the image name and that the node can reach its registry`,
		},
		{
			name:    "invalid image name fails fast",
			initial: podWithAgent(waitingFor("InvalidImageName", "")),
			wantErr: `agent image "ghcr.io/trafficlab/trafficlab-agent:v1.2.3" cannot be pulled (InvalidImageName); check the image name and that the node can reach its registry`,
		},
		{
			name:    "create container config error gives the runtime's reason and message",
			initial: podWithAgent(creating),
			events: func(w *watch.FakeWatcher) {
				w.Modify(podWithAgent(waitingFor("CreateContainerConfigError", "container has runAsNonRoot and image will run as root")))
			},
			wantErr: `agent "trafficlab-abcde" in pod "shop/web" cannot start (CreateContainerConfigError): container has runAsNonRoot and image will run as root`,
		},
		{
			name:    "run container error",
			initial: podWithAgent(waitingFor("RunContainerError", "exec: \"/trafficlab-agent\": no such file\n")),
			wantErr: `agent "trafficlab-abcde" in pod "shop/web" cannot start (RunContainerError): exec: "/trafficlab-agent": no such file`,
		},
		{
			name:    "terminated gives exit code, reason and a one-line message",
			initial: podWithAgent(creating),
			events: func(w *watch.FakeWatcher) {
				w.Modify(podWithAgent(corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
					ExitCode: 2, Reason: "Error", Message: "starting\nnftables: operation not permitted\n",
				}}))
			},
			wantErr: `agent "trafficlab-abcde" in pod "shop/web" exited with code 2 (Error): starting | nftables: operation not permitted`,
		},
		{
			name:    "pod deleted",
			initial: podWithAgent(creating),
			events: func(w *watch.FakeWatcher) {
				w.Delete(podWithAgent(creating))
			},
			wantErr: `pod "shop/web" was deleted while waiting for agent "trafficlab-abcde"`,
		},
		{
			name:    "pod being deleted",
			initial: podWithAgent(creating),
			events: func(w *watch.FakeWatcher) {
				p := podWithAgent(creating)
				p.DeletionTimestamp = &metav1.Time{Time: time.Now()}
				w.Modify(p)
			},
			wantErr: `pod "shop/web" is being deleted; the agent "trafficlab-abcde" cannot start`,
		},
		{
			name:    "pod stops running",
			initial: podWithAgent(creating),
			events: func(w *watch.FakeWatcher) {
				p := podWithAgent(creating)
				p.Status.Phase = corev1.PodFailed
				w.Modify(p)
			},
			wantErr: `pod "shop/web" stopped running (phase Failed) before agent "trafficlab-abcde" started`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset(tc.initial)
			w := watch.NewFakeWithChanSize(10, false)
			client.PrependWatchReactor("pods", func(k8stesting.Action) (bool, watch.Interface, error) {
				return true, w, nil
			})
			if tc.events != nil {
				tc.events(w)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			pod, err := WaitRunning(ctx, client, "shop", "web", testAgent)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("WaitRunning() error = %v", err)
				}
				if s := pod.Status.EphemeralContainerStatuses; len(s) != 1 || s[0].State.Running == nil {
					t.Errorf("WaitRunning() returned a pod whose agent is not running: %+v", s)
				}
				return
			}
			if err == nil || err.Error() != tc.wantErr {
				t.Errorf("WaitRunning() error =\n%v\nwant\n%s", err, tc.wantErr)
			}
		})
	}
}

func TestWaitRunningTimeoutSaysWhatItSaw(t *testing.T) {
	client := fake.NewClientset(podWithAgent(waitingFor("ContainerCreating", "")))
	client.PrependWatchReactor("pods", func(k8stesting.Action) (bool, watch.Interface, error) {
		return true, watch.NewFake(), nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()

	_, err := WaitRunning(ctx, client, "shop", "web", testAgent)
	want := `waiting for agent "trafficlab-abcde" in pod "shop/web" (last seen: waiting: ContainerCreating): `
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("WaitRunning() error = %v, want prefix %q", err, want)
	}
	t.Logf("timeout error: %v", err)
	if !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "timed out") {
		t.Errorf("WaitRunning() error does not say it timed out: %v", err)
	}
}
