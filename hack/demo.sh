#!/usr/bin/env bash
# make demo: the cluster is up and the plugin built; show kubectl finding the plugin, then a real
# port-forward through the agent to a Service the pod resolves by name, and a real steal: the demo
# Service answered by a server on this machine, then by its pod again once the steal ends.
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
        imagePullPolicy: IfNotPresent
        ports: [{name: http, containerPort: 8080}]
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
steal_out=$(mktemp)
pf=; st=; local_srv=
cleanup() {
  # SIGINT is the plugin's Ctrl-C (it listens for it); the local server, started in the background of
  # a script, inherits SIGINT ignored, so it gets SIGTERM.
  for p in $pf $st; do kill -INT "$p" 2>/dev/null || true; done
  [[ -z $local_srv ]] || kill "$local_srv" 2>/dev/null || true
  for p in $pf $st $local_srv; do wait "$p" 2>/dev/null || true; done
  rm -f "$out" "$steal_out"
}
trap cleanup EXIT
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
kill -INT $pf; wait $pf 2>/dev/null || true; pf=

svc_ip=$(kubectl -n trafficlab-demo get svc echo -o jsonpath='{.spec.clusterIP}')
pod_of() { sed -n 's/.*"pod": *"\([^"]*\)".*/\1/p'; }
say "curl http://$svc_ip/demo  (the Service's ClusterIP; answered by the pod)"
before=$(curl -sS --max-time 10 "http://$svc_ip/demo" | pod_of)
echo "answered by: $before"

say "a local server on 127.0.0.1:18081 (the demo's echo peer, built for this machine, calling itself laptop)"
go build -o "$ROOT/_output/bin/peer-echo" "$ROOT/test/peers/echo"
POD_NAME=laptop "$ROOT/_output/bin/peer-echo" -addr 127.0.0.1:18081 2>/dev/null & local_srv=$!
for _ in $(seq 1 100); do curl -fsS --max-time 1 http://127.0.0.1:18081/healthz >/dev/null 2>&1 && break; sleep 0.1; done

say "kubectl trafficlab steal -n trafficlab-demo svc/echo --port 80:18081"
kubectl trafficlab steal -n trafficlab-demo svc/echo --port 80:18081 >"$steal_out" 2>&1 & st=$!
for _ in $(seq 1 600); do
  grep -q "stealing port" "$steal_out" && break
  kill -0 $st 2>/dev/null || { cat "$steal_out"; exit 1; }
  sleep 0.2
done
cat "$steal_out"
say "curl http://$svc_ip/demo  (same Service, now answered by the local server)"
during=$(curl -sS --max-time 10 "http://$svc_ip/demo" | pod_of)
echo "answered by: $during"
[[ $during == laptop ]] || { echo "demo: the steal did not take the request (answered by ${during:-nobody})"; exit 1; }

say "Ctrl-C the steal"
kill -INT $st; wait $st 2>/dev/null || true; st=
cat "$steal_out"
say "curl http://$svc_ip/demo  (the pod answers again)"
after=$(curl -sS --max-time 10 "http://$svc_ip/demo" | pod_of)
echo "answered by: $after"
[[ $after == "$before" ]] || { echo "demo: after the steal, answered by ${after:-nobody}, not the pod $before"; exit 1; }
