#!/usr/bin/env bash
# Runs the pinned golangci-lint (hack/tools/golangci/go.mod) with .golangci.yml
# on the main module. The binary is built once into a cache outside the repo
# (see hack/tools/install.sh); later runs start at once.
#
#   hack/lint.sh                 lint ./...
#   hack/lint.sh --fix           also apply fixes (gofmt/goimports, misspell, ...)
#   hack/lint.sh ./ephemeral/... any golangci-lint run arguments
#
# Equivalent without the cache: go tool -modfile=hack/tools/golangci/go.mod golangci-lint run
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

lint="$(hack/tools/install.sh golangci-lint)"
if [[ $# -eq 0 ]]; then
	set -- ./...
fi
# golangci-lint keeps its analysis cache in GOLANGCI_LINT_CACHE (default
# ~/.cache/golangci-lint), already outside the repo.
# --allow-serial-runners: wait for another golangci-lint run (same machine)
# instead of failing with "parallel golangci-lint is running".
exec "$lint" run --allow-serial-runners --config "$root/.golangci.yml" "$@"
