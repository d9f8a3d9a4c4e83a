package inject

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

type existing struct {
	name  string
	image string
	caps  []corev1.Capability
	state corev1.ContainerState // zero: no status yet
}

func running() corev1.ContainerState {
	return corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
}

func podWith(agents ...existing) *corev1.Pod {
	p := testPod()
	for _, a := range agents {
		p.Spec.EphemeralContainers = append(p.Spec.EphemeralContainers, corev1.EphemeralContainer{
			EphemeralContainerCommon: corev1.EphemeralContainerCommon{
				Name:  a.name,
				Image: a.image,
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
		wantName string
		wantOK   bool
		wantWhy  string
	}{
		{
			name: "no agent",
			pod:  testPod(),
		},
		{
			name:     "running agent without capabilities serves port-forward",
			pod:      podWith(existing{"trafficlab-aaaaa", testImage, nil, running()}),
			wantName: "trafficlab-aaaaa", wantOK: true,
		},
		{
			name:     "agent with more capabilities than needed is reused",
			pod:      podWith(existing{"trafficlab-aaaaa", testImage, []corev1.Capability{"NET_ADMIN", "NET_RAW"}, running()}),
			caps:     NetRaw,
			wantName: "trafficlab-aaaaa", wantOK: true,
		},
		{
			name:    "agent lacking NET_ADMIN is not reused and says why",
			pod:     podWith(existing{"trafficlab-abcde", testImage, nil, running()}),
			caps:    NetAdmin,
			wantWhy: "the running agent trafficlab-abcde lacks NET_ADMIN; adding another (ephemeral containers cannot change)",
		},
		{
			name:    "agent with NET_RAW lacks NET_ADMIN for steal",
			pod:     podWith(existing{"trafficlab-abcde", testImage, []corev1.Capability{"NET_RAW"}, running()}),
			caps:    NetAdmin | NetRaw,
			wantWhy: "the running agent trafficlab-abcde lacks NET_ADMIN; adding another (ephemeral containers cannot change)",
		},
		{
			name:    "agent of another version is not reused",
			pod:     podWith(existing{"trafficlab-aaaaa", oldImage, nil, running()}),
			wantWhy: `the running agent trafficlab-aaaaa uses image "ghcr.io/trafficlab/trafficlab-agent:v1.0.0", not "ghcr.io/trafficlab/trafficlab-agent:v1.2.3"; adding another`,
		},
		{
			name: "exited and starting agents are not reused and need no explanation",
			pod: podWith(
				existing{"trafficlab-aaaaa", testImage, nil, corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "Completed"}}},
				existing{"trafficlab-bbbbb", testImage, nil, corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}},
				existing{"trafficlab-ccccc", testImage, nil, corev1.ContainerState{}},
			),
		},
		{
			name: "a debug container with the same image is not an agent",
			pod:  podWith(existing{"debugger-xyz12", testImage, nil, running()}),
		},
		{
			name: "the newest fitting agent wins over an older one and a lacking one",
			pod: podWith(
				existing{"trafficlab-aaaaa", testImage, []corev1.Capability{"NET_ADMIN"}, running()},
				existing{"trafficlab-bbbbb", testImage, []corev1.Capability{"NET_ADMIN"}, running()},
				existing{"trafficlab-ccccc", testImage, nil, running()},
			),
			caps:     NetAdmin,
			wantName: "trafficlab-bbbbb", wantOK: true,
		},
		{
			name:     "capabilities spelled with CAP_ prefix count",
			pod:      podWith(existing{"trafficlab-aaaaa", testImage, []corev1.Capability{"CAP_NET_ADMIN"}, running()}),
			caps:     NetAdmin,
			wantName: "trafficlab-aaaaa", wantOK: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name, ok, why := FindReusable(tc.pod, AgentSpec{Image: testImage, Capabilities: tc.caps})
			if name != tc.wantName || ok != tc.wantOK || why != tc.wantWhy {
				t.Errorf("FindReusable() = (%q, %v, %q), want (%q, %v, %q)", name, ok, why, tc.wantName, tc.wantOK, tc.wantWhy)
			}
		})
	}
}
