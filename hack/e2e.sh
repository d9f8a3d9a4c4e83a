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
    local rc=$? after
    "$ROOT/hack/cluster/down.sh" || rc=1
    after=$(mktemp)
    # A kernel module up.sh loaded (br_netfilter, nf_conntrack) stays loaded and its sysctls
    # appear: only the keys that were there before are compared.
    if ! diff -u "$HOST_BEFORE" <("$ROOT/hack/cluster/host-state.sh" |
      awk 'NR == FNR { if ($2 == "=") had[$1] = 1; next } !($2 == "=" && !($1 in had))' "$HOST_BEFORE" -) > "$after"; then
      cat "$after" >&2
      echo "e2e: the host is not as it was before the cluster came up (diff above: - before, + after)" >&2
      rc=1
    fi
    rm -f "$HOST_BEFORE" "$after"
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
