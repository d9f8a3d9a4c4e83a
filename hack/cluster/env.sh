# shellcheck shell=bash
# Shared settings for the trafficlab cluster harness. Sourced (not executed) by every
# hack/cluster script, hack/e2e.sh, and by humans: `. hack/cluster/env.sh; kubectl get pods -A`.
# Everything is overridable from the environment so a second harness can run with other dirs.

TRAFFICLAB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export TRAFFICLAB_ROOT

# Immutable, content-keyed build outputs (safe to share between clones and to keep across down.sh).
export TRAFFICLAB_CACHE=${TRAFFICLAB_CACHE:-/var/cache/trafficlab}
# All mutable cluster state; down.sh empties it.
export TRAFFICLAB_CLUSTER_DIR=${TRAFFICLAB_CLUSTER_DIR:-/var/lib/trafficlab-cluster}

export K8S_VERSION=${K8S_VERSION:-v1.33.13}
export COREDNS_VERSION=${COREDNS_VERSION:-v1.14.7}
K8S_BIN=$TRAFFICLAB_CACHE/k8s-$K8S_VERSION/bin
COREDNS_DIR=$TRAFFICLAB_CACHE/coredns-$COREDNS_VERSION
IMAGES_DIR=$TRAFFICLAB_CACHE/images
# image refs of the current build (written by build.sh, read by up.sh and the e2e tests)
IMAGES_REFS=$IMAGES_DIR/refs.env

CLUSTER_DIR=$TRAFFICLAB_CLUSTER_DIR
PKI_DIR=$CLUSTER_DIR/pki
LOG_DIR=$CLUSTER_DIR/logs
PID_DIR=$CLUSTER_DIR/pids
CTRD_SOCK=$CLUSTER_DIR/containerd/containerd.sock

NODE_NAME=${NODE_NAME:-trafficlab}
# No dummy netdev in this kernel: the node IP lives on a port-less bridge we own.
NODE_BR=tl-node0
POD_BR=tl-pods0
NODE_IP=10.250.0.1
NODE_CIDR=10.250.0.0/24
POD_CIDR=10.88.0.0/16
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SVC_IP=10.96.0.1
DNS_SVC_IP=10.96.0.10
ETCD_PORT=23790 ETCD_PEER_PORT=23800 API_PORT=16443 KUBELET_PORT=10250 KUBELET_HEALTHZ_PORT=10248
PROXY_HEALTHZ_PORT=10256 PROXY_METRICS_PORT=10249
# The harness's image registries (CNCF Distribution, TLS with the cluster CA), on loopback because
# containerd on this host does the pulls: an open one that containerd's hosts.toml maps the agent's
# and the peers' registry hosts to, and one with basic auth for the private-registry e2e.
REGISTRY_ADDR=127.0.0.1:15000
AUTH_REGISTRY_ADDR=127.0.0.1:15001
REGISTRY_DIR=$CLUSTER_DIR/registry
# what the e2e tests read about them (written by up.sh; names in README.md): addresses, the auth
# registry's user and password, and the refs of the images pushed there
REGISTRY_ENV=$REGISTRY_DIR/registry.env
# Not "trafficlab_*": that prefix belongs to the agent's session tables, which it sweeps.
GUARD_TABLE=tlcluster_guard

export KUBECONFIG=$CLUSTER_DIR/admin.kubeconfig
# Our kubectl first: the base image ships an unrelated /usr/bin/kubectl v1.32.
case ":$PATH:" in *":$K8S_BIN:"*) ;; *) export PATH=$K8S_BIN:$PATH ;; esac

# Timestamped phase logging shared by the scripts. T0 is per script run.
: "${TRAFFICLAB_T0:=$(date +%s.%N)}"
ts() { printf '[%6.1fs] %s\n' "$(echo "$(date +%s.%N) - $TRAFFICLAB_T0" | bc)" "$*"; }

# `ip netns add` (the kernel tests' namespaces, the e2e guard test's) turns /run/netns into a bind
# mount of itself and leaves it so after `ip netns del`. Who created the directory undoes that once
# no namespace is left in it; a namespace still there is someone's, and the path stays.
unmount_netns_dir() { # dir; fails (1) if the dir is still in use
  while mountpoint -q "$1"; do
    if [ -n "$(ls -A "$1")" ] || ! umount "$1"; then echo "$1 is a mount point still in use, leaving it" >&2; return 1; fi
  done
}
