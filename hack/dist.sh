#!/usr/bin/env bash
# The release archives, made by goreleaser (.goreleaser.yaml), and the krew manifest rendered from
# .krew.yaml for them:
#
#   hack/dist.sh VERSION              a snapshot into dist/ (make dist; make verify checks it)
#   hack/dist.sh --release VERSION    the release of tag VERSION: goreleaser publishes it (the
#                                     release workflow; GITHUB_TOKEN set)
#
# Before it: `make agent-image` (a release: with PUSH=1) has built the agent image index for VERSION
# with hack/mkimage and written its digest to _output/images/agent.digest. That digest is linked into
# the plugin, which then names its agent as ghcr.io/trafficlab/trafficlab-agent:VERSION@sha256:...
#
# Output (dist/ is wiped first), from goreleaser:
#   dist/kubectl-trafficlab_<VERSION>_<os>_<arch>.tar.gz   linux, darwin (amd64, arm64)
#   dist/kubectl-trafficlab_<VERSION>_windows_<arch>.zip   windows
#       each: kubectl-trafficlab[.exe], kubectl_complete-trafficlab[.exe], LICENSE
#   dist/checksums.txt     sha256sum format, one line per archive
#   dist/*.cdx.json        a CycloneDX SBOM per binary (cyclonedx-gomod)
# and from here:
#   dist/trafficlab.yaml   .krew.yaml rendered for the GitHub release (the file name must equal the
#                          plugin name for krew)
#
# .krew.yaml is krew-release-bot's template ({{ .TagName }} and {{addURIAndSha "URL" .TagName }}); on
# a tag the bot renders it against the published release. Here it is rendered without the bot: the
# sha256 comes from the local archive named by the URL's last path element.
set -euo pipefail

usage() {
	echo "usage: hack/dist.sh [--release] VERSION   (VERSION like v1.2.3 or v1.2.3-rc.1; krew needs a v-prefixed semver)" >&2
	exit 2
}
release=false
if [[ "${1:-}" == --release ]]; then
	release=true
	shift
fi
[[ $# -eq 1 ]] || usage
VERSION="$1"
semver='^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$'
if [[ ! "$VERSION" =~ $semver ]]; then
	echo "hack/dist.sh: VERSION \"$VERSION\" is not a v-prefixed semver, which krew requires; tag the commit (git tag v0.1.0) or pass one, e.g. hack/dist.sh v0.0.0-dev" >&2
	exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

release_url="https://github.com/trafficlab/kubectl-trafficlab/releases/download"
dist="$root/dist"
digest_file="_output/images/agent.digest"

for f in LICENSE .krew.yaml .goreleaser.yaml "$digest_file"; do
	if [[ ! -e "$f" ]]; then
		echo "hack/dist.sh: $f is missing; it is needed for the release (run make agent-image for $digest_file)" >&2
		exit 1
	fi
done
digest="$(cat "$digest_file")"
if [[ ! "$digest" =~ ^sha256:[0-9a-f]{64}$ ]]; then
	echo "hack/dist.sh: $digest_file holds \"$digest\", not a sha256 digest; rebuild it with make agent-image" >&2
	exit 1
fi
if [[ "$release" == true && "${GITHUB_REF_NAME:-$VERSION}" != "$VERSION" ]]; then
	echo "hack/dist.sh: --release $VERSION but the workflow runs for $GITHUB_REF_NAME; release the tag that was pushed" >&2
	exit 1
fi

tools="$(hack/tools/install.sh goreleaser cyclonedx-gomod)"
goreleaser="$(sed -n 1p <<<"$tools")"
# goreleaser runs sboms[].cmd from PATH.
PATH="$(dirname "$(sed -n 2p <<<"$tools")"):$PATH"
export PATH TRAFFICLAB_VERSION="$VERSION" TRAFFICLAB_AGENT_DIGEST="$digest"

# goreleaser reads the commit, its date (the files' times in the archives) and the tags from git, but
# first the remote's URL, and without a remote (a fresh repository, a worktree of one) a snapshot ignores the
# error and goes on with no commit at all. Name the project's repository then, for this run only.
if [[ -z "$(git remote)" ]]; then
	export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=remote.origin.url GIT_CONFIG_VALUE_0=https://github.com/trafficlab/kubectl-trafficlab.git
fi

t_start=$SECONDS
# GOFLAGS from the caller (e.g. -mod=mod) must not change what is released.
if [[ "$release" == true ]]; then
	env -u GOFLAGS -u GOOS -u GOARCH "$goreleaser" release --clean
else
	env -u GOFLAGS -u GOOS -u GOARCH "$goreleaser" release --snapshot --clean
fi

# Render .krew.yaml -> dist/trafficlab.yaml.
addsha='^([[:space:]]*)\{\{[[:space:]]*addURIAndSha[[:space:]]+"([^"]+)"[[:space:]]+\.TagName[[:space:]]*\}\}[[:space:]]*$'
out="$dist/trafficlab.yaml"
: >"$out"
n=0
while IFS= read -r line || [[ -n "$line" ]]; do
	line="${line//\{\{ .TagName \}\}/$VERSION}"
	line="${line//\{\{.TagName\}\}/$VERSION}"
	if [[ "$line" =~ $addsha ]]; then
		indent="${BASH_REMATCH[1]}" url="${BASH_REMATCH[2]}"
		file="${url##*/}"
		if [[ "$url" != "$release_url/$VERSION/$file" ]]; then
			echo "hack/dist.sh: .krew.yaml URL $url is not under $release_url/{{ .TagName }}/; fix the template" >&2
			exit 1
		fi
		sum="$(awk -v f="$file" '$2 == f { print $1 }' "$dist/checksums.txt")"
		if [[ -z "$sum" ]]; then
			echo "hack/dist.sh: .krew.yaml names $file but no such archive was built; fix the template or .goreleaser.yaml" >&2
			exit 1
		fi
		printf '%suri: %s\n%ssha256: %s\n' "$indent" "$url" "$indent" "$sum" >>"$out"
		n=$((n + 1))
		continue
	fi
	printf '%s\n' "$line" >>"$out"
done <.krew.yaml

if grep -n '{{' "$out" >&2; then
	echo "hack/dist.sh: dist/trafficlab.yaml still has template markers (lines above); only {{ .TagName }} and {{addURIAndSha \"URL\" .TagName }} are supported" >&2
	exit 1
fi
archives="$(grep -cE '\.(tar\.gz|zip)$' "$dist/checksums.txt")"
if ((n != archives)); then
	echo "hack/dist.sh: .krew.yaml lists $n platforms but $archives archives were built; keep the template and .goreleaser.yaml in step" >&2
	exit 1
fi

echo "dist: $archives archives, checksums.txt and trafficlab.yaml for $VERSION in $((SECONDS - t_start))s" >&2
