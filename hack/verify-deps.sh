#!/usr/bin/env bash
# docs/dependencies.md names every dependency, with its reason:
#
#   hack/verify-deps.sh
#
# - every module go.mod requires directly, and every tool a hack/tools/*/go.mod
#   pins (a `tool` line, or a direct requirement for a module whose own main
#   runs a library command, as hack/tools/istio does), is named in the first column of one of its tables (as `module/path`;
#   a tool is covered by the module it is built from);
# - every module path the first column names is still one of them (or one of
#   their packages, such as `golang.org/x/net/bpf`).
#
# go.mod is read with `go mod edit -json`, the go command's own parser. Every
# failure prints one line "verify-deps: <what is wrong>; <how to fix>" and the
# script exits 1.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
doc=docs/dependencies.md

# json_paths KEY FILE: the "Path" of each entry of go.mod's KEY array ("Require"
# or "Tool"), without the requirements marked indirect.
json_paths() {
	go mod edit -json "$2" | awk -v key="\"$1\": [" '
		index($0, key) == 2 { in_list = 1; next }
		in_list && /^\t\]/ { in_list = 0 }
		!in_list { next }
		/"Path":/ { path = $2; gsub(/[",]/, "", path) }
		/"Indirect": true/ { path = "" }
		/^\t\t\}/ { if (path != "") print path; path = "" }'
}

required=$(json_paths Require go.mod)
tools=$(for f in hack/tools/*/go.mod; do
	json_paths Tool "$f"
	json_paths Require "$f"
done)
if [[ -z "$required" ]]; then
	echo "verify-deps: found no direct requirement in go.mod; check how go mod edit -json prints it" >&2
	exit 1
fi

# The backquoted module paths in the first column of every table row.
named=$(awk -F'|' '/^\| *`/ { print $2 }' "$doc" | grep -o '`[^`]*`' | tr -d '`' | grep '^[a-z0-9.-]*\.[a-z]*/' | sort -u)

failures=0
fail() {
	echo "verify-deps: $*" >&2
	failures=$((failures + 1))
}

for m in $required; do
	grep -qxF "$m" <<<"$named" || fail "go.mod requires $m, which $doc does not name; add a row that says why it was chosen"
done
for t in $tools; do
	covered=""
	for n in $named; do
		[[ "$t" == "$n" || "$t" == "$n"/* ]] && covered=1
	done
	[[ -n "$covered" ]] || fail "hack/tools pins $t, whose module $doc does not name; add a row that says why it was chosen"
done
for n in $named; do
	known=""
	for m in $required $tools; do
		[[ "$n" == "$m" || "$n" == "$m"/* || "$m" == "$n"/* ]] && known=1
	done
	[[ -n "$known" ]] || fail "$doc names $n, which neither go.mod nor hack/tools requires; drop its row"
done
((failures == 0)) || exit 1
echo "verify-deps: $(wc -w <<<"$required") direct requirements and $(wc -w <<<"$tools") tools named in $doc"
