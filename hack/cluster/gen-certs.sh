#!/bin/bash
# Generate (once) a CA, the apiserver and image registry serving certs, client certs for admin, kubelet,
# controller-manager, scheduler, kube-proxy and apiserver->kubelet, the kubelet serving
# cert, the service-account key pair, and a kubeconfig per client. Existing files are kept,
# so re-running is cheap and never invalidates a running cluster's credentials.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
mkdir -p "$PKI_DIR"; chmod 700 "$PKI_DIR"; cd "$PKI_DIR"
# ECDSA P-256 throughout: generating ten RSA keys costs ~15 s on a busy 2-core VM, EC keys ~0.1 s.
EC=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1)
[ -f ca.crt ] || openssl req -x509 "${EC[@]}" -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=trafficlab-ca" 2>/dev/null
cert() { # name CN O [san]  (with a SAN the cert also serves)
  local n=$1 cn=$2 o=$3 san=${4:-} ext
  [ -f "$n.crt" ] && return 0
  openssl req "${EC[@]}" -nodes -keyout "$n.key" -out "$n.csr" -subj "/CN=$cn${o:+/O=$o}" 2>/dev/null
  ext=$(mktemp)
  { echo "basicConstraints=CA:FALSE"; echo "keyUsage=critical,digitalSignature"
    if [ -n "$san" ]; then echo "extendedKeyUsage=serverAuth,clientAuth"; echo "subjectAltName=$san"; else echo "extendedKeyUsage=clientAuth"; fi; } > "$ext"
  openssl x509 -req -in "$n.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$n.crt" -days 3650 -extfile "$ext" 2>/dev/null
  rm -f "$ext" "$n.csr"
}
cert apiserver kube-apiserver "" "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$KUBERNETES_SVC_IP,IP:$NODE_IP"
cert admin admin system:masters
# both local registries (REGISTRY_ADDR, AUTH_REGISTRY_ADDR) serve with this one
cert registry trafficlab-registry "" "DNS:localhost,IP:127.0.0.1,IP:$NODE_IP"
cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
cert kubelet-client "system:node:$NODE_NAME" system:nodes
cert kubelet-serving "system:node:$NODE_NAME" system:nodes "DNS:$NODE_NAME,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP"
cert controller-manager system:kube-controller-manager ""
cert scheduler system:kube-scheduler ""
cert kube-proxy system:kube-proxy ""
[ -f sa.key ] || { openssl ecparam -name prime256v1 -genkey -noout -out sa.key; openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null; }
kc() { # kubeconfig-name cert-name
  cat > "$CLUSTER_DIR/$1.kubeconfig.tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: trafficlab
  cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$PKI_DIR/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$PKI_DIR/$2.crt", client-key: "$PKI_DIR/$2.key"}
contexts:
- name: trafficlab
  context: {cluster: trafficlab, user: $2}
current-context: trafficlab
KC
  mv "$CLUSTER_DIR/$1.kubeconfig.tmp" "$CLUSTER_DIR/$1.kubeconfig"
}
kc admin admin; kc kubelet kubelet-client; kc controller-manager controller-manager; kc scheduler scheduler; kc kube-proxy kube-proxy
