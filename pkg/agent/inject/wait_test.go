package inject

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
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
	const (
		generic  = `check the image name and that the node can reach its registry, or mirror it, digest kept, into a registry the cluster can pull from (crane copy "ghcr.io/trafficlab/trafficlab-agent:v1.2.3" REGISTRY/PATH/trafficlab-agent:v1.2.3) and use --agent-registry REGISTRY/PATH or --agent-image`
		denied   = `failed to pull and unpack image "ghcr.io/trafficlab/trafficlab-agent:v1.2.3": failed to resolve reference "ghcr.io/trafficlab/trafficlab-agent:v1.2.3": failed to authorize: failed to fetch anonymous token: unexpected status from GET request to https://ghcr.io/token: 401 Unauthorized`
		refused  = `failed to pull and unpack image "127.0.0.1:1/trafficlab-agent:missing": failed to resolve reference: dial tcp 127.0.0.1:1: connect: connection refused`
		backOff  = `Back-off pulling image "ghcr.io/trafficlab/trafficlab-agent:v1.2.3"`
		hourLong = time.Hour
	)
	withSecrets := func(p *corev1.Pod) *corev1.Pod {
		p.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "regcred"}, {Name: "mirror"}}
		return p
	}
	tests := []struct {
		name    string
		initial *corev1.Pod
		events  func(w *watch.FakeWatcher)
		// grace is WaitOptions.PullGrace.
		grace        time.Duration
		wantErr      string // empty: the agent must be reported running
		wantProgress []string
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
			wantErr: `agent image "ghcr.io/trafficlab/trafficlab-agent:v1.2.3" cannot be pulled (ImagePullBackOff): Back-off pulling image "ghcr.io/trafficlab/trafficlab-agent:v1.2.3"; ` + generic,
		},
		{
			name:    "err image pull of a missing image names it and the flags",
			initial: podWithAgent(waitingFor("ErrImagePull", `rpc error: code = NotFound desc = failed to pull and unpack image "x": failed to resolve reference "x": x: not found`)),
			wantErr: `agent image "ghcr.io/trafficlab/trafficlab-agent:v1.2.3" cannot be pulled (ErrImagePull): rpc error: code = NotFound desc = failed to pull and unpack image "x": failed to resolve reference "x": x: not found; the registry has no image "ghcr.io/trafficlab/trafficlab-agent:v1.2.3": push it there, or name one the cluster can pull with --agent-image or --agent-registry`,
		},
		{
			name:    "a registry that refuses the credentials: the pod has no pull secrets",
			initial: podWithAgent(waitingFor("ErrImagePull", denied)),
			wantErr: `agent image "ghcr.io/trafficlab/trafficlab-agent:v1.2.3" cannot be pulled (ErrImagePull): ` + denied + `; the registry refused the credentials: an ephemeral container is pulled with its pod's imagePullSecrets (pod "shop/web" has none) or the node's own credentials, which cannot be changed for it; mirror it, digest kept, into a registry the cluster can pull from (crane copy "ghcr.io/trafficlab/trafficlab-agent:v1.2.3" REGISTRY/PATH/trafficlab-agent:v1.2.3) and use --agent-registry REGISTRY/PATH or --agent-image`,
		},
		{
			name:    "a registry that refuses the credentials: the pod's pull secrets are named",
			initial: withSecrets(podWithAgent(waitingFor("ImagePullBackOff", `Back-off pulling image "x": ErrImagePull: pull access denied, repository does not exist or may require authorization`))),
			wantErr: `agent image "ghcr.io/trafficlab/trafficlab-agent:v1.2.3" cannot be pulled (ImagePullBackOff): Back-off pulling image "x": ErrImagePull: pull access denied, repository does not exist or may require authorization; the registry refused the credentials: an ephemeral container is pulled with its pod's imagePullSecrets (pod "shop/web" has "regcred", "mirror") or the node's own credentials, which cannot be changed for it; mirror it, digest kept, into a registry the cluster can pull from (crane copy "ghcr.io/trafficlab/trafficlab-agent:v1.2.3" REGISTRY/PATH/trafficlab-agent:v1.2.3) and use --agent-registry REGISTRY/PATH or --agent-image`,
		},
		{
			name:    "invalid image name fails fast",
			initial: podWithAgent(waitingFor("InvalidImageName", "")),
			wantErr: `agent image "ghcr.io/trafficlab/trafficlab-agent:v1.2.3" cannot be pulled (InvalidImageName); the node refuses the reference: name a valid one with --agent-image or --agent-registry`,
		},
		{
			name:    "never pull says to load the image or change the policy",
			initial: podWithAgent(waitingFor("ErrImageNeverPull", `Container image "x" is not present with pull policy of Never`)),
			wantErr: `agent image "ghcr.io/trafficlab/trafficlab-agent:v1.2.3" cannot be pulled (ErrImageNeverPull): Container image "x" is not present with pull policy of Never; the pull policy is Never and the node does not have the image: load it onto the node or use --image-pull-policy IfNotPresent`,
		},
		{
			name:    "a reused agent in back-off is waited on, and the kubelet's retry starts it",
			initial: podWithAgent(waitingFor("ImagePullBackOff", backOff)),
			grace:   hourLong,
			events: func(w *watch.FakeWatcher) {
				w.Modify(podWithAgent(waitingFor("ImagePullBackOff", backOff)))
				w.Modify(podWithAgent(running()))
			},
			wantProgress: []string{"ImagePullBackOff: " + backOff},
		},
		{
			name:    "a reused agent whose retry fails while watched ends the wait at once",
			initial: podWithAgent(waitingFor("ImagePullBackOff", "Back-off pulling image \"127.0.0.1:1/trafficlab-agent:missing\": ErrImagePull: "+refused)),
			grace:   hourLong,
			events: func(w *watch.FakeWatcher) {
				w.Modify(podWithAgent(waitingFor("ErrImagePull", refused)))
			},
			wantErr: `agent image "ghcr.io/trafficlab/trafficlab-agent:v1.2.3" cannot be pulled (ErrImagePull): ` + refused + `; ` + generic,
			wantProgress: []string{
				"ImagePullBackOff: Back-off pulling image \"127.0.0.1:1/trafficlab-agent:missing\": ErrImagePull: " + refused,
			},
		},
		{
			name:         "a reused agent still in back-off when the grace ends fails with the kubelet's reason",
			initial:      podWithAgent(waitingFor("ImagePullBackOff", backOff)),
			grace:        time.Millisecond,
			wantErr:      `agent image "ghcr.io/trafficlab/trafficlab-agent:v1.2.3" cannot be pulled (ImagePullBackOff): ` + backOff + `; ` + generic,
			wantProgress: []string{"ImagePullBackOff: " + backOff},
		},
		{
			// A grace shorter than any list: it starts when the failure is read, so the state is
			// still told and the grace's end is what fails the wait (CI once lost a 1 ms grace to
			// a slow list and got the error with no progress).
			name:         "a grace that is over before the list returns still starts at the state it waits on",
			initial:      podWithAgent(waitingFor("ImagePullBackOff", backOff)),
			grace:        time.Nanosecond,
			wantErr:      `agent image "ghcr.io/trafficlab/trafficlab-agent:v1.2.3" cannot be pulled (ImagePullBackOff): ` + backOff + `; ` + generic,
			wantProgress: []string{"ImagePullBackOff: " + backOff},
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

			var progress []string
			pod, err := WaitRunning(ctx, client, "shop", "web", testAgent, WaitOptions{
				PullGrace: tc.grace,
				Progress:  func(state string) { progress = append(progress, state) },
			})
			if diff := cmp.Diff(tc.wantProgress, progress); diff != "" {
				t.Errorf("WaitRunning() progress (-want +got):\n%s", diff)
			}
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

	_, err := WaitRunning(ctx, client, "shop", "web", testAgent, WaitOptions{})
	want := `waiting for agent "trafficlab-abcde" in pod "shop/web" (last seen: waiting: ContainerCreating): `
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("WaitRunning() error = %v, want prefix %q", err, want)
	}
	t.Logf("timeout error: %v", err)
	if !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "timed out") {
		t.Errorf("WaitRunning() error does not say it timed out: %v", err)
	}
}
