#!/usr/bin/env bash
# make demo: the cluster is up and the plugin built; show kubectl finding the plugin, then a real
# port-forward through the agent to a Service the pod resolves by name. (The steal demo arrives with
# the steal verb.)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/hack/cluster/env.sh"
eval "$("$ROOT/hack/cluster/images.sh")"
export PATH="$ROOT/_output/bin:$PATH"
say() { printf '\n+ %s\n' "$*"; }

say kubectl plugin list
kubectl plugin list 2>/dev/null | grep trafficlab
say kubectl trafficlab version
kubectl trafficlab version

say "demo app: Deployment echo behind Service echo in namespace trafficlab-demo"
kubectl create namespace trafficlab-demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n trafficlab-demo apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - name: echo
        image: $TRAFFICLAB_PEERS_IMAGE
        imagePullPolicy: Never
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
YAML
kubectl -n trafficlab-demo rollout status deploy/echo --timeout=120s

out=$(mktemp)
trap 'kill -INT $pf 2>/dev/null; wait $pf 2>/dev/null; rm -f $out' EXIT
say "kubectl trafficlab port-forward -n trafficlab-demo deploy/echo 18080:echo:80"
kubectl trafficlab port-forward -n trafficlab-demo deploy/echo 18080:echo:80 >"$out" 2>&1 & pf=$!
for _ in $(seq 1 300); do
  grep -q "Forwarding from 127.0.0.1:18080" "$out" && break
  kill -0 $pf 2>/dev/null || { cat "$out"; exit 1; }
  sleep 0.2
done
cat "$out"
say "curl http://127.0.0.1:18080/demo  (reaches Service echo by its name, dialed inside the pod)"
curl -sS --max-time 10 http://127.0.0.1:18080/demo
