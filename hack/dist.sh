#!/usr/bin/env bash
# Cross-compiles the plugin and its completion helper and packs release
# archives plus the rendered krew manifest:
#
#   hack/dist.sh VERSION          e.g. hack/dist.sh v0.1.0
#
# Output (dist/ is wiped first):
#   dist/kubectl-trafficlab_<VERSION>_<os>_<arch>.tar.gz   linux, darwin
#   dist/kubectl-trafficlab_<VERSION>_windows_<arch>.zip   windows
#       each: kubectl-trafficlab[.exe], kubectl_complete-trafficlab[.exe], LICENSE
#   dist/checksums.txt     sha256sum format, one line per archive
#   dist/trafficlab.yaml   krew-manifest.yaml rendered for the GitHub release
#                          (the file name must equal the plugin name for krew)
#
# Environment:
#   DIST_PLATFORMS   space-separated os/arch list (default: the six below)
#   DIST_JOBS        platforms built at once (default 2: go build already uses
#                    both cores, but gzip/zip do not; warm: 49s vs 63s at 1)
#   SOURCE_DATE_EPOCH  timestamp stored in the archives (default: the HEAD
#                    commit time, else 1980-01-01). Same sources + same Go +
#                    same epoch = byte-identical archives.
#
# krew-manifest.yaml uses krew-release-bot's template syntax ({{ .TagName }}
# and {{addURIAndSha "URL" .TagName }}), rendered here without the bot: the
# sha256 comes from the local archive named by the URL's last path element.
set -euo pipefail

usage() {
	echo "usage: hack/dist.sh VERSION   (VERSION like v1.2.3 or v1.2.3-rc.1; krew needs a v-prefixed semver)" >&2
	exit 2
}
[[ $# -eq 1 ]] || usage
VERSION="$1"
semver='^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$'
if [[ ! "$VERSION" =~ $semver ]]; then
	echo "hack/dist.sh: VERSION \"$VERSION\" is not a v-prefixed semver, which krew requires; tag the commit (git tag v0.1.0) or pass one, e.g. hack/dist.sh v0.0.0-dev" >&2
	exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

module="github.com/trafficlab/kubectl-trafficlab"
release_url="https://github.com/trafficlab/kubectl-trafficlab/releases/download"
platforms="${DIST_PLATFORMS:-linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64}"
jobs="${DIST_JOBS:-2}"
dist="$root/dist"

for f in LICENSE krew-manifest.yaml cmd/kubectl-trafficlab cmd/kubectl_complete-trafficlab; do
	if [[ ! -e "$f" ]]; then
		echo "hack/dist.sh: $f is missing; it is needed for the release archives" >&2
		exit 1
	fi
done

if [[ -z "${SOURCE_DATE_EPOCH:-}" ]]; then
	SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null || true)"
	SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-315532800}"
fi
export SOURCE_DATE_EPOCH TZ=UTC

# Stamp the VCS revision into the binaries (go version -m) when git can read
# the checkout (it cannot before the first commit or when the clone belongs to
# another user, and go build would then fail).
buildvcs=false
if git rev-parse --verify -q HEAD >/dev/null 2>&1 && git status --porcelain >/dev/null 2>&1; then
	buildvcs=true
fi

rm -rf "$dist"
mkdir -p "$dist"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

build_one() {
	local os="${1%/*}" arch="${1#*/}"
	local name="kubectl-trafficlab_${VERSION}_${os}_${arch}"
	local dir="$work/$name" exe=""
	[[ "$os" == windows ]] && exe=".exe"
	mkdir -p "$dir"
	local t0=$SECONDS
	CGO_ENABLED=0 GOOS="$os" GOARCH="$arch" go build \
		-trimpath -buildvcs="$buildvcs" \
		-ldflags "-s -w -buildid= -X $module/pkg/version.version=$VERSION" \
		-o "$dir/" ./cmd/kubectl-trafficlab ./cmd/kubectl_complete-trafficlab
	cp LICENSE "$dir/LICENSE"
	chmod 0755 "$dir/kubectl-trafficlab$exe" "$dir/kubectl_complete-trafficlab$exe"
	chmod 0644 "$dir/LICENSE"
	touch -h -d "@$SOURCE_DATE_EPOCH" "$dir"/*
	local files=(LICENSE "kubectl-trafficlab$exe" "kubectl_complete-trafficlab$exe")
	if [[ "$os" == windows ]]; then
		# -X: no extra (uid/gid, ctime) fields; mtimes are SOURCE_DATE_EPOCH in UTC.
		(cd "$dir" && zip -q -X -9 "$dist/$name.zip" "${files[@]}")
	else
		tar -C "$dir" --sort=name --format=ustar --owner=0 --group=0 --numeric-owner \
			--mtime="@$SOURCE_DATE_EPOCH" -cf - "${files[@]}" | gzip -n -9 >"$dist/$name.tar.gz"
	fi
	echo "built $os/$arch in $((SECONDS - t0))s" >&2
}

t_start=$SECONDS
pids=()
for p in $platforms; do
	if ((jobs > 1)); then
		build_one "$p" &
		pids+=($!)
		if ((${#pids[@]} >= jobs)); then
			wait "${pids[0]}" || { echo "hack/dist.sh: build failed; see the go build error above" >&2; exit 1; }
			pids=("${pids[@]:1}")
		fi
	else
		build_one "$p"
	fi
done
for pid in "${pids[@]}"; do
	wait "$pid" || { echo "hack/dist.sh: build failed; see the go build error above" >&2; exit 1; }
done

(
	cd "$dist"
	shopt -s nullglob
	sha256sum -- *.tar.gz *.zip | LC_ALL=C sort -k2 >checksums.txt
)

if [[ -n "${DIST_PLATFORMS:-}" ]]; then
	echo "dist: DIST_PLATFORMS is set, so dist/trafficlab.yaml (all platforms) is not rendered; $(wc -l <"$dist/checksums.txt") archives in $((SECONDS - t_start))s" >&2
	exit 0
fi

# Render krew-manifest.yaml -> dist/trafficlab.yaml.
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
			echo "hack/dist.sh: krew-manifest.yaml URL $url is not under $release_url/{{ .TagName }}/; fix the template" >&2
			exit 1
		fi
		sum="$(awk -v f="$file" '$2 == f { print $1 }' "$dist/checksums.txt")"
		if [[ -z "$sum" ]]; then
			echo "hack/dist.sh: krew-manifest.yaml names $file but no such archive was built; fix the template or DIST_PLATFORMS" >&2
			exit 1
		fi
		printf '%suri: %s\n%ssha256: %s\n' "$indent" "$url" "$indent" "$sum" >>"$out"
		n=$((n + 1))
		continue
	fi
	printf '%s\n' "$line" >>"$out"
done <krew-manifest.yaml

if grep -n '{{' "$out" >&2; then
	echo "hack/dist.sh: dist/trafficlab.yaml still has template markers (lines above); only {{ .TagName }} and {{addURIAndSha \"URL\" .TagName }} are supported" >&2
	exit 1
fi
archives="$(wc -l <"$dist/checksums.txt")"
if ((n != archives)); then
	echo "hack/dist.sh: krew-manifest.yaml lists $n platforms but $archives archives were built; keep the template and DIST_PLATFORMS in step" >&2
	exit 1
fi

echo "dist: $archives archives, checksums.txt and trafficlab.yaml for $VERSION in $((SECONDS - t_start))s" >&2
