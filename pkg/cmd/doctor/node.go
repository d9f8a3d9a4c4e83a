package doctor

import (
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// ownerFlagKernel is the first kernel with nftables' table owner flag (NFT_TABLE_F_OWNER, Linux 5.12),
// with which a steal's table goes away with the agent's netlink socket.
const ownerFlagMajor, ownerFlagMinor = 5, 12

// parseKernelVersion reads major and minor from a node's kernelVersion ("5.15.0-91-generic",
// "6.8.0-1015-aws", "4.19.112+").
func parseKernelVersion(s string) (major, minor int, ok bool) {
	ma, rest, found := strings.Cut(s, ".")
	end := 0
	for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	if !found || !digits(ma) || len(ma) > 4 || end == 0 || end > 4 {
		return 0, 0, false
	}
	// Both are 1 to 4 digits: Atoi cannot fail.
	major, _ = strconv.Atoi(ma)
	minor, _ = strconv.Atoi(rest[:end])
	return major, minor, true
}

func digits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// kernelLine is the hint on the node's kernel: a steal works on older kernels too, with a fallback.
func kernelLine(node *corev1.Node) Line {
	k := node.Status.NodeInfo.KernelVersion
	major, minor, ok := parseKernelVersion(k)
	switch {
	case !ok:
		return Line{Name: "kernel", Status: StatusUnknown, Message: fmt.Sprintf("node %q reports kernel %q, which is not MAJOR.MINOR", node.Name, k)}
	case major > ownerFlagMajor || major == ownerFlagMajor && minor >= ownerFlagMinor:
		return Line{Name: "kernel", Status: StatusHint, Message: fmt.Sprintf("node %q runs kernel %s (5.12+): a steal's nftables table is owned by the agent and goes with it", node.Name, k)}
	}
	return Line{Name: "kernel", Status: StatusHint, Message: fmt.Sprintf("node %q runs kernel %s, older than 5.12 (no nftables owner flag): a steal uses the TPROXY fallback, and a guard process removes its table if the agent dies", node.Name, k)}
}

// runtimeLine is the hint on the node's container runtime, which decides whether a container keeps
// NET_RAW by default (what the sniffing verbs rely on unless --add-net-raw). rawDefault is false only
// where the runtime is known not to give it.
func runtimeLine(node *corev1.Node) (l Line, rawDefault bool) {
	rt := node.Status.NodeInfo.ContainerRuntimeVersion
	name, ver, _ := strings.Cut(rt, "://")
	switch name {
	case "containerd", "docker":
		return Line{Name: "runtime", Status: StatusHint, Message: fmt.Sprintf("node %q runs %s %s, which gives containers NET_RAW by default: dump and mirror --mode sniff need no --add-net-raw", node.Name, name, ver)}, true
	case "cri-o":
		return Line{Name: "runtime", Status: StatusHint, Message: fmt.Sprintf("node %q runs CRI-O %s, which gives no NET_RAW by default (since 1.18): dump and mirror --mode sniff need --add-net-raw", node.Name, ver)}, false
	}
	return Line{Name: "runtime", Status: StatusUnknown, Message: fmt.Sprintf("node %q runs %q; whether it gives NET_RAW by default is not known here (if dump finds no NET_RAW, add --add-net-raw)", node.Name, rt)}, true
}

// isWindows reads the node's operating system from its status, else its well-known label.
func isWindows(node *corev1.Node) bool {
	return node.Status.NodeInfo.OperatingSystem == string(corev1.Windows) || node.Labels[corev1.LabelOSStable] == string(corev1.Windows)
}
