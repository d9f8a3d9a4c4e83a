#!/usr/bin/env bash
# Release and repository checks; run after hack/dist.sh (make verify runs both).
#
#   hack/verify.sh              all checks
#   hack/verify.sh krew docs    only some: goreleaser | pinned | krew | workflows | goinstall |
#                               cosign | docs | deps | go | agent-deps
#
# goreleaser  `goreleaser check` (pinned in hack/tools/goreleaser) accepts .goreleaser.yaml, offline.
# pinned      the snapshot in dist/ (hack/dist.sh ran goreleaser with the agent index digest that
#             make agent-image wrote): the plugin for this machine's platform prints
#             ghcr.io/trafficlab/trafficlab-agent:VERSION@<that digest> and says it is pinned; the
#             digest is the one index.json of _output/images/agent.tar names; every binary has a
#             CycloneDX SBOM in dist/ that names the binary's own module.
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
# workflows   actionlint (pinned in hack/tools/actionlint) finds nothing in .github/workflows, with
#             Debian's shellcheck on every run: script (.ci/run installs it).
# goinstall   the README's `go install ...@latest` lines, run verbatim against a file:// GOPROXY
#             made from this checkout (git's tracked files, nested modules left out, as the module
#             zip the real proxy would serve) in front of the local module cache, into a
#             throwaway GOBIN: they install, and the plugin says its agent image is unpinned.
# cosign      the snapshot agent index (_output/images/agent.tar) pushed by crane, digest kept, into a
#             throwaway Distribution registry on 127.0.0.1 (a free port it picks itself; TLS with a
#             throwaway CA that crane and cosign trust: SSL_CERT_FILE, --registry-cacert), signed by
#             digest with a throwaway cosign key pair and no transparency log (--tlog-upload=false),
#             then `cosign verify --insecure-ignore-tlog` accepts it with that key and refuses it with
#             another. registry, crane and cosign are pinned in hack/tools; nothing leaves 127.0.0.1.
#             The release signs keylessly instead (.github/workflows/release.yml, docs/release.md).
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
[[ ${#checks[@]} -gt 0 ]] || checks=(goreleaser pinned krew workflows goinstall cosign docs deps go agent-deps)

logs="$(mktemp -d "${TMPDIR:-/tmp}/trafficlab-verify.XXXXXX")"
failures=0
server_pid=""
registry_pid="" cosign_dir=""
cleanup() {
	[[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
	stop_registry
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

# ---------------------------------------------------------------- goreleaser
check_goreleaser() {
	step "goreleaser: goreleaser check .goreleaser.yaml"
	local gr
	if ! gr="$(hack/tools/install.sh goreleaser 2>"$logs/tools.log")"; then
		fail "could not build goreleaser (log: $logs/tools.log); check access to the Go module proxy"
		return
	fi
	if ! "$gr" check >"$logs/goreleaser-check.log" 2>&1; then
		fail ".goreleaser.yaml does not pass goreleaser check: $(grep -m1 -iE 'error|deprecated' "$logs/goreleaser-check.log" | cut -c1-300); full log: $logs/goreleaser-check.log"
	fi
}

# ---------------------------------------------------------------- pinned
check_pinned() {
	step "pinned: the snapshot plugin names its agent image by the index digest"
	local digest_file=_output/images/agent.digest
	if [[ ! -f dist/artifacts.json || ! -f "$digest_file" ]]; then
		fail "dist/artifacts.json or $digest_file is missing; run make dist first"
		return
	fi
	local digest index_digest version hos harch bin
	digest="$(cat "$digest_file")"
	# The release pushes the same index it writes into the archive (hack/mkimage); this machine
	# can only read the archive.
	if [[ -f _output/images/agent.tar ]]; then
		index_digest="$(tar -xOf _output/images/agent.tar index.json | jq -r '.manifests[0].digest')"
		if [[ "$index_digest" != "$digest" ]]; then
			fail "$digest_file says $digest but _output/images/agent.tar's index is $index_digest; rebuild with make agent-image"
		fi
	fi
	version="$(jq -r '.version' dist/metadata.json)"
	hos="$(go env GOHOSTOS)" harch="$(go env GOHOSTARCH)"
	bin="$(jq -r --arg os "$hos" --arg arch "$harch" \
		'.[] | select(.type == "Binary" and .name == "kubectl-trafficlab" and .goos == $os and .goarch == $arch) | .path' dist/artifacts.json | head -1)"
	if [[ -z "$bin" || ! -x "$bin" ]]; then
		fail "goreleaser built no kubectl-trafficlab for $hos/$harch (dist/artifacts.json); check .goreleaser.yaml's builds"
		return
	fi
	local got want
	got="$(env -u TRAFFICLAB_AGENT_IMAGE "$bin" version -o json | jq -r '[.version, .agentImage, (.agentImagePinned | tostring)] | join(" ")')"
	want="v$version ghcr.io/trafficlab/trafficlab-agent:v$version@$digest true"
	if [[ "$got" != "$want" ]]; then
		fail "$bin version says \"$got\", want \"$want\"; check the ldflags in .goreleaser.yaml and pkg/version"
	fi
	if ! "$bin" version | grep -qx 'Agent Image Pinned: yes.*'; then
		fail "$bin version does not say its agent image is pinned; check pkg/cmd/version"
	fi
	# One SBOM per binary, naming the binary's main module.
	local n sbom
	n="$(jq '[.[] | select(.type == "Binary")] | length' dist/artifacts.json)"
	local sboms=(dist/*.cdx.json)
	if ((${#sboms[@]} != n)); then
		fail "dist/ has ${#sboms[@]} SBOMs (*.cdx.json) for $n binaries; check sboms in .goreleaser.yaml"
	fi
	for sbom in "${sboms[@]}"; do
		[[ -f "$sbom" ]] || continue
		if [[ "$(jq -r '.bomFormat + " " + .metadata.component.name' "$sbom" 2>/dev/null)" != "CycloneDX github.com/trafficlab/kubectl-trafficlab" ]]; then
			fail "$sbom is not a CycloneDX SBOM of github.com/trafficlab/kubectl-trafficlab; check sboms[].args in .goreleaser.yaml"
		fi
	done
}

# ---------------------------------------------------------------- workflows
check_workflows() {
	step "workflows: actionlint (with shellcheck) on .github/workflows"
	local al sc
	if ! sc="$(command -v shellcheck)"; then
		fail "shellcheck is not installed, and actionlint would skip the run: scripts without it; apt-get install shellcheck (.ci/run does)"
		return
	fi
	if ! al="$(hack/tools/install.sh actionlint 2>"$logs/tools.log")"; then
		fail "could not build actionlint (log: $logs/tools.log); check access to the Go module proxy"
		return
	fi
	local line
	while read -r line; do
		[[ -n "$line" ]] && fail "$line"
	done < <("$al" -shellcheck "$sc" -pyflakes= -no-color -oneline 2>&1)
}

# ---------------------------------------------------------------- cosign
# The throwaway registry and its directory (keys, CA, storage) go on every exit path: here, and
# from the EXIT trap when the script is interrupted.
stop_registry() {
	if [[ -n "$registry_pid" ]]; then
		kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null
		registry_pid=""
	fi
	if [[ -n "$cosign_dir" ]]; then
		rm -rf "$cosign_dir"
		cosign_dir=""
	fi
}

check_cosign() {
	step "cosign: the snapshot agent index, pushed to a throwaway registry, signed with a throwaway key and verified"
	local archive=_output/images/agent.tar digest_file=_output/images/agent.digest
	if [[ ! -f "$archive" || ! -f "$digest_file" ]]; then
		fail "$archive or $digest_file is missing; run make agent-image (make verify runs make dist, which does)"
		return
	fi
	local registry crane cosign
	if ! { registry="$(hack/tools/install.sh registry 2>>"$logs/tools.log")" &&
		crane="$(hack/tools/install.sh crane 2>>"$logs/tools.log")" &&
		cosign="$(hack/tools/install.sh cosign 2>>"$logs/tools.log")"; }; then
		fail "could not build registry, crane or cosign (log: $logs/tools.log); check access to the Go module proxy"
		return
	fi
	cosign_dir="$(mktemp -d "${TMPDIR:-/tmp}/trafficlab-cosign.XXXXXX")"
	local d="$cosign_dir"
	# A CA of its own and a serving certificate for 127.0.0.1, valid for a day.
	local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
	if ! { openssl req -x509 "${ec[@]}" -keyout "$d/ca.key" -out "$d/ca.crt" -days 1 -subj /CN=trafficlab-verify-ca &&
		openssl req "${ec[@]}" -keyout "$d/tls.key" -out "$d/tls.csr" -subj /CN=127.0.0.1 &&
		printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n' >"$d/tls.ext" &&
		openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 1 \
			-extfile "$d/tls.ext" -out "$d/tls.crt"; } >"$logs/cosign-ca.log" 2>&1; then
		fail "could not make the throwaway CA with openssl (log: $logs/cosign-ca.log)"
		stop_registry
		return
	fi
	cat >"$d/config.yml" <<-YAML
		version: 0.1
		log: {level: info}
		storage:
		  filesystem: {rootdirectory: $d/storage}
		http:
		  addr: 127.0.0.1:0
		  tls: {certificate: $d/tls.crt, key: $d/tls.key}
	YAML
	# Port 0: the kernel picks a free port, which the registry logs ("listening on ADDR, tls").
	OTEL_TRACES_EXPORTER=none "$registry" serve "$d/config.yml" >"$logs/cosign-registry.log" 2>&1 &
	registry_pid=$!
	local addr="" i
	for ((i = 0; i < 300; i++)); do
		addr="$(sed -n 's/.*listening on \(127\.0\.0\.1:[0-9]*\), tls.*/\1/p' "$logs/cosign-registry.log" | head -1)"
		[[ -n "$addr" ]] && break
		kill -0 "$registry_pid" 2>/dev/null || break
		sleep 0.1
	done
	if [[ -z "$addr" ]]; then
		fail "the throwaway registry did not start (log: $logs/cosign-registry.log)"
		stop_registry
		return
	fi
	# The repository and tag the plugin names (hack/mkimage wrote them into the archive), here.
	local ref digest layout pushed
	ref="$(tar -xOf "$archive" index.json | jq -r '.manifests[0].annotations["io.containerd.image.name"]')"
	digest="$(cat "$digest_file")"
	ref="$addr/${ref#*/}"
	layout="$d/layout"
	mkdir -p "$layout" && tar -xf "$archive" -C "$layout"
	# crane and cosign read no login of the user's (DOCKER_CONFIG), cosign keeps its caches in the
	# throwaway dir (HOME, TUF_ROOT). They trust the throwaway CA: crane, which has no flag for it,
	# through SSL_CERT_FILE (Go's roots, replaced: only this registry is reached), cosign through
	# --registry-cacert.
	local -a env=(env "DOCKER_CONFIG=$d/docker" "HOME=$d/home" "TUF_ROOT=$d/tuf"
		"COSIGN_PASSWORD=throwaway-$RANDOM$RANDOM")
	if ! pushed="$("${env[@]}" "SSL_CERT_FILE=$d/ca.crt" "$crane" push "$layout" "$ref" 2>"$logs/cosign-push.log")"; then
		fail "crane push of $archive to the throwaway registry failed (log: $logs/cosign-push.log)"
		stop_registry
		return
	fi
	if [[ "${pushed#*@}" != "$digest" ]]; then
		fail "the pushed agent index is ${pushed#*@}, $digest_file says $digest; rebuild with make agent-image"
		stop_registry
		return
	fi
	local image="${ref%:*}@$digest" reg=(--registry-cacert "$d/ca.crt")
	if ! (cd "$d" && "${env[@]}" "$cosign" generate-key-pair --output-key-prefix signer &&
		"${env[@]}" "$cosign" generate-key-pair --output-key-prefix other) >"$logs/cosign-keys.log" 2>&1; then
		fail "cosign generate-key-pair failed (log: $logs/cosign-keys.log)"
	elif ! "${env[@]}" "$cosign" sign --key "$d/signer.key" --tlog-upload=false --yes "${reg[@]}" "$image" \
		>"$logs/cosign-sign.log" 2>&1; then
		fail "cosign sign $image failed (log: $logs/cosign-sign.log)"
	elif ! "${env[@]}" "$cosign" verify --key "$d/signer.pub" --insecure-ignore-tlog "${reg[@]}" "$image" \
		>"$logs/cosign-verify.json" 2>"$logs/cosign-verify.log"; then
		fail "cosign verify $image with the signing key failed (log: $logs/cosign-verify.log)"
	elif [[ "$(jq -r '.[0].critical.image["docker-manifest-digest"]' "$logs/cosign-verify.json")" != "$digest" ]]; then
		fail "cosign verify's payload does not name $digest: $(head -c 300 "$logs/cosign-verify.json")"
	elif "${env[@]}" "$cosign" verify --key "$d/other.pub" --insecure-ignore-tlog "${reg[@]}" "$image" \
		>"$logs/cosign-verify-other.log" 2>&1; then
		fail "cosign verify accepted $image with a key that did not sign it (log: $logs/cosign-verify-other.log)"
	fi
	stop_registry
}

# ---------------------------------------------------------------- goinstall
check_goinstall() {
	step "goinstall: the README's go install lines against a file:// GOPROXY made from this checkout"
	local module=github.com/trafficlab/kubectl-trafficlab
	local -a lines
	mapfile -t lines < <(sed -n 's/^\(go install github\.com\/trafficlab\/[^ ]*@latest\).*/\1/p' README.md)
	if ((${#lines[@]} == 0)); then
		fail "README.md has no \"go install $module/...@latest\" line; the goinstall check proves those lines"
		return
	fi
	local gi="$logs/goinstall" version
	# A version no earlier run used: the module cache (shared with every other build, so the
	# dependencies are not extracted again) keeps what it extracted once under a version, and a
	# second run under the same one would install the first run's sources.
	version="v0.0.0-goinstall.$(date -u +%Y%m%d%H%M%S).$$"
	local proxy="$gi/proxy" tree="$gi/tree/$module@$version" at="$gi/proxy/$module/@v"
	mkdir -p "$at" "$tree"
	# The module zip: the files git would commit, as they are in the work tree, without the nested
	# modules (hack/tools/*), which a module zip never holds. `go install` checks the zip's layout
	# itself when it extracts it.
	local -a nested
	mapfile -t nested < <(git ls-files --cached --others --exclude-standard -- '*/go.mod' | sed 's#go\.mod$##')
	local f d skip
	while IFS= read -r -d '' f; do
		[[ -f "$f" && ! -L "$f" ]] || continue
		skip=false
		for d in "${nested[@]}"; do
			if [[ "$f" == "$d"* ]]; then
				skip=true
				break
			fi
		done
		"$skip" && continue
		mkdir -p "$tree/$(dirname "$f")"
		cp "$f" "$tree/$f"
	done < <(git ls-files -z --cached --others --exclude-standard)
	(cd "$gi/tree" && zip -q -r -X "$at/$version.zip" "$module@$version")
	cp go.mod "$at/$version.mod"
	printf '{"Version":"%s","Time":"%s"}\n' "$version" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$at/$version.info"
	printf '%s\n' "$version" >"$at/list"
	local gomodcache bin="$gi/bin" line
	gomodcache="$(go env GOMODCACHE)"
	mkdir -p "$bin"
	for line in "${lines[@]}"; do
		# Exactly the README's line; the environment is the user's plus where the module comes from.
		# The dependencies come from the local module cache's download directory (the same file
		# layout), so the check runs offline. GOSUMDB=off: the unpublished module has no checksum
		# database entry, and `go install pkg@version` looks its dependencies up there too (it reads
		# no go.sum), which needs the network; the cache holds them as the main module's go.sum
		# verified them when they were first downloaded.
		# shellcheck disable=SC2086 # the README line is split into words as a shell would
		if ! env -u GOFLAGS -u GOOS -u GOARCH GOBIN="$bin" GOFLAGS=-mod=mod GOSUMDB=off \
			GOPROXY="file://$proxy,file://$gomodcache/cache/download" $line >>"$logs/goinstall.log" 2>&1; then
			fail "README's \"$line\" failed against the checkout's module (log: $logs/goinstall.log)"
		fi
	done
	local out
	if ! out="$("$bin/kubectl-trafficlab" version 2>&1)"; then
		fail "the go-installed kubectl-trafficlab version failed: $out"
	elif [[ "$out" != *"Plugin Version: $version"* || "$out" != *"Agent Image: ghcr.io/trafficlab/trafficlab-agent:$version"$'\n'* ||
		"$out" != *"Agent Image Pinned: no"* ]]; then
		fail "the go-installed plugin says \"${out//$'\n'/; }\", want version $version and an unpinned agent image; check pkg/version"
	fi
	if [[ ! -x "$bin/kubectl_complete-trafficlab" ]]; then
		fail "the README's go install lines did not install kubectl_complete-trafficlab"
	fi
	# Leave the shared module cache as it was.
	chmod -R u+w "$gomodcache/$module@$version" 2>/dev/null
	rm -rf "$gomodcache/$module@$version" "$gomodcache/cache/download/$module/@v/$version".*
	local list="$gomodcache/cache/download/$module/@v/list"
	if [[ -f "$list" ]]; then
		sed -i '/-goinstall\./d' "$list"
		[[ -s "$list" ]] || rm -f "$list"
	fi
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
	goreleaser) check_goreleaser ;;
	pinned) check_pinned ;;
	krew) check_krew ;;
	workflows) check_workflows ;;
	goinstall) check_goinstall ;;
	cosign) check_cosign ;;
	docs) check_docs ;;
	deps) check_deps ;;
	go) check_go ;;
	agent-deps) check_agent_deps ;;
	*)
		fail "unknown check \"$c\"; use goreleaser, pinned, krew, workflows, goinstall, cosign, docs, deps, go or agent-deps"
		;;
	esac
done

if ((failures > 0)); then
	echo "verify: $failures problem(s); logs in $logs" >&2
	exit 1
fi
echo "verify: ok (${checks[*]})" >&2
