package inject

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

type existing struct {
	name   string
	image  string
	caps   []corev1.Capability
	state  corev1.ContainerState // zero: no status yet
	policy corev1.PullPolicy
}

func running() corev1.ContainerState {
	return corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
}

func podWith(agents ...existing) *corev1.Pod {
	p := testPod()
	for _, a := range agents {
		p.Spec.EphemeralContainers = append(p.Spec.EphemeralContainers, corev1.EphemeralContainer{
			EphemeralContainerCommon: corev1.EphemeralContainerCommon{
				Name:            a.name,
				Image:           a.image,
				ImagePullPolicy: a.policy,
				SecurityContext: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{
					Add: a.caps, Drop: []corev1.Capability{"ALL"},
				}},
			},
		})
		if a.state != (corev1.ContainerState{}) {
			p.Status.EphemeralContainerStatuses = append(p.Status.EphemeralContainerStatuses,
				corev1.ContainerStatus{Name: a.name, State: a.state})
		}
	}
	return p
}

func TestFindReusable(t *testing.T) {
	const oldImage = "ghcr.io/trafficlab/trafficlab-agent:v1.0.0"
	tests := []struct {
		name     string
		pod      *corev1.Pod
		caps     Capabilities
		policy   corev1.PullPolicy
		wantName string
		wantOK   bool
		wantWhy  string
		// wantWaiting: the reused agent waits on its image pull, in this state.
		wantWaiting string
	}{
		{
			name: "no agent",
			pod:  testPod(),
		},
		{
			name:     "running agent without capabilities serves port-forward",
			pod:      podWith(existing{"trafficlab-aaaaa", testImage, nil, running(), ""}),
			wantName: "trafficlab-aaaaa", wantOK: true,
		},
		{
			name:     "agent with more capabilities than needed is reused",
			pod:      podWith(existing{"trafficlab-aaaaa", testImage, []corev1.Capability{"NET_ADMIN", "NET_RAW"}, running(), ""}),
			caps:     NetRaw,
			wantName: "trafficlab-aaaaa", wantOK: true,
		},
		{
			name:    "agent lacking NET_ADMIN is not reused and says why",
			pod:     podWith(existing{"trafficlab-abcde", testImage, nil, running(), ""}),
			caps:    NetAdmin,
			wantWhy: "the running agent trafficlab-abcde lacks NET_ADMIN; adding another (ephemeral containers cannot change)",
		},
		{
			name:    "agent with NET_RAW lacks NET_ADMIN for steal",
			pod:     podWith(existing{"trafficlab-abcde", testImage, []corev1.Capability{"NET_RAW"}, running(), ""}),
			caps:    NetAdmin | NetRaw,
			wantWhy: "the running agent trafficlab-abcde lacks NET_ADMIN; adding another (ephemeral containers cannot change)",
		},
		{
			name:    "agent of another version is not reused",
			pod:     podWith(existing{"trafficlab-aaaaa", oldImage, nil, running(), ""}),
			wantWhy: `the running agent trafficlab-aaaaa uses image "ghcr.io/trafficlab/trafficlab-agent:v1.0.0", not "ghcr.io/trafficlab/trafficlab-agent:v1.2.3"; adding another`,
		},
		{
			name: "exited and starting agents are not reused and need no explanation",
			pod: podWith(
				existing{"trafficlab-aaaaa", testImage, nil, corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "Completed"}}, ""},
				existing{"trafficlab-bbbbb", testImage, nil, corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}, ""},
				existing{"trafficlab-ccccc", testImage, nil, corev1.ContainerState{}, ""},
			),
		},
		{
			name: "a debug container with the same image is not an agent",
			pod:  podWith(existing{"debugger-xyz12", testImage, nil, running(), ""}),
		},
		{
			name: "the newest fitting agent wins over an older one and a lacking one",
			pod: podWith(
				existing{"trafficlab-aaaaa", testImage, []corev1.Capability{"NET_ADMIN"}, running(), ""},
				existing{"trafficlab-bbbbb", testImage, []corev1.Capability{"NET_ADMIN"}, running(), ""},
				existing{"trafficlab-ccccc", testImage, nil, running(), ""},
			),
			caps:     NetAdmin,
			wantName: "trafficlab-bbbbb", wantOK: true,
		},
		{
			name:     "an agent waiting on its image pull is waited on instead of adding another",
			pod:      podWith(existing{name: "trafficlab-aaaaa", image: testImage, caps: []corev1.Capability{"NET_ADMIN"}, state: waitingFor("ImagePullBackOff", `Back-off pulling image "x"`)}),
			caps:     NetAdmin,
			wantName: "trafficlab-aaaaa", wantOK: true,
			wantWaiting: `ImagePullBackOff: Back-off pulling image "x"`,
		},
		{
			name:     "every pull reason counts",
			pod:      podWith(existing{name: "trafficlab-aaaaa", image: testImage, state: waitingFor("ErrImagePull", "dial tcp 127.0.0.1:1: connect: connection refused")}),
			wantName: "trafficlab-aaaaa", wantOK: true,
			wantWaiting: "ErrImagePull: dial tcp 127.0.0.1:1: connect: connection refused",
		},
		{
			name: "a running agent wins over a newer one waiting on its pull",
			pod: podWith(
				existing{name: "trafficlab-aaaaa", image: testImage, state: running()},
				existing{name: "trafficlab-bbbbb", image: testImage, state: waitingFor("ImagePullBackOff", "")},
			),
			wantName: "trafficlab-aaaaa", wantOK: true,
		},
		{
			name:    "an agent waiting on the pull of another image is not waited on",
			pod:     podWith(existing{name: "trafficlab-aaaaa", image: oldImage, state: waitingFor("ErrImagePull", "")}),
			wantWhy: `the agent waiting on its image pull trafficlab-aaaaa uses image "ghcr.io/trafficlab/trafficlab-agent:v1.0.0", not "ghcr.io/trafficlab/trafficlab-agent:v1.2.3"; adding another`,
		},
		{
			name:    "an agent waiting on its pull without the capabilities is not waited on",
			pod:     podWith(existing{name: "trafficlab-aaaaa", image: testImage, state: waitingFor("ErrImagePull", "")}),
			caps:    NetAdmin,
			wantWhy: "the agent waiting on its image pull trafficlab-aaaaa lacks NET_ADMIN; adding another (ephemeral containers cannot change)",
		},
		{
			name:    "an agent waiting on its pull with another pull policy is not waited on",
			pod:     podWith(existing{name: "trafficlab-aaaaa", image: testImage, state: waitingFor("ErrImageNeverPull", ""), policy: corev1.PullNever}),
			policy:  corev1.PullIfNotPresent,
			wantWhy: `the agent waiting on its image pull trafficlab-aaaaa has pull policy "Never", not "IfNotPresent"; adding another`,
		},
		{
			name:     "capabilities spelled with CAP_ prefix count",
			pod:      podWith(existing{"trafficlab-aaaaa", testImage, []corev1.Capability{"CAP_NET_ADMIN"}, running(), ""}),
			caps:     NetAdmin,
			wantName: "trafficlab-aaaaa", wantOK: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			agent, ok, why := FindReusable(tc.pod, AgentSpec{Image: testImage, Capabilities: tc.caps, PullPolicy: tc.policy})
			want := Reusable{Name: tc.wantName, Waiting: tc.wantWaiting}
			if agent != want || ok != tc.wantOK || why != tc.wantWhy {
				t.Errorf("FindReusable() = (%+v, %v, %q), want (%+v, %v, %q)", agent, ok, why, want, tc.wantOK, tc.wantWhy)
			}
		})
	}
}
