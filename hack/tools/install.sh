#!/usr/bin/env bash
# Builds pinned dev tools once into a cache outside the repo and prints the path
# of each, one per line.
#
#   hack/tools/install.sh golangci-lint
#   hack/tools/install.sh validate-krew-manifest kubectl-krew
#   hack/tools/install.sh grpcurl vegeta
#   hack/tools/install.sh istio-iptables
#
# The versions live in hack/tools/<module>/go.mod (Go 1.24+ `tool` directives):
# golangci (golangci-lint), krew (validate-krew-manifest, kubectl-krew), grpcurl
# (the e2e tests' gRPC client), vegeta (hack/bench's paced load generator),
# goreleaser (the release, .goreleaser.yaml), cyclonedx (cyclonedx-gomod, the
# SBOMs goreleaser writes), actionlint (.github/workflows) and istio
# (istio-iptables, Istio's sidecar rule generator in its iptables-legacy,
# iptables-nft and native nftables modes, for internal/meshtest and the mesh
# e2e; Istio serves it only as a cobra command, so hack/tools/istio has a
# ten-line main that runs it), registry (the CNCF Distribution registry the local
# cluster pulls its agent and peers images from, and htpasswd, a bcrypt line for
# its authenticated instance), crane (pushes the OCI archives into it, digest
# kept), cosign (make verify signs and verifies the snapshot agent image) and
# toxiproxy (toxiproxy-server, the latency proxy in front of the apiserver in
# hack/bench's laptop link).
# One module per tool set so no tool's dependency graph moves another's
# (golangci-lint and krew together would bump golangci-lint's x/text and krew's
# x/net, x/text, logr; vegeta brings prometheus) and none touches the main
# go.mod. Without this script:
#
#   go tool -modfile=hack/tools/golangci/go.mod golangci-lint run
#
# Cache: ${TRAFFICLAB_CACHE:-/var/cache/trafficlab}/tools/<module>-<key>/, where
# <key> hashes the module's go.mod + go.sum, the Go version and GOOS/GOARCH, so
# bumping a pin or Go rebuilds and a second run only stats the binary. When
# /var/cache is not writable (non-root) it falls back to
# ${XDG_CACHE_HOME:-$HOME/.cache}/trafficlab.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

cache_root() {
	if [[ -n "${TRAFFICLAB_CACHE:-}" ]]; then
		printf '%s\n' "$TRAFFICLAB_CACHE"
		return
	fi
	if mkdir -p /var/cache/trafficlab 2>/dev/null && [[ -w /var/cache/trafficlab ]]; then
		printf '%s\n' /var/cache/trafficlab
		return
	fi
	printf '%s\n' "${XDG_CACHE_HOME:-$HOME/.cache}/trafficlab"
}

# tool name -> "<module dir under hack/tools> <package> [<main's version variable>]"
# The third field, for tools whose -version would otherwise print an empty or
# "dev build" string, is set by -ldflags -X to the module version from go.mod.
spec() {
	case "$1" in
	golangci-lint) echo "golangci github.com/golangci/golangci-lint/v2/cmd/golangci-lint" ;;
	validate-krew-manifest) echo "krew sigs.k8s.io/krew/cmd/validate-krew-manifest" ;;
	kubectl-krew) echo "krew sigs.k8s.io/krew/cmd/krew" ;;
	grpcurl) echo "grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl main.version" ;;
	vegeta) echo "vegeta github.com/tsenart/vegeta/v12 main.Version" ;;
	gotestsum) echo "gotestsum gotest.tools/gotestsum" ;;
	goreleaser) echo "goreleaser github.com/goreleaser/goreleaser/v2 main.version" ;;
	cyclonedx-gomod) echo "cyclonedx github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod" ;;
	actionlint) echo "actionlint github.com/rhysd/actionlint/cmd/actionlint github.com/rhysd/actionlint.version" ;;
	istio-iptables) echo "istio github.com/trafficlab/kubectl-trafficlab/hack/tools/istio/istio-iptables" ;;
	registry) echo "registry github.com/distribution/distribution/v3/cmd/registry github.com/distribution/distribution/v3/version.version" ;;
	htpasswd) echo "registry github.com/trafficlab/kubectl-trafficlab/hack/tools/registry/htpasswd" ;;
	crane) echo "crane github.com/google/go-containerregistry/cmd/crane github.com/google/go-containerregistry/cmd/crane/cmd.Version" ;;
	cosign) echo "cosign github.com/sigstore/cosign/v2/cmd/cosign sigs.k8s.io/release-utils/version.gitVersion" ;;
	toxiproxy-server) echo "toxiproxy github.com/Shopify/toxiproxy/v2/cmd/server" ;;
	*) return 1 ;;
	esac
}

if [[ $# -eq 0 ]]; then
	echo "usage: $0 golangci-lint|validate-krew-manifest|kubectl-krew|grpcurl|vegeta|gotestsum|goreleaser|cyclonedx-gomod|actionlint|istio-iptables|registry|htpasswd|crane|cosign|toxiproxy-server ..." >&2
	exit 2
fi

cache="$(cache_root)"
goversion="$(go env GOVERSION) $(go env GOHOSTOS)/$(go env GOHOSTARCH)"

for tool in "$@"; do
	versionvar=""
	if ! read -r moddir pkg versionvar < <(spec "$tool"); then
		echo "hack/tools/install.sh: unknown tool \"$tool\"; known: golangci-lint, validate-krew-manifest, kubectl-krew, grpcurl, vegeta, gotestsum, goreleaser, cyclonedx-gomod, actionlint, istio-iptables, registry, htpasswd, crane, cosign, toxiproxy-server" >&2
		exit 2
	fi
	mod="$root/hack/tools/$moddir"
	# versionvar joins the key only when set, so the keys (and caches) of the
	# tools without one stay what they were.
	key="$( { cat "$mod/go.mod" "$mod/go.sum"; echo "$goversion"; [[ -z "$versionvar" ]] || echo "$versionvar"; } | sha256sum | cut -c1-12)"
	dir="$cache/tools/$moddir-$key"
	bin="$dir/$tool"
	if [[ ! -x "$bin" ]]; then
		mkdir -p "$dir"
		echo "building $tool (pinned in hack/tools/$moddir/go.mod) into $dir" >&2
		ldflags=""
		if [[ -n "$versionvar" ]]; then
			if ! version="$(go list -C "$mod" -mod=readonly -f '{{.Module.Version}}' "$pkg")"; then
				echo "hack/tools/install.sh: cannot resolve the version of $tool; check network access to the Go module proxy or run: go -C hack/tools/$moddir mod download" >&2
				exit 1
			fi
			ldflags="-X $versionvar=$version"
		fi
		tmp="$(mktemp "$dir/.$tool.XXXXXX")"
		# GOOS/GOARCH/CGO from the caller's environment must not leak into a
		# host tool (dist.sh exports them while cross-compiling).
		if ! env -u GOOS -u GOARCH -u CGO_ENABLED go build -C "$mod" -mod=readonly -buildvcs=false -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg"; then
			rm -f "$tmp"
			echo "hack/tools/install.sh: building $tool failed; check network access to the Go module proxy or run: go -C hack/tools/$moddir mod download" >&2
			exit 1
		fi
		mv -f "$tmp" "$bin"
	fi
	printf '%s\n' "$bin"
done
