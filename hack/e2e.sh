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
  # The cluster we bring up must leave the host as it found it: the host state after down.sh is
  # compared with the state before up.sh, and a difference fails the run.
  HOST_BEFORE=$(mktemp)
  "$ROOT/hack/cluster/host-state.sh" > "$HOST_BEFORE"
  teardown() {
    local rc=$?
    "$ROOT/hack/cluster/down.sh" || rc=1
    "$ROOT/hack/cluster/host-diff.sh" "$HOST_BEFORE" || rc=1
    rm -f "$HOST_BEFORE"
    exit "$rc"
  }
  trap teardown EXIT
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
