package inject

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
)

const testImage = "ghcr.io/trafficlab/trafficlab-agent:v1.2.3"

// suffixes returns a NameSuffix func that yields the given suffixes in order, then repeats the last.
func suffixes(s ...string) func(int) string {
	i := 0
	return func(n int) string {
		out := s[min(i, len(s)-1)]
		i++
		if len(out) != n {
			panic("test suffix of wrong length")
		}
		return out
	}
}

func testPod() *corev1.Pod {
	return &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}}}
}

// agent is the container every profile shares; each case then states only what differs.
func agent(name string, mutate func(*corev1.EphemeralContainer)) corev1.EphemeralContainer {
	c := corev1.EphemeralContainer{
		EphemeralContainerCommon: corev1.EphemeralContainerCommon{
			Name:    name,
			Image:   testImage,
			Command: []string{"/trafficlab-agent"},
			Args:    []string{"--name=" + name, "--idle-timeout=5m0s"},
			Env:     []corev1.EnvVar{{Name: "GOMEMLIMIT", Value: "64MiB"}},
			SecurityContext: &corev1.SecurityContext{
				Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				RunAsUser:                ptr.To[int64](47301),
				RunAsGroup:               ptr.To[int64](47301),
				RunAsNonRoot:             ptr.To(true),
				AllowPrivilegeEscalation: ptr.To(false),
				ReadOnlyRootFilesystem:   ptr.To(true),
				SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		},
	}
	if mutate != nil {
		mutate(&c)
	}
	return c
}

func asRoot(add ...corev1.Capability) func(*corev1.EphemeralContainer) {
	return func(c *corev1.EphemeralContainer) {
		c.SecurityContext.Capabilities.Add = add
		c.SecurityContext.RunAsUser = ptr.To[int64](0)
		c.SecurityContext.RunAsGroup = nil
		c.SecurityContext.RunAsNonRoot = ptr.To(false)
	}
}

func TestBuildAgentContainer(t *testing.T) {
	base := AgentSpec{
		Image:            testImage,
		IdleTimeout:      5 * time.Minute,
		MemoryLimitBytes: 64 << 20,
	}
	with := func(f func(*AgentSpec)) AgentSpec {
		s := base
		s.NameSuffix = suffixes("abcde")
		f(&s)
		return s
	}

	tests := []struct {
		name string
		pod  *corev1.Pod
		spec AgentSpec
		want corev1.EphemeralContainer
	}{
		{
			name: "no capability (port-forward, outgoing) runs as trafficlab's own non-root UID",
			pod:  testPod(),
			spec: with(func(*AgentSpec) {}),
			want: agent("trafficlab-abcde", nil),
		},
		{
			name: "NET_ADMIN (steal) runs as root with only NET_ADMIN",
			pod:  testPod(),
			spec: with(func(s *AgentSpec) { s.Capabilities = NetAdmin }),
			want: agent("trafficlab-abcde", asRoot("NET_ADMIN")),
		},
		{
			name: "NET_RAW (sniff) runs as root keeping the runtime's NET_RAW, adding nothing and dropping every other capability by name (PodSecurity baseline admits it)",
			pod:  testPod(),
			spec: with(func(s *AgentSpec) { s.Capabilities = NetRaw }),
			want: agent("trafficlab-abcde", func(c *corev1.EphemeralContainer) {
				asRoot()(c)
				c.SecurityContext.Capabilities.Drop = []corev1.Capability{
					"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
					"SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "IPC_LOCK",
					"IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN",
					"SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE",
					"AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
					"BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
				}
			}),
		},
		{
			name: "NET_RAW added for runtimes without it by default",
			pod:  testPod(),
			spec: with(func(s *AgentSpec) { s.Capabilities = NetRaw; s.AddNetRaw = true }),
			want: agent("trafficlab-abcde", asRoot("NET_RAW")),
		},
		{
			name: "both capabilities",
			pod:  testPod(),
			spec: with(func(s *AgentSpec) { s.Capabilities = NetAdmin | NetRaw }),
			want: agent("trafficlab-abcde", asRoot("NET_ADMIN", "NET_RAW")),
		},
		{
			name: "restricted mode never adds capabilities nor runs as root",
			pod:  testPod(),
			spec: with(func(s *AgentSpec) { s.Capabilities = NetRaw; s.Restricted = true }),
			want: agent("trafficlab-abcde", nil),
		},
		{
			name: "name collision with a container, an init container and an earlier agent draws again",
			pod: &corev1.Pod{Spec: corev1.PodSpec{
				InitContainers: []corev1.Container{{Name: "trafficlab-bbbbb"}},
				Containers:     []corev1.Container{{Name: "app"}, {Name: "trafficlab-aaaaa"}},
				EphemeralContainers: []corev1.EphemeralContainer{
					{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "trafficlab-ccccc"}},
				},
			}},
			spec: func() AgentSpec {
				s := with(func(*AgentSpec) {})
				s.NameSuffix = suffixes("aaaaa", "bbbbb", "ccccc", "ddddd")
				return s
			}(),
			want: agent("trafficlab-ddddd", nil),
		},
		{
			name: "a suffix func that always collides still ends",
			pod: &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{
				{Name: "app"}, {Name: "trafficlab-aaaaa"}, {Name: "trafficlab-00000"},
			}}},
			spec: func() AgentSpec {
				s := with(func(*AgentSpec) {})
				s.NameSuffix = suffixes("aaaaa")
				return s
			}(),
			want: agent("trafficlab-00001", nil),
		},
		{
			name: "pull policy, other timeout, no memory limit, odd byte count",
			pod:  testPod(),
			spec: with(func(s *AgentSpec) {
				s.PullPolicy = corev1.PullAlways
				s.IdleTimeout = 90 * time.Second
				s.MemoryLimitBytes = 0
			}),
			want: agent("trafficlab-abcde", func(c *corev1.EphemeralContainer) {
				c.ImagePullPolicy = corev1.PullAlways
				c.Args = []string{"--name=trafficlab-abcde", "--idle-timeout=1m30s"}
				c.Env = nil
			}),
		},
		{
			name: "zero idle timeout is passed on: never",
			pod:  testPod(),
			spec: with(func(s *AgentSpec) { s.IdleTimeout = 0 }),
			want: agent("trafficlab-abcde", func(c *corev1.EphemeralContainer) {
				c.Args = []string{"--name=trafficlab-abcde", "--idle-timeout=0s"}
			}),
		},
		{
			name: "memory budget in bytes",
			pod:  testPod(),
			spec: with(func(s *AgentSpec) { s.MemoryBudget = 256 << 20 }),
			want: agent("trafficlab-abcde", func(c *corev1.EphemeralContainer) {
				c.Env = []corev1.EnvVar{{Name: "GOMEMLIMIT", Value: "64MiB"}, {Name: "TRAFFICLAB_MEMORY_BUDGET", Value: "268435456"}}
			}),
		},
		{
			name: "memory limit not a whole MiB is written in KiB",
			pod:  testPod(),
			spec: with(func(s *AgentSpec) { s.MemoryLimitBytes = 64<<20 + 512<<10 }),
			want: agent("trafficlab-abcde", func(c *corev1.EphemeralContainer) {
				c.Env = []corev1.EnvVar{{Name: "GOMEMLIMIT", Value: "66048KiB"}}
			}),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.pod.DeepCopy()
			got := BuildAgentContainer(tc.pod, tc.spec)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("BuildAgentContainer() mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(before, tc.pod); diff != "" {
				t.Errorf("BuildAgentContainer() changed the pod (-before +after):\n%s", diff)
			}
		})
	}
}

// The API forbids ports, probes, lifecycle and resources on ephemeral containers; keep them empty
// whatever the spec says.
func TestBuildAgentContainerHasNoForbiddenFields(t *testing.T) {
	for _, caps := range []Capabilities{0, NetAdmin, NetRaw, NetAdmin | NetRaw} {
		c := BuildAgentContainer(testPod(), AgentSpec{Image: testImage, Capabilities: caps, MemoryLimitBytes: 1 << 30})
		if len(c.Ports) != 0 || c.LivenessProbe != nil || c.ReadinessProbe != nil || c.StartupProbe != nil ||
			c.Lifecycle != nil || len(c.Resources.Limits) != 0 || len(c.Resources.Requests) != 0 ||
			len(c.VolumeMounts) != 0 || c.Stdin || c.StdinOnce || c.TTY {
			t.Errorf("caps %v: forbidden or unwanted field set: %+v", caps, c)
		}
		want := []corev1.Capability{"ALL"}
		if caps == NetRaw {
			want = allButNetRaw
		}
		if diff := cmp.Diff(want, c.SecurityContext.Capabilities.Drop); diff != "" {
			t.Errorf("caps %v: drop (-want +got):\n%s", caps, diff)
		}
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		spec    AgentSpec
		wantErr string
	}{
		{name: "ok", spec: AgentSpec{Image: testImage, Capabilities: NetAdmin}},
		{name: "restricted without capabilities", spec: AgentSpec{Image: testImage, Restricted: true}},
		{name: "no image", spec: AgentSpec{}, wantErr: "agent image is empty"},
		{
			name:    "restricted with capabilities",
			spec:    AgentSpec{Image: testImage, Restricted: true, Capabilities: NetAdmin | NetRaw},
			wantErr: `the agent needs NET_ADMIN and NET_RAW, which PodSecurity "restricted" forbids (namespace label pod-security.kubernetes.io/enforce); ask a cluster admin for pod-security.kubernetes.io/enforce=privileged, or use port-forward or outgoing, which need no capability`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.spec.Validate()
			if got := errString(err); got != tc.wantErr {
				t.Errorf("Validate() = %q, want %q", got, tc.wantErr)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestCapabilitiesOfBuiltAgents(t *testing.T) {
	for _, tt := range []struct {
		spec AgentSpec
		want Capabilities
	}{
		{AgentSpec{Image: testImage}, 0},
		{AgentSpec{Image: testImage, Capabilities: NetAdmin}, NetAdmin},
		{AgentSpec{Image: testImage, Capabilities: NetRaw}, NetRaw},
		{AgentSpec{Image: testImage, Capabilities: NetRaw, AddNetRaw: true}, NetRaw},
		{AgentSpec{Image: testImage, Capabilities: NetAdmin | NetRaw}, NetAdmin | NetRaw},
	} {
		c := BuildAgentContainer(testPod(), tt.spec)
		if got := capabilitiesOf(c.SecurityContext); got != tt.want {
			t.Errorf("capabilitiesOf(agent built for %v, add %v) = %v, want %v", tt.spec.Capabilities, tt.spec.AddNetRaw, got, tt.want)
		}
	}
}
