#!/bin/bash
# make test-kernel: the kernel tests, in network namespaces they create, then a check that the host
# is as it was: the tests remove their namespaces, tables and processes themselves (even when they
# fail), and this undoes the one change ip netns makes for them, the bind mount of /run/netns.
# The kernel tests are the tests defined in files with the kernel build tag (`//go:build linux &&
# kernel`); exactly those run, with the tag and TEST_TAGS (the Makefile's netgo,osusergo), so the
# untagged tests of the same packages, which the unit phase ran, do not run twice. Under the tag a
# kernel test fails, never skips, when something it needs is missing.
# Usage: hack/test-kernel.sh [go test flags, e.g. -race -count=1]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/hack/cluster/env.sh"
before=$(mktemp)
trap 'rm -f "$before"' EXIT
"$ROOT/hack/cluster/host-state.sh" > "$before"
netns_dir_was=$([ -e /run/netns ] && echo present || echo absent)
cd "$ROOT"
mapfile -t files < <(grep -rlE --include='*_test.go' '^//go:build .*\bkernel\b' cmd pkg ephemeral capture internal test hack | LC_ALL=C sort)
if ((${#files[@]} == 0)); then
  echo "FAIL	kernel: no test file has the kernel build tag"
  exit 1
fi
mapfile -t pkgs < <(printf './%s\n' "${files[@]%/*}" | LC_ALL=C sort -u)
names=$(sed -nE 's/^func (Test[A-Za-z0-9_]*)\(.*/\1/p' "${files[@]}" | grep -vx TestMain | LC_ALL=C sort -u | paste -sd'|')
rc=0
"$ROOT/hack/gotest.sh" kernel -tags "kernel${TEST_TAGS:+,$TEST_TAGS}" "$@" -run "^($names)\$" "${pkgs[@]}" || rc=$?
if [ "$netns_dir_was" = absent ] && unmount_netns_dir /run/netns; then
  rmdir /run/netns 2>/dev/null || true
fi
"$ROOT/hack/cluster/host-diff.sh" "$before" || rc=1
exit "$rc"
