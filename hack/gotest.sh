#!/usr/bin/env bash
# One test phase (unit, kernel, e2e) through the pinned gotestsum (hack/tools/gotestsum/go.mod):
# go test's own output (GOTESTSUM_FORMAT, default standard-quiet; the e2e uses standard-verbose),
# then gotestsum's summary, whose last line is "DONE N tests[, K skipped][, F failures] in Xs".
# The test events are kept in _output/test/PHASE.json.
#
# With CI=true a skipped test fails the phase: in CI every prerequisite is installed, so a skip
# can only hide a test that did not run. The skipped tests are listed with their reasons.
#
# Usage: hack/gotest.sh PHASE [go test args]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

phase=${1:?usage: hack/gotest.sh PHASE [go test args]}
shift
gotestsum="$("$ROOT/hack/tools/install.sh" gotestsum)"
mkdir -p "$ROOT/_output/test"
json="$ROOT/_output/test/$phase.json"
rm -f "$json"

rc=0
GOTESTSUM_FORMAT=${GOTESTSUM_FORMAT:-standard-quiet} "$gotestsum" --jsonfile "$json" -- "$@" || rc=$?

# Package-level skips ("no test files") have no Test; subtests count as tests, as in the summary.
if ! skips=$(jq -r 'select(.Action == "skip" and .Test != null) | "\(.Package) \(.Test)"' "$json"); then
	printf 'FAIL\t%s: cannot read the test events in %s for skipped tests\n' "$phase" "$json"
	exit 1
fi
if [[ -n "$skips" && "${CI:-}" == true ]]; then
	echo "skipped in the $phase phase:" >&2
	sed 's/^/  /' <<<"$skips" >&2
	# go test's own form of a failed run, so that the phase still ends in a line CI knows.
	printf 'FAIL\t%s: %d test(s) skipped; with CI=true a skipped test is a failure\n' "$phase" "$(wc -l <<<"$skips")"
	rc=1
fi
exit "$rc"
