// Package inject adds the trafficlab agent to a running pod as an ephemeral container, reuses one that
// is already there, and waits until it runs.
package inject

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	utilrand "k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/utils/ptr"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// NamePrefix starts the name of every agent container; FindReusable and cleanup recognize agents by it.
const NamePrefix = "trafficlab-"

// AgentBinary is the agent's path inside the agent image.
const AgentBinary = "/trafficlab-agent"

// NonRootUID is the user (and group) an agent that needs no capability runs as. It is trafficlab's own, not
// distroless's "nonroot" 65532 (nor 65534 "nobody", nor the 1000s that images give their first user),
// which many apps run as: a process of the app with the agent's UID could pass the agent's peer check
// in a pod that shares its process namespace, and could signal the agent there. 47301 is only chosen to
// be unusual: no common base image or distribution assigns it, it is above the ranges that images and
// distributions hand out (system users below 1000, first users from 1000), and below 65536, where
// some runtimes' user-namespace mappings still end. It has no /etc/passwd entry; the agent needs none.
const NonRootUID int64 = 47301

// nameSuffixLength matches kubectl debug's `debugger-xxxxx`.
const nameSuffixLength = 5

// Capabilities is the small set of Linux capabilities an agent may be given.
type Capabilities uint8

const (
	// NetAdmin lets the agent install nftables redirects (steal).
	NetAdmin Capabilities = 1 << iota
	// NetRaw lets the agent open packet sockets (sniff).
	NetRaw
)

// Has reports whether every capability in want is in c.
func (c Capabilities) Has(want Capabilities) bool { return c&want == want }

// Missing returns the capabilities of want that c lacks.
func (c Capabilities) Missing(want Capabilities) Capabilities { return want &^ c }

// List returns the capabilities in the spelling of securityContext.capabilities.
func (c Capabilities) List() []corev1.Capability {
	var out []corev1.Capability
	if c.Has(NetAdmin) {
		out = append(out, "NET_ADMIN")
	}
	if c.Has(NetRaw) {
		out = append(out, "NET_RAW")
	}
	return out
}

func (c Capabilities) String() string {
	l := c.List()
	s := make([]string, len(l))
	for i, cp := range l {
		s[i] = string(cp)
	}
	return strings.Join(s, " and ")
}

// allButNetRaw names every Linux capability (CAP_CHOWN, 0, to CAP_CHECKPOINT_RESTORE, 40) but NET_RAW.
// An agent that only sniffs drops these and keeps NET_RAW from the runtime's default instead of adding
// it: PodSecurity "baseline" forbids adding NET_RAW but allows any drop, so such an agent is admitted
// where one that adds a capability is not. "drop ALL" would take NET_RAW too, and a shorter list
// (containerd's defaults) would leave whatever a runtime configured beyond them. The kubelet passes
// unknown names through; containerd and runc drop what they know.
var allButNetRaw = []corev1.Capability{
	"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
	"SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "IPC_LOCK",
	"IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN",
	"SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE",
	"AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
	"BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
}

// capabilitiesOf reads the capability set an existing container was given, including NET_RAW kept
// from the runtime's defaults by a root container that does not drop it.
func capabilitiesOf(sc *corev1.SecurityContext) Capabilities {
	var c Capabilities
	if sc == nil || sc.Capabilities == nil {
		return c
	}
	for _, cp := range sc.Capabilities.Add {
		switch capName(cp) {
		case "NET_ADMIN":
			c |= NetAdmin
		case "NET_RAW":
			c |= NetRaw
		}
	}
	if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
		kept := true
		for _, cp := range sc.Capabilities.Drop {
			if n := capName(cp); n == "ALL" || n == "NET_RAW" {
				kept = false
			}
		}
		if kept {
			c |= NetRaw
		}
	}
	return c
}

func capName(c corev1.Capability) string {
	return strings.TrimPrefix(strings.ToUpper(string(c)), "CAP_")
}

// AgentSpec says which agent to add.
type AgentSpec struct {
	Image        string
	PullPolicy   corev1.PullPolicy // empty: the API server's default (Always for :latest, else IfNotPresent)
	Capabilities Capabilities
	// AddNetRaw adds NET_RAW even when it is the only capability needed, for runtimes that do not grant
	// it by default (CRI-O since 1.18). Without it, a sniffing agent keeps the runtime's default NET_RAW.
	AddNetRaw bool
	// IdleTimeout is how long the agent lives without a session; ephemeral containers never restart and
	// cannot be removed, so the agent must end itself. Zero is "never" (the agent clamps it when it has
	// NET_ADMIN or NET_RAW); the session refuses it for those before it builds a spec.
	IdleTimeout time.Duration
	// MemoryBudget is the agent container's memory budget in bytes (wire.AgentMemoryBudgetEnv); 0
	// leaves the agent's default.
	MemoryBudget int64
	// MemoryLimitBytes becomes GOMEMLIMIT; 0 leaves it unset. Ephemeral containers cannot have resources,
	// so the agent's memory is charged to the pod and this soft limit is all that keeps it small.
	MemoryLimitBytes int64
	// Restricted says the namespace enforces PodSecurity "restricted", which admits neither root nor
	// added capabilities: the agent is then always built non-root without capabilities, and Validate
	// refuses a spec that needs any.
	Restricted bool
	// NameSuffix returns n random lowercase alphanumerics; nil uses k8s.io/apimachinery's rand.String.
	// Tests inject a deterministic one.
	NameSuffix func(n int) string
}

// Validate refuses specs that cannot work; it does no I/O.
func (s AgentSpec) Validate() error {
	if s.Image == "" {
		return fmt.Errorf("agent image is empty")
	}
	if s.Restricted && s.Capabilities != 0 {
		return fmt.Errorf("the agent needs %s, which PodSecurity %q forbids (namespace label %s); ask a cluster admin for %s=privileged, or use port-forward or outgoing, which need no capability",
			s.Capabilities, "restricted", PodSecurityEnforceLabel, PodSecurityEnforceLabel)
	}
	return nil
}

// BuildAgentContainer returns the ephemeral container that runs the agent in pod. It is pure: the name's
// randomness comes from spec.NameSuffix, and the pod is only read.
func BuildAgentContainer(pod *corev1.Pod, spec AgentSpec) corev1.EphemeralContainer {
	caps := spec.Capabilities
	if spec.Restricted {
		caps = 0
	}

	add, drop := caps.List(), []corev1.Capability{"ALL"}
	if caps == NetRaw && !spec.AddNetRaw {
		add, drop = nil, allButNetRaw
	}
	sc := &corev1.SecurityContext{
		Capabilities: &corev1.Capabilities{
			Add:  add,
			Drop: drop,
		},
		AllowPrivilegeEscalation: ptr.To(false),
		ReadOnlyRootFilesystem:   ptr.To(true),
		// RuntimeDefault is admitted by every PodSecurity level and required by "restricted".
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
	if caps != 0 {
		// containerd sets no ambient capabilities, so a non-root process never holds the added ones:
		// an agent that needs NET_ADMIN or NET_RAW must be UID 0 (with everything else dropped).
		// runAsNonRoot is set to false explicitly because a pod-level runAsNonRoot: true would
		// otherwise be inherited and make the kubelet refuse to start the container.
		sc.RunAsUser = ptr.To[int64](0)
		sc.RunAsNonRoot = ptr.To(false)
	} else {
		sc.RunAsUser = ptr.To(NonRootUID)
		// Its own group too: a pod-level runAsGroup, the app's, would otherwise apply, and without one the
		// runtime gives GID 0.
		sc.RunAsGroup = ptr.To(NonRootUID)
		sc.RunAsNonRoot = ptr.To(true)
	}

	name := agentName(pod, spec.NameSuffix)
	// The name makes the agent's session socket unique in the pod's network namespace, which several
	// agents may share; the plugin passes the same name to each attach.
	args := []string{"--name=" + name, "--idle-timeout=" + spec.IdleTimeout.String()}
	var env []corev1.EnvVar
	if spec.MemoryLimitBytes > 0 {
		env = append(env, corev1.EnvVar{Name: "GOMEMLIMIT", Value: goMemLimit(spec.MemoryLimitBytes)})
	}
	if spec.MemoryBudget > 0 {
		env = append(env, corev1.EnvVar{Name: wire.AgentMemoryBudgetEnv, Value: strconv.FormatInt(spec.MemoryBudget, 10)})
	}

	return corev1.EphemeralContainer{
		EphemeralContainerCommon: corev1.EphemeralContainerCommon{
			Name:            name,
			Image:           spec.Image,
			ImagePullPolicy: spec.PullPolicy,
			Command:         []string{AgentBinary},
			Args:            args,
			Env:             env,
			SecurityContext: sc,
			// Control is an exec into the agent and data a port-forward to its loopback listener, so
			// nothing is attached: with stdin closed the runtime logs nothing of the session.
			Stdin: false,
			TTY:   false,
			// The agent's last log lines explain a crash better than an empty termination message.
			TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		},
		// No TargetContainerName: the agent has a PID namespace of its own. In the app's, an app restart
		// would kill every agent process (the kernel ends a PID namespace with its first process), the
		// app could see and fake the agent's processes, and a hostPID pod would put the agent in the
		// host's.
	}
}

// goMemLimit formats bytes the way the Go runtime parses GOMEMLIMIT, in the largest exact binary unit.
func goMemLimit(b int64) string {
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if b%u.size == 0 {
			return strconv.FormatInt(b/u.size, 10) + u.suffix
		}
	}
	return strconv.FormatInt(b, 10)
}

// agentName picks trafficlab-xxxxx that no container of the pod uses yet. Pod container names share one
// namespace across init, regular and ephemeral containers.
func agentName(pod *corev1.Pod, suffix func(int) string) string {
	if suffix == nil {
		suffix = utilrand.String
	}
	used := containerNames(pod)
	// A broken suffix func (a test's constant) must not spin forever; after a few tries count instead.
	for i := 0; i < 16; i++ {
		if name := NamePrefix + suffix(nameSuffixLength); !used[name] {
			return name
		}
	}
	for i := 0; ; i++ {
		s := strconv.FormatInt(int64(i), 36)
		name := NamePrefix + strings.Repeat("0", nameSuffixLength-len(s)) + s
		if !used[name] {
			return name
		}
	}
}

func containerNames(pod *corev1.Pod) map[string]bool {
	used := map[string]bool{}
	for _, c := range pod.Spec.InitContainers {
		used[c.Name] = true
	}
	for _, c := range pod.Spec.Containers {
		used[c.Name] = true
	}
	for _, c := range pod.Spec.EphemeralContainers {
		used[c.Name] = true
	}
	return used
}
