#!/bin/bash
# Tear down everything up.sh made, and nothing else: pods, containers and their shims,
# our processes (by recorded PID: the image registries too), mounts under the cluster dir, our bridges, the guard and
# kube-proxy nft tables, kubepods cgroups, host paths the components hardcode (only those
# that did not exist before up.sh), sysctls and ip_forward as they were; then the cluster
# dir itself. The build cache ($TRAFFICLAB_CACHE) stays. Safe to run twice.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/env.sh"
[ "$(id -u)" = 0 ] || { echo "down.sh: must run as root" >&2; exit 1; }
C=$CLUSTER_DIR/containerd

# A recorded PID is only ours if its command line still mentions our dirs (PIDs get reused).
ours() { [ -r "/proc/$1/cmdline" ] && grep -aF -e "$CLUSTER_DIR" -e "$K8S_BIN" "/proc/$1/cmdline" >/dev/null 2>&1; }
stop_pid() { # pid
  local p=$1 i
  kill -TERM "$p" 2>/dev/null || return 0
  for i in $(seq 1 50); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL "$p" 2>/dev/null || true
}
stop() { # component
  local f=$PID_DIR/$1.pid p
  [ -f "$f" ] || return 0
  p=$(cat "$f")
  if ours "$p"; then stop_pid "$p"; ts "stopped $1 ($p)"; fi
  rm -f "$f"
}
ctr_() { ctr --address "$CTRD_SOCK" -n k8s.io "$@"; }
until_deadline() { # seconds cmd...   polls until cmd succeeds or time runs out (returns 1)
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do [ "$(date +%s)" -ge "$deadline" ] && return 1; sleep 0.2; done
}
no_pod_veths() { [ -z "$(ip -o link show master "$POD_BR" type veth 2>/dev/null)" ]; }
no_tasks() { [ -z "$(ctr_ tasks ls -q 2>/dev/null)" ]; }

# 1. Nothing may recreate pods while we delete them; kubelet still tears sandboxes down
#    properly (CNI DEL, netns unmount) as long as it runs.
stop kube-controller-manager; stop kube-scheduler
if [ -f "$PID_DIR/kubelet.pid" ] && kubectl get --raw /readyz >/dev/null 2>&1; then
  kubectl delete pods --all -A --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
  if until_deadline 60 no_pod_veths && until_deadline 30 no_tasks; then ts "pods gone"; else ts "pods still around after 90s; killing them"; fi
fi
stop kube-proxy
nft delete table ip kube-proxy 2>/dev/null || true
nft delete table ip6 kube-proxy 2>/dev/null || true
stop kubelet

# 2. Whatever the kubelet left: kill tasks through containerd, then through runc directly.
if [ -S "$CTRD_SOCK" ]; then
  for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s KILL "$t" >/dev/null 2>&1 || true; done
  until_deadline 10 no_tasks || true
  for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true; done
fi
# shim PIDs are recorded in containerd's state dir; they outlive containerd by design
shims=$(cat "$C"/state/io.containerd.runtime.v2.task/*/*/shim.pid 2>/dev/null || true)
stop containerd
if [ -d "$C/runc" ]; then
  for ns in "$C"/runc/*/; do
    [ -d "$ns" ] || continue
    for id in $(runc --root "$ns" list -q 2>/dev/null); do
      runc --root "$ns" kill -a "$id" KILL 2>/dev/null || true
      runc --root "$ns" delete -f "$id" 2>/dev/null || true
    done
  done
fi
for p in $shims; do
  if grep -aF "$CTRD_SOCK" "/proc/$p/cmdline" >/dev/null 2>&1; then kill -KILL "$p" 2>/dev/null || true; fi
done
stop kube-apiserver; stop etcd
stop registry; stop registry-auth

# 3. Mounts under our tree (overlay rootfs, netns, volumes), deepest first.
mounts_under() { awk -v b="$CLUSTER_DIR/" 'index($2, b) == 1 {print $2}' /proc/self/mounts | sort -r; }
for m in $(mounts_under); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done

# 4. Network: bridges (pod veths die with their netns), restore sysctls while the guard still
#    blocks forwarding, then the guard itself.
# residue of an e2e guard test killed before its t.Cleanup ran (its veth dies with the netns)
for n in $(ip netns list 2>/dev/null | awk '$1 ~ /^tl-e2e-guard-/ {print $1}'); do ip netns del "$n" || true; done
ip link del "$POD_BR" 2>/dev/null || true
ip link del "$NODE_BR" 2>/dev/null || true
[ -f "$CLUSTER_DIR/sysctl.orig" ] && sysctl -q -p "$CLUSTER_DIR/sysctl.orig" >/dev/null 2>&1 || true
nft delete table inet "$GUARD_TABLE" 2>/dev/null || true

# 5. cgroups made by the kubelet (cgroupfs driver) and runc beneath it.
for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/unified/; do
  [ -d "${h}kubepods" ] && find "${h}kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null || true
done

# 6. Paths outside our tree that kubelet/containerd/libcni hardcode: only the ones up.sh created.
if [ -f "$CLUSTER_DIR/host-paths.created" ]; then
  find /var/log/containers -maxdepth 1 -type l -lname "$CLUSTER_DIR/*" -delete 2>/dev/null || true
  while read -r d; do
    [ -n "$d" ] || continue
    # rm fails with EBUSY on the /run/netns that ip netns leaves mounted (env.sh)
    unmount_netns_dir "$d" || continue
    rm -rf --one-file-system "$d"
  done < "$CLUSTER_DIR/host-paths.created"
fi

# 7. The cluster dir, unless something is still mounted in it (never rm across a mount).
if [ -n "$(mounts_under)" ]; then
  echo "down.sh: still mounted under $CLUSTER_DIR, not removing it:" >&2; mounts_under >&2; exit 1
fi
[ -d "$CLUSTER_DIR" ] && rm -rf --one-file-system "$CLUSTER_DIR"
ts "down: done"
