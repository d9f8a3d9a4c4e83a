#!/bin/bash
# Exit 0 if the trafficlab cluster is fully up: every component we started (the image registries
# too) is alive, the guard is in place, the apiserver is ready, the node is Ready and CoreDNS is available.
# Prints the first failed check. Used by up.sh and hack/e2e.sh to decide what to do.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
fail() { echo "not healthy: $*"; exit 1; }
for c in registry registry-auth etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
  [ -f "$PID_DIR/$c.pid" ] && kill -0 "$(cat "$PID_DIR/$c.pid")" 2>/dev/null || fail "$c not running"
done
nft list table inet "$GUARD_TABLE" >/dev/null 2>&1 || fail "guard table inet $GUARD_TABLE missing"
nft list table ip kube-proxy >/dev/null 2>&1 || fail "kube-proxy nft table missing"
kubectl get --raw /readyz >/dev/null 2>&1 || fail "apiserver not ready"
[ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] \
  || fail "node $NODE_NAME not Ready"
[ "$(kubectl -n kube-system get deploy coredns -o jsonpath='{.status.availableReplicas}' 2>/dev/null)" -ge 1 ] 2>/dev/null \
  || fail "CoreDNS not available"
echo "healthy"
