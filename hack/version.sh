#!/usr/bin/env bash
# Prints the version stamped into the plugin, the agent and the agent image tag. It must be valid semver
# (krew requires it) and a valid image tag (no "+"): the nearest v* tag as `git describe` gives it, or
# v0.0.0-<commit> between releases, with -dirty for uncommitted changes.
set -euo pipefail
cd "$(dirname "$0")/.."
if v=$(git describe --tags --match 'v[0-9]*' --dirty 2>/dev/null); then
  echo "$v"
elif c=$(git rev-parse --short=12 HEAD 2>/dev/null); then
  d=""; git diff --quiet HEAD 2>/dev/null || d="-dirty"
  echo "v0.0.0-$c$d"
else
  echo "v0.0.0-dev"
fi
