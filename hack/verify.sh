#!/usr/bin/env bash
# Release and repository checks; run after hack/dist.sh.
#
#   hack/verify.sh              all checks
#   hack/verify.sh krew docs    only some: krew | docs | deps | go | agent-deps
#
# krew        dist/trafficlab.yaml passes validate-krew-manifest (krew v0.4.4,
#             pinned in hack/tools/krew/go.mod) twice:
#               1. as released (-skip-install: its github.com URIs do not exist
#                  before the release is published): schema, name = file name,
#                  semver, sha256 format, selectors, no overlapping platforms;
#               2. with the URIs pointed at dist/ served on 127.0.0.1 and
#                  without -skip-install: for every platform the tool runs
#                  `kubectl krew install --manifest` with KREW_OS/KREW_ARCH set,
#                  which downloads our archive, checks its sha256, unpacks it,
#                  applies `files`, links `bin`, and then it requires a LICENSE.
#             Also: checksums.txt matches, each archive holds exactly the two
#             binaries + LICENSE built for its os/arch (go version -m),
#             and on this machine's platform a krew install from the local
#             archive runs (`kubectl trafficlab version` prints VERSION) and,
#             once linked as the manifest's caveat says, kubectl's plugin
#             completion reaches kubectl_complete-trafficlab.
# docs        docs/architecture.md has a "- `dir/` — ..." line for every Go
#             package directory and names no path that does not exist; each
#             line's import clause and every arrow match `go list`
#             (hack/archmap).
# deps        every direct requirement of go.mod and every pinned tool has a
#             row in docs/dependencies.md, and no row names an unused module
#             (hack/verify-deps.sh).
# go          gofmt -l is empty and go vet ./... passes, also with the build tags
#             of the e2e and kernel tests (vet_tags), which a plain build omits.
# agent-deps  nothing under ephemeral/ or capture/ imports k8s.io/*, even
#             indirectly (depguard in .golangci.yml sees direct imports only).
#
# Every failure prints one line "verify: <what is wrong>; <how to fix>" and
# the script exits 1. Tool logs are kept in the directory printed on failure.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1

release_url="https://github.com/trafficlab/kubectl-trafficlab/releases/download"
pkg_roots=(cmd pkg ephemeral capture internal hack test)
# Build tags of code that a plain build leaves out: the e2e tests and the kernel tests. The same list
# is run.build-tags in .golangci.yml.
vet_tags="e2e,kernel"

checks=("$@")
[[ ${#checks[@]} -gt 0 ]] || checks=(krew docs deps go agent-deps)

logs="$(mktemp -d "${TMPDIR:-/tmp}/trafficlab-verify.XXXXXX")"
failures=0
server_pid=""
cleanup() {
	[[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
	if ((failures == 0)); then rm -rf "$logs"; fi
}
trap cleanup EXIT

fail() {
	echo "verify: $*" >&2
	failures=$((failures + 1))
}
step() { echo "--- $*" >&2; }

# ---------------------------------------------------------------- krew
serve_dist() { # serve_dist DIR -> sets $port; a stdlib-only Go file server on 127.0.0.1
	local srv="$logs/serve"
	mkdir -p "$srv"
	cat >"$srv/main.go" <<'EOF'
// Serves one directory on 127.0.0.1 on a free port, written to a file; logs
// every request to stderr; exits by itself after 15 minutes.
package main

import (
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	dir, portFile := os.Args[1], os.Args[2]
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	if err := os.WriteFile(portFile+".tmp", []byte(port), 0o644); err != nil {
		log.Fatal(err)
	}
	if err := os.Rename(portFile+".tmp", portFile); err != nil {
		log.Fatal(err)
	}
	files := http.FileServer(http.Dir(dir))
	time.AfterFunc(15*time.Minute, func() { log.Print("lifetime over"); os.Exit(0) })
	log.Fatal(http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.Printf("%s %s", r.Method, r.URL.Path)
		files.ServeHTTP(w, r)
	})))
}
EOF
	printf 'module verifyserve\n\ngo 1.22\n' >"$srv/go.mod"
	if ! (cd "$srv" && env -u GOOS -u GOARCH -u GOFLAGS CGO_ENABLED=0 go build -o serve . >"$logs/serve-build.log" 2>&1); then
		return 1
	fi
	"$srv/serve" "$1" "$srv/port" 2>"$logs/serve.log" &
	server_pid=$!
	for _ in $(seq 100); do
		[[ -s "$srv/port" ]] && break
		sleep 0.05
	done
	port="$(cat "$srv/port" 2>/dev/null)"
	[[ -n "$port" ]]
}

# krew_error LOG: the cause of a validate-krew-manifest failure on one line.
# Its fatal line names the platform; when `kubectl krew install` failed, the
# cause is in krew's own "failed to install plugin" line inside the output.
krew_error() {
	local fatal cause
	fatal="$(grep -m1 '^F[0-9]' "$1" | sed 's/^[^]]*\] //; s/: plugin install command failed.*//')"
	cause="$(grep -m1 -o 'failed to install plugin .*' "$1")"
	if [[ -n "$cause" ]]; then
		echo "${fatal}: ${cause}" | cut -c1-400
	else
		echo "${fatal:-$(tail -1 "$1")}" | cut -c1-400
	fi
}

check_krew() {
	step "krew: validate dist/trafficlab.yaml"
	local manifest=dist/trafficlab.yaml
	if [[ ! -f "$manifest" ]]; then
		fail "$manifest is missing; run hack/dist.sh VERSION (make dist) first"
		return
	fi
	local tools vkm kkrew
	if ! tools="$(hack/tools/install.sh validate-krew-manifest kubectl-krew 2>"$logs/tools.log")"; then
		fail "could not build validate-krew-manifest/krew (log: $logs/tools.log); check access to the Go module proxy"
		return
	fi
	vkm="$(sed -n 1p <<<"$tools")" kkrew="$(sed -n 2p <<<"$tools")"

	local version
	version="$(sed -n 's/^  version: *"\{0,1\}\([^" ]*\)"\{0,1\} *$/\1/p' "$manifest" | head -1)"
	if [[ -z "$version" ]]; then
		fail "$manifest has no spec.version line; regenerate it with hack/dist.sh VERSION"
		return
	fi

	# 1. the manifest exactly as it will be published.
	if ! "$vkm" -manifest "$manifest" -skip-install >"$logs/validate-release.log" 2>&1; then
		fail "$manifest fails krew validation: $(krew_error "$logs/validate-release.log"); fix krew-manifest.yaml and rerun hack/dist.sh"
		return
	fi
	if grep -qv "^$release_url/$version/" <(sed -n 's/^ *uri: *//p' "$manifest"); then
		fail "$manifest has a uri outside $release_url/$version/; fix krew-manifest.yaml"
	fi

	# checksums.txt and archive contents.
	if ! (cd dist && sha256sum --quiet -c checksums.txt >"$logs/checksums.log" 2>&1); then
		fail "dist/checksums.txt does not match the archives (log: $logs/checksums.log); rerun hack/dist.sh"
	fi
	local uri file os arch exe want got x
	while read -r uri; do
		file="${uri##*/}"
		if [[ ! "$file" =~ ^kubectl-trafficlab_${version//./\\.}_([a-z]+)_([a-z0-9]+)\.(tar\.gz|zip)$ ]]; then
			fail "archive name $file does not follow kubectl-trafficlab_<version>_<os>_<arch>.(tar.gz|zip); fix krew-manifest.yaml"
			continue
		fi
		os="${BASH_REMATCH[1]}" arch="${BASH_REMATCH[2]}" exe=""
		[[ "$os" == windows ]] && exe=".exe"
		if [[ ! -f "dist/$file" ]]; then
			fail "dist/$file is named in $manifest but missing; rerun hack/dist.sh"
			continue
		fi
		x="$logs/unpack/$os-$arch"
		mkdir -p "$x"
		if [[ "$file" == *.zip ]]; then
			unzip -q -o "dist/$file" -d "$x" && got="$(unzip -Z1 "dist/$file" | LC_ALL=C sort | tr '\n' ' ')"
		else
			tar -C "$x" -xzf "dist/$file" && got="$(tar -tzf "dist/$file" | LC_ALL=C sort | tr '\n' ' ')"
		fi
		want="$(printf '%s\n' LICENSE "kubectl-trafficlab$exe" "kubectl_complete-trafficlab$exe" | LC_ALL=C sort | tr '\n' ' ')"
		if [[ "$got" != "$want" ]]; then
			fail "dist/$file holds [${got% }], want [${want% }]; fix hack/dist.sh"
			continue
		fi
		for b in "kubectl-trafficlab$exe" "kubectl_complete-trafficlab$exe"; do
			go version -m "$x/$b" >"$x/$b.buildinfo" 2>&1
			if ! grep -q "GOOS=$os\$" "$x/$b.buildinfo" || ! grep -q "GOARCH=$arch\$" "$x/$b.buildinfo"; then
				fail "$b in dist/$file is not built for $os/$arch (see $x/$b.buildinfo); fix hack/dist.sh"
			fi
		done
	done < <(sed -n 's/^ *uri: *//p' "$manifest")

	# 2. install every platform from a local copy of the archives.
	local port
	if ! serve_dist "$root/dist"; then
		fail "could not start the local file server for dist/ (log: $logs/serve.log, $logs/serve-build.log)"
		return
	fi
	local local_dir="$logs/local"
	mkdir -p "$local_dir/bin"
	# The file name must stay trafficlab.yaml: krew takes the plugin name from it.
	sed "s#$release_url/$version/#http://127.0.0.1:$port/#" "$manifest" >"$local_dir/trafficlab.yaml"
	cp "$kkrew" "$local_dir/bin/kubectl-krew"
	# validate-krew-manifest runs `kubectl krew install`; use the real kubectl
	# (plugin dispatch) when there is one, else a two-line stand-in.
	local real_kubectl=true
	if ! command -v kubectl >/dev/null 2>&1; then
		real_kubectl=false
		# Plugin dispatch only: `kubectl NAME args` runs kubectl-NAME.
		# shellcheck disable=SC2016 # a script body, expanded when it runs
		printf '#!/bin/sh\np="$1"; shift\nexec "kubectl-$p" "$@"\n' >"$local_dir/bin/kubectl"
		chmod +x "$local_dir/bin/kubectl"
	fi
	echo "kubectl used: $(PATH="$local_dir/bin:$PATH" command -v kubectl)" >"$logs/validate-install.log"
	if ! PATH="$local_dir/bin:$PATH" "$vkm" -manifest "$local_dir/trafficlab.yaml" >>"$logs/validate-install.log" 2>&1; then
		fail "krew could not install dist/ archives: $(krew_error "$logs/validate-install.log"); full log: $logs/validate-install.log"
		return
	fi
	local n fetched
	n="$(grep -c '^ *uri:' "$manifest")"
	fetched="$(grep -c 'GET /kubectl-trafficlab_' "$logs/serve.log")"
	if ((fetched < n)); then
		fail "krew fetched $fetched of $n archives from the local server (log: $logs/serve.log); the install check did not cover every platform"
	fi

	# 3. this machine's platform: what a user gets after `kubectl krew install`.
	local hos harch kr="$logs/krew-root" hfile
	hos="$(go env GOHOSTOS)" harch="$(go env GOHOSTARCH)"
	hfile="$(sed -n "s#^ *uri: .*/\(kubectl-trafficlab_${version}_${hos}_${harch}\.[a-z.]*\)\$#\1#p" "$manifest")"
	if [[ -z "$hfile" ]]; then
		echo "krew: no archive for $hos/$harch, skipping the run check" >&2
	elif ! env -i PATH="$local_dir/bin:$PATH" KREW_ROOT="$kr" \
		kubectl krew install --manifest="$local_dir/trafficlab.yaml" --archive="dist/$hfile" >"$logs/krew-install.log" 2>&1; then
		fail "kubectl krew install --archive dist/$hfile failed (log: $logs/krew-install.log)"
	else
		if [[ ! -x "$kr/store/trafficlab/$version/kubectl_complete-trafficlab" ]]; then
			fail "krew did not unpack kubectl_complete-trafficlab to store/trafficlab/$version/ as the caveat in krew-manifest.yaml says; fix its files: list"
		fi
		# -trimpath drops -ldflags from the build info, so the version stamp is
		# checked by running the binary (all platforms share the ldflags).
		if ! env -i PATH="$kr/bin:$local_dir/bin:$PATH" HOME="$logs" kubectl trafficlab version >"$logs/run.log" 2>&1 ||
			! grep -qF -- "$version" "$logs/run.log"; then
			fail "\`kubectl trafficlab version\` from the krew install did not print $version (log: $logs/run.log); check pkg/version and the ldflags in hack/dist.sh"
		fi
		# The caveat's link makes kubectl's plugin completion find the helper.
		ln -sf "$kr/store/trafficlab/$version/kubectl_complete-trafficlab" "$kr/bin/kubectl_complete-trafficlab"
		# Without a real kubectl, call the helper the way kubectl would.
		local complete=(kubectl __complete trafficlab ver)
		$real_kubectl || complete=(kubectl_complete-trafficlab ver)
		if ! env -i PATH="$kr/bin:$local_dir/bin:$PATH" HOME="$logs" "${complete[@]}" >"$logs/complete.log" 2>&1 ||
			! grep -q '^version' "$logs/complete.log"; then
			fail "\`kubectl __complete trafficlab ver\` through kubectl_complete-trafficlab did not offer \"version\" (log: $logs/complete.log); check cmd/kubectl_complete-trafficlab"
		fi
	fi
	kill "$server_pid" 2>/dev/null
	wait "$server_pid" 2>/dev/null
	server_pid=""
}

# ---------------------------------------------------------------- docs
go_pkg_dirs() {
	local r
	for r in "${pkg_roots[@]}"; do
		[[ -d "$r" ]] || continue
		find "$r" \( -name testdata -o -name vendor -o -name '.*' -o -name '_*' \) -prune -o \
			-type f -name '*.go' -printf '%h\n'
	done | LC_ALL=C sort -u
}

check_docs() {
	step "docs: docs/architecture.md covers every package directory"
	local doc=docs/architecture.md
	if [[ ! -f "$doc" ]]; then
		fail "$doc is missing; write the package map: one line \"- \`dir/\` — what it does\" per Go package directory"
		return
	fi
	# The subject of each entry is the first code span of a list line.
	local entries
	# shellcheck disable=SC2016 # backquotes are markdown, not expansions
	entries="$(sed -n 's/^[[:space:]]*[-*][[:space:]]\{1,\}`\([^`]*\)`.*/\1/p' "$doc" | sed 's#^\./##; s#/*$##' | LC_ALL=C sort -u)"
	local d
	while read -r d; do
		[[ -n "$d" ]] || continue
		if ! grep -qxF -- "$d" <<<"$entries"; then
			fail "$doc does not mention $d/; add a line \"- \`$d/\` — <what it does>\""
		fi
	done < <(go_pkg_dirs)
	while read -r d; do
		[[ -n "$d" ]] || continue
		if [[ ! -e "$d" ]]; then
			fail "$doc names \`$d/\`, which does not exist; remove or rename that line"
		fi
	done <<<"$entries"
	step "docs: the arrows of docs/architecture.md match the imports"
	local line
	while read -r line; do
		fail "${line#archmap: }"
	done < <(go run ./hack/archmap -doc "$doc" 2>&1 >/dev/null | grep -v '^exit status')
}

# ---------------------------------------------------------------- deps
check_deps() {
	step "deps: docs/dependencies.md names every dependency"
	local line
	while read -r line; do
		[[ -n "$line" ]] && fail "${line#verify-deps: }"
	done < <(hack/verify-deps.sh 2>&1 >/dev/null)
}

# ---------------------------------------------------------------- go
check_go() {
	step "go: gofmt and go vet"
	local unformatted
	unformatted="$(find . \( -name .git -o -name testdata -o -name vendor -o -name dist \) -prune -o -type f -name '*.go' -print0 |
		xargs -0 -r gofmt -l 2>"$logs/gofmt.log")"
	if [[ -s "$logs/gofmt.log" ]]; then
		fail "gofmt cannot parse some files: $(head -1 "$logs/gofmt.log")"
	fi
	if [[ -n "$unformatted" ]]; then
		unformatted="$(tr '\n' ' ' <<<"$unformatted")"
		fail "gofmt would change ${unformatted% }; run: gofmt -w ${unformatted% }"
	fi
	local tags
	for tags in "" "$vet_tags"; do
		if ! go vet ${tags:+-tags "$tags"} ./... >"$logs/vet.log" 2>&1; then
			fail "go vet ${tags:+-tags $tags }./... failed: $(grep -m1 -v '^#' "$logs/vet.log" | cut -c1-300); run go vet ${tags:+-tags $tags }./... and fix what it reports"
		fi
	done
}

# ---------------------------------------------------------------- agent-deps
check_agent_deps() {
	step "agent-deps: ephemeral/ and capture/ stay free of k8s.io"
	local roots=() r
	for r in ephemeral capture; do
		[[ -d "$r" ]] && [[ -n "$(find "$r" -name '*.go' -print -quit)" ]] && roots+=("./$r/...")
	done
	[[ ${#roots[@]} -gt 0 ]] || return 0
	local line
	if ! go list -deps -f '{{.ImportPath}}{{range .Imports}} {{.}}{{end}}' "${roots[@]}" >"$logs/deps.log" 2>"$logs/deps.err"; then
		fail "go list ${roots[*]} failed: $(head -1 "$logs/deps.err"); fix the build first"
		return
	fi
	# Report each non-k8s.io package that imports a k8s.io package.
	while read -r line; do
		fail "$line"
	done < <(awk '$1 !~ /^k8s\.io\// { for (i = 2; i <= NF; i++) if ($i ~ /^k8s\.io\//) { print $1 " imports " $i " and is linked into the agent (ephemeral/, capture/); keep k8s.io code in plugin-only packages and give the agent plain types"; break } }' "$logs/deps.log" | LC_ALL=C sort -u)
}

for c in "${checks[@]}"; do
	case "$c" in
	krew) check_krew ;;
	docs) check_docs ;;
	deps) check_deps ;;
	go) check_go ;;
	agent-deps) check_agent_deps ;;
	*)
		fail "unknown check \"$c\"; use krew, docs, deps, go or agent-deps"
		;;
	esac
done

if ((failures > 0)); then
	echo "verify: $failures problem(s); logs in $logs" >&2
	exit 1
fi
echo "verify: ok (${checks[*]})" >&2
