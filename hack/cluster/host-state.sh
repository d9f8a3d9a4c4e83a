#!/bin/bash
# Print the host state the cluster touches, in a stable order, so that
#   hack/cluster/host-state.sh > before; hack/cluster/up.sh; hack/cluster/down.sh; hack/cluster/host-state.sh > after; diff before after
# shows exactly what was left behind. Read-only.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
sec() { echo "== $*"; }
sec "network namespaces (ip netns; nsfs mounts)"
ip netns list 2>/dev/null | sort
awk '$3 == "nsfs" {print $2}' /proc/self/mounts | sort
sec "links of type bridge"
ip -br link show type bridge | awk '{print $1, $2}' | sort
sec "links of type veth"
ip -br link show type veth | awk '{print $1, $2}' | sort
sec "nft tables"
nft list tables | sort
sec "routes"
ip -4 route show | sort
sec "mounts under $CLUSTER_DIR"
awk -v b="$CLUSTER_DIR/" 'index($2, b) == 1 {print $3, $2}' /proc/self/mounts | sort
sec "our processes (binary in $K8S_BIN/ or command line mentions $CLUSTER_DIR/)"
for p in /proc/[0-9]*; do
  cmd=$( { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null || true)
  exe=$(readlink "$p/exe" 2>/dev/null || true)
  case "$exe $cmd" in "$K8S_BIN/"*|*"$CLUSTER_DIR/"*) echo "${cmd:0:100}" ;; esac
done | sort
sec "processes in kubepods cgroups"
{ grep -l kubepods /proc/[0-9]*/cgroup 2>/dev/null || true; } | wc -l
sec "kubepods cgroups"
ls -d /sys/fs/cgroup/*/kubepods 2>/dev/null || true
sec "sysctls"
sysctl -e vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys \
  kernel.keys.root_maxbytes net.ipv4.ip_forward net.netfilter.nf_conntrack_max \
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait \
  net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables 2>/dev/null
sec "host paths"
for d in /var/lib/kubelet /var/lib/cni /var/log/containers /var/log/pods /run/containerd /run/netns /etc/cni /opt/cni "$CLUSTER_DIR"; do
  if mountpoint -q "$d" 2>/dev/null; then echo "mount   $d"; elif [ -e "$d" ]; then echo "present $d"; else echo "absent  $d"; fi
done
