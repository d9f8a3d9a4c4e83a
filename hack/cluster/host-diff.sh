#!/bin/bash
# hack/cluster/host-diff.sh BEFORE: compare the host state now (host-state.sh) with BEFORE, a
# host-state.sh output taken earlier; print the difference and fail if there is one. A kernel module
# loaded meanwhile (br_netfilter, nf_conntrack) stays loaded and its sysctls appear: only the keys
# that were there before are compared.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
before=$1
if ! diff -u "$before" <("$HERE/host-state.sh" |
  awk 'NR == FNR { if ($2 == "=") had[$1] = 1; next } !($2 == "=" && !($1 in had))' "$before" -) >&2; then
  echo "the host is not as it was before (diff above: - before, + after)" >&2
  exit 1
fi
