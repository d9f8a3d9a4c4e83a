#!/bin/bash
# make test-kernel: the kernel tests, in network namespaces they create, then a check that the host
# is as it was: the tests remove their namespaces, tables and processes themselves (even when they
# fail), and this undoes the one change ip netns makes for them, the bind mount of /run/netns.
# Usage: hack/test-kernel.sh [go test flags]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/hack/cluster/env.sh"
before=$(mktemp)
trap 'rm -f "$before"' EXIT
"$ROOT/hack/cluster/host-state.sh" > "$before"
netns_dir_was=$([ -e /run/netns ] && echo present || echo absent)
cd "$ROOT"
rc=0
TRAFFICLAB_KERNEL_TESTS=1 go test "$@" -run Kernel ./... || rc=$?
if [ "$netns_dir_was" = absent ] && unmount_netns_dir /run/netns; then
  rmdir /run/netns 2>/dev/null || true
fi
"$ROOT/hack/cluster/host-diff.sh" "$before" || rc=1
exit "$rc"
