#!/bin/bash
# Run the e2e suite against the trafficlab cluster. If no healthy cluster is up, bring one
# up and tear it down afterwards; a cluster that was already up is left running.
# Usage: hack/e2e.sh [go test args, e.g. -run TestGuard]     E2E_TIMEOUT (default 20m)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/hack/cluster/env.sh"

if "$ROOT/hack/cluster/healthy.sh"; then
  # still import images rebuilt since the cluster came up (fast when nothing changed)
  "$ROOT/hack/cluster/up.sh"
else
  trap '"$ROOT/hack/cluster/down.sh"' EXIT
  "$ROOT/hack/cluster/up.sh"
fi
# shellcheck disable=SC1090
. "$IMAGES_REFS"
export TRAFFICLAB_PEERS_IMAGE K8S_VERSION
cd "$ROOT"
ts "running e2e tests"
rc=0
go test -tags e2e -count=1 -v -timeout "${E2E_TIMEOUT:-20m}" ./test/e2e/... "$@" || rc=$?
ts "e2e tests finished: exit $rc"
exit $rc
