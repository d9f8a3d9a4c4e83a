#!/bin/bash
# Run the e2e suite against the trafficlab cluster. If no healthy cluster is up, bring one
# up and tear it down afterwards; a cluster that was already up is left running.
# Usage: hack/e2e.sh [go test args, e.g. -run TestGuard]     E2E_TIMEOUT (default 20m)
# TRAFFICLAB_RACE_LOG (make e2e sets it, with a race-detector build of the plugin first on PATH):
# the plugin's race reports go to files there, and any report fails the run, also one from a
# plugin that a test killed before it could exit with the race detector's status.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/hack/cluster/env.sh"

if "$ROOT/hack/cluster/healthy.sh"; then
  # still import images rebuilt since the cluster came up (fast when nothing changed)
  "$ROOT/hack/cluster/up.sh"
else
  # What a cluster that stopped without down.sh left (the machine rebooted, its session was killed)
  # is not the host's own state: remove it first, or the comparison below would fail on it.
  if [ -d "$CLUSTER_DIR" ]; then
    ts "a cluster that is no longer running left $CLUSTER_DIR: tearing its remains down first"
    "$ROOT/hack/cluster/down.sh"
  fi
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
if [ -n "${TRAFFICLAB_RACE_LOG:-}" ]; then
  rm -rf "$TRAFFICLAB_RACE_LOG" && mkdir -p "$TRAFFICLAB_RACE_LOG"
  export GORACE="log_path=$TRAFFICLAB_RACE_LOG/race${GORACE:+ $GORACE}"
fi
rc=0
GOTESTSUM_FORMAT=standard-verbose "$ROOT/hack/gotest.sh" e2e -tags e2e -count=1 -timeout "${E2E_TIMEOUT:-20m}" ./test/e2e/... "$@" || rc=$?
if [ -n "${TRAFFICLAB_RACE_LOG:-}" ] && [ -n "$(ls -A "$TRAFFICLAB_RACE_LOG")" ]; then
  cat "$TRAFFICLAB_RACE_LOG"/* >&2
  echo "FAIL	e2e: the plugin reported data races (above; files in $TRAFFICLAB_RACE_LOG)"
  rc=1
fi
ts "e2e tests finished: exit $rc"
exit $rc
