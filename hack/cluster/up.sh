#!/bin/bash
# Bring up the trafficlab single-node cluster on this host: guard nft table, etcd,
# containerd (CRI), kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy (nftables mode), CoreDNS. Idempotent: a healthy cluster is left running
# (only new images are imported). Everything binds to loopback or our own bridges.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/env.sh"
export TRAFFICLAB_T0   # build.sh reports on the same clock

[ "$(id -u)" = 0 ] || { echo "up.sh: must run as root" >&2; exit 1; }

# --- Debian packages (a fresh VM has none of these) ---
PKGS="etcd-server etcd-client containerd runc containernetworking-plugins iptables nftables conntrack socat busybox-static bc curl openssl"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  ts "installing Debian packages:$missing"
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
ts "Debian packages present"

"$HERE/build.sh"
# shellcheck disable=SC1090
. "$IMAGES_REFS"

ctr_() { ctr --address "$CTRD_SOCK" -n k8s.io "$@"; }

# --- CNI: Debian's plugins and the mesh CNI (test/cni/meshinit) ---
# containerd looks plugins up in one bin dir: ours, under the cluster dir, links Debian's plugins
# and holds trafficlab-meshinit, so nothing is added to /usr/lib/cni. The mesh plugin, chained after
# the bridge, installs a mesh's real capture rules (internal/meshtest: Istio's istio-iptables, pinned
# in hack/tools/istio; Linkerd's proxy-init commands) in the netns of pods in the tl-mesh-<rule set>
# namespaces the mesh e2e makes, with Debian's iptables-legacy / iptables-nft or nft, and passes
# every other pod through. Both are refreshed on a warm run too, so the plugin is this tree's.
# Host note: this kernel has no loadable modules (no /proc/modules), so iptables-legacy's tables
# are built in and loading them changes nothing on the host; on a kernel with modules the first
# legacy rule would load ip_tables/iptable_nat, which stay loaded after down.sh: that would be the
# one lasting change, accepted because a module loaded is no state the cluster's tests read.
# iptables-legacy creates /run/xtables.lock (a host path; down.sh removes it if up.sh made it).
CNI_BIN=$CLUSTER_DIR/cni/bin
install_cni() {
  mkdir -p "$CNI_BIN"
  local p
  for p in /usr/lib/cni/*; do ln -sfn "$p" "$CNI_BIN/$(basename "$p")"; done
  (cd "$TRAFFICLAB_ROOT" && CGO_ENABLED=0 GOTOOLCHAIN=local go build -trimpath -o "$CNI_BIN/trafficlab-meshinit.tmp" ./test/cni/meshinit)
  mv "$CNI_BIN/trafficlab-meshinit.tmp" "$CNI_BIN/trafficlab-meshinit"
  ISTIO_IPTABLES=$("$TRAFFICLAB_ROOT/hack/tools/install.sh" istio-iptables)
  ts "CNI plugins in $CNI_BIN (mesh CNI with $ISTIO_IPTABLES)"
}
# isDefaultGateway: pods need a default route to reach Service IPs. Written whole, then renamed:
# containerd reloads the conf dir when it changes.
write_cni_conf() {
  mkdir -p "$CLUSTER_DIR/cni/net.d"
  cat > "$CLUSTER_DIR/cni/net.d/10-trafficlab.conflist.tmp" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "trafficlab",
  "plugins": [
    { "type": "bridge", "bridge": "$POD_BR", "isGateway": true, "isDefaultGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "$POD_CIDR" }]], "dataDir": "$CLUSTER_DIR/cni/ipam" } },
    { "type": "trafficlab-meshinit", "istioIptables": "$ISTIO_IPTABLES" }
  ]
}
JSON
  mv "$CLUSTER_DIR/cni/net.d/10-trafficlab.conflist.tmp" "$CLUSTER_DIR/cni/net.d/10-trafficlab.conflist"
}

# Import an archive unless the image it names is already there. Archives that do not carry
# io.containerd.image.name (OCI layouts from other tools naming only a tag) get the base
# name trafficlab.local/<file stem> so ctr does not invent "import-<date>:<tag>".
import_image() { # tarball [ref-if-known]
  local t=$1 ref=${2:-} args=()
  # (grep without -q: an early exit would SIGPIPE the writer and fail the pipeline)
  if [ -n "$ref" ] && ctr_ images ls -q | grep -xF "$ref" >/dev/null; then return 0; fi
  if tar -tf "$t" index.json >/dev/null 2>&1 && ! tar -xOf "$t" index.json | grep '"io.containerd.image.name"' >/dev/null; then
    args=(--base-name "trafficlab.local/$(basename "$t" .tar)")
  fi
  local out name dgst
  out=$(ctr_ images import --snapshotter overlayfs "${args[@]}" "$t")
  printf '%s\n' "$out" | sed 's/^/    /'
  # A pull by tag also names the image by its digest (repo@sha256:...), which is how a released plugin
  # asks for its agent (repo:tag@sha256:..., resolved by the digest alone); an import names the tag
  # only, so add that name as the pull would.
  while read -r name dgst; do
    if [[ "${name##*/}" == *:* ]]; then ctr_ images tag --force "$name" "${name%:*}@$dgst" >/dev/null; fi
  done < <(sed -n 's/^unpacking \([^ ]*\) (\(sha256:[0-9a-f]*\)).*/\1 \2/p' <<<"$out")
}

import_all_images() {
  import_image "$TRAFFICLAB_PAUSE_TAR" "$TRAFFICLAB_PAUSE_IMAGE"
  import_image "$TRAFFICLAB_PEERS_TAR" "$TRAFFICLAB_PEERS_IMAGE"
  import_image "$TRAFFICLAB_COREDNS_TAR" "$TRAFFICLAB_COREDNS_IMAGE"
  # the lead's `make agent-image` output (and anything else dropped there)
  local t
  for t in "$TRAFFICLAB_ROOT"/_output/images/*.tar; do
    [ -f "$t" ] && import_image "$t"
  done
  # Older peers builds are unreachable through refs.env; untag them (running pods keep their
  # snapshots) so the list stays readable.
  local old
  for old in $(ctr_ images ls -q | grep '^trafficlab.local/peers:' | grep -vxF "$TRAFFICLAB_PEERS_IMAGE" || true); do
    ctr_ images rm "$old" >/dev/null
  done
  ts "images in containerd: $(ctr_ images ls -q | grep -v '^sha256:' | tr '\n' ' ')"
}

if "$HERE/healthy.sh" >/dev/null 2>&1; then
  install_cni
  write_cni_conf
  import_all_images
  ts "cluster already up and healthy (KUBECONFIG=$KUBECONFIG)"
  exit 0
fi
# A half-up cluster (crash, reboot, interrupted up.sh) cannot be patched safely: start clean.
if [ -d "$PID_DIR" ] && [ -n "$(ls -A "$PID_DIR" 2>/dev/null)" ] || nft list table inet "$GUARD_TABLE" >/dev/null 2>&1; then
  ts "leftovers of a previous cluster found but it is not healthy: running down.sh first"
  "$HERE/down.sh"
fi

mkdir -p "$LOG_DIR" "$PID_DIR" "$CLUSTER_DIR/etcd" "$CLUSTER_DIR/containerd" "$CLUSTER_DIR/kubelet" \
  "$CLUSTER_DIR/pod-logs" "$CLUSTER_DIR/cni/net.d" "$CLUSTER_DIR/cni/ipam"
chmod 700 "$CLUSTER_DIR"
"$HERE/gen-certs.sh"
ts "certs ready"
install_cni

start() { # name cmd...   detached in its own session; the PID is what down.sh stops
  local n=$1; shift
  # The daemon outlives this script, so it must not keep the script's open files: the e2e lock that
  # `flock LOCK hack/e2e.sh` holds, inherited, stayed locked for the cluster's life and blocked every
  # later run.
  (
    for fd in /proc/self/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
    done
    exec setsid "$@"
  ) > "$LOG_DIR/$n.log" 2>&1 < /dev/null &
  echo $! > "$PID_DIR/$n.pid"
}
wait_for() { # description timeout-seconds cmd...   polls a condition until it holds
  local d=$1 deadline=$(( $(date +%s) + $2 )); shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then echo "TIMEOUT waiting for: $d (logs: $LOG_DIR)" >&2; return 1; fi
    sleep 0.2
  done
  ts "$d"
}

# --- host state we change; down.sh puts it back ---
# kubelet (protectKernelDefaults=false), the CNI bridge plugin (ip_forward) and kube-proxy
# rewrite these; remember the originals once.
[ -f "$CLUSTER_DIR/sysctl.orig" ] || sysctl -e vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops \
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward net.netfilter.nf_conntrack_max \
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait \
  net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables 2>/dev/null \
  | tr -d ' ' > "$CLUSTER_DIR/sysctl.orig"

# --- guard, before anything can start a pod or bring up a bridge ---
# The CNI bridge plugin turns ip_forward on. The guard makes sure that nothing addressed to a
# cluster range leaves through an interface that is not ours (a missing kube-proxy rule would
# otherwise send Service traffic to the default route), that the host forwards nothing but
# pod<->pod on our bridge, and that control-plane/NodePort ports are closed on every other
# interface (the apiserver binds all addresses so pods reach it through the kubernetes Service).
# It filters in postrouting: in output the interface is still the pre-DNAT choice, so a
# host->ClusterIP packet would be dropped there. Not all of 10/8: the VM's resolver is a 10.x.
nft -f - <<NFT
table inet $GUARD_TABLE {
  set cluster_v4 { type ipv4_addr; flags interval; elements = { $POD_CIDR, $SERVICE_CIDR, $NODE_CIDR } }
  set own_ifaces { type ifname; elements = { "lo", "$POD_BR", "$NODE_BR" } }
  counter leaked { }
  counter forward_dropped { }
  counter input_dropped { }
  chain forward {
    type filter hook forward priority -10; policy drop;
    iifname "$POD_BR" oifname "$POD_BR" accept
    counter name forward_dropped
  }
  chain input {
    type filter hook input priority -10;
    iifname != @own_ifaces tcp dport { $API_PORT, $ETCD_PORT, $ETCD_PEER_PORT, 10248-10259, 30000-32767 } counter name input_dropped drop
    iifname != @own_ifaces udp dport 30000-32767 counter name input_dropped drop
  }
  chain postrouting {
    type filter hook postrouting priority 100;
    ip daddr @cluster_v4 oifname != @own_ifaces counter name leaked drop
  }
}
NFT
ts "guard nft table inet $GUARD_TABLE installed"
# kubelet, containerd and libcni hardcode a few host paths; down.sh removes those we create.
HOST_PATHS="/var/lib/kubelet /var/lib/cni /var/log/containers /var/log/pods /run/containerd /run/netns /etc/cni /opt/cni /run/xtables.lock"
if [ ! -f "$CLUSTER_DIR/host-paths.created" ]; then
  for d in $HOST_PATHS; do [ -e "$d" ] || echo "$d"; done > "$CLUSTER_DIR/host-paths.created"
fi
# No dummy netdev in this kernel: the node IP lives on a port-less bridge (kubelet rejects loopback node IPs).
ip link show "$NODE_BR" >/dev/null 2>&1 || {
  ip link add "$NODE_BR" type bridge
  ip addr add "$NODE_IP/32" dev "$NODE_BR"
  ip link set "$NODE_BR" up
}

# --- etcd (Debian etcd-server 3.4) ---
start etcd etcd --name "$NODE_NAME" --data-dir "$CLUSTER_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "$NODE_NAME=http://127.0.0.1:$ETCD_PEER_PORT" --quota-backend-bytes 1073741824

# --- containerd (Debian 1.6) with CRI ---
C=$CLUSTER_DIR/containerd
cat > "$C/config.toml" <<TOML
version = 2
root = "$C/root"
state = "$C/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$C/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$C/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$TRAFFICLAB_PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # this VM drops CAP_SYS_RESOURCE from the bounding set: a negative oom_score_adj (-998 for
  # the sandbox) makes runc fail with "failed to update /proc/self/oom_score_adj: Permission denied"
  restrict_oom_score_adj = true
  # pod netns bind-mounts under our state dir instead of /run/netns
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        # crun 1.8 refuses this host's hybrid cgroup layout; runc 1.1 copes
        BinaryName = "/usr/sbin/runc"
        Root = "$C/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$CLUSTER_DIR/cni/net.d"
TOML
write_cni_conf
start containerd containerd --config "$C/config.toml"

# --- kube-apiserver ---
P=$PKI_DIR
wait_for "etcd healthy" 60 etcdctl --endpoints "http://127.0.0.1:$ETCD_PORT" endpoint health
start kube-apiserver "$K8S_BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address=0.0.0.0 --secure-port="$API_PORT" --advertise-address="$NODE_IP" \
  --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" --client-ca-file="$P/ca.crt" \
  --kubelet-client-certificate="$P/apiserver-kubelet-client.crt" --kubelet-client-key="$P/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$P/ca.crt" --kubelet-preferred-address-types=InternalIP \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --allow-privileged=true --profiling=false --v=1

# --- images into containerd while the apiserver starts ---
wait_for "containerd up" 60 ctr --address "$CTRD_SOCK" version
import_all_images

wait_for "apiserver ready" 120 kubectl get --raw /readyz

# --- controller-manager + scheduler ---
start kube-controller-manager "$K8S_BIN/kube-controller-manager" --kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" --authorization-kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false --use-service-account-credentials=true \
  --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" \
  --cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
  --controllers='*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle-controller' --v=1
start kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig" \
  --authentication-kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig" --authorization-kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false --v=1

# --- kubelet ---
# CoreDNS (dnsPolicy: Default) gets this; nothing upstream, so no query ever leaves the node.
echo "nameserver 127.0.0.1" > "$CLUSTER_DIR/resolv.conf"
cat > "$CLUSTER_DIR/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $P/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $P/kubelet-serving.crt
tlsPrivateKeyFile: $P/kubelet-serving.key
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CTRD_SOCK
failSwapOn: false
podLogsDir: $CLUSTER_DIR/pod-logs
resolvConf: $CLUSTER_DIR/resolv.conf
clusterDomain: cluster.local
clusterDNS: [$DNS_SVC_IP]
makeIPTablesUtilChains: false
# images are imported, never pulled: never garbage-collect them
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
serializeImagePulls: false
# no CAP_SYS_RESOURCE here; the default -999 cannot be set
oomScoreAdj: 0
YAML
wait_for "containerd CRI ready" 60 ctr --address "$CTRD_SOCK" plugins ls
start kubelet "$K8S_BIN/kubelet" --config="$CLUSTER_DIR/kubelet/config.yaml" --kubeconfig="$CLUSTER_DIR/kubelet.kubeconfig" \
  --root-dir="$CLUSTER_DIR/kubelet" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1

# --- kube-proxy (nftables mode) ---
# NodePorts only on the node IP; leave the host's conntrack tunables alone.
start kube-proxy "$K8S_BIN/kube-proxy" --kubeconfig="$CLUSTER_DIR/kube-proxy.kubeconfig" --proxy-mode=nftables \
  --cluster-cidr="$POD_CIDR" --hostname-override="$NODE_NAME" --bind-address=127.0.0.1 \
  --healthz-bind-address=127.0.0.1:$PROXY_HEALTHZ_PORT --metrics-bind-address=127.0.0.1:$PROXY_METRICS_PORT \
  --nodeport-addresses="$NODE_IP/32" --conntrack-max-per-core=0 \
  --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 --v=1

node_ready() { [ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
wait_for "node $NODE_NAME registered" 90 kubectl get node "$NODE_NAME"
wait_for "node $NODE_NAME Ready" 120 node_ready
wait_for "kube-proxy nft table present" 60 nft list table ip kube-proxy

# --- CoreDNS ---
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  # no forward plugin: names outside cluster.local get SERVFAIL instead of leaving the node
  Corefile: |
    .:53 {
        errors
        health :8081
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
           pods insecure
           fallthrough in-addr.arpa ip6.arpa
        }
        cache 30
        loop
        reload
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      containers:
      - name: coredns
        image: $TRAFFICLAB_COREDNS_IMAGE
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
        ports: [{containerPort: 53, name: dns, protocol: UDP}, {containerPort: 53, name: dns-tcp, protocol: TCP}]
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        securityContext: {capabilities: {add: [NET_BIND_SERVICE]}}
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $DNS_SVC_IP
  selector: {k8s-app: kube-dns}
  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
YAML
wait_for "CoreDNS Ready" 180 kubectl -n kube-system wait --for=condition=Available deploy/coredns --timeout=5s
wait_for "default serviceaccount exists" 60 kubectl -n default get sa default
"$HERE/healthy.sh" >/dev/null
ts "cluster up: export KUBECONFIG=$KUBECONFIG PATH=$K8S_BIN:\$PATH  (or: . hack/cluster/env.sh)"
