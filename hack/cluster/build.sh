#!/bin/bash
# Build everything the cluster needs, each only when missing from $TRAFFICLAB_CACHE:
#   k8s      kube-apiserver kubelet kube-controller-manager kube-scheduler kube-proxy kubectl ($K8S_VERSION)
#   coredns  CoreDNS ($COREDNS_VERSION) binary + image tarball
#   images   pause + peers image tarballs, keyed by a hash of their sources; writes $IMAGES_REFS
# Usage: build.sh [k8s|coredns|images ...]   (default: all, in that order)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# The default module and build caches live outside the clone and are shared with everyone.
export CGO_ENABLED=0 GOTOOLCHAIN=local

# Atomic publish: a build interrupted halfway must not look cached on the next run.
publish_dir() { # tmpdir finaldir
  rm -rf "$2.old"; [ -e "$2" ] && mv "$2" "$2.old"; mv "$1" "$2"; rm -rf "$2.old"
}

build_k8s() {
  local dir=$TRAFFICLAB_CACHE/k8s-$K8S_VERSION
  local what="kube-apiserver kubelet kube-controller-manager kube-scheduler kube-proxy kubectl" w
  if [ -f "$dir/bin/.complete" ]; then ts "k8s $K8S_VERSION: cached in $dir/bin"; return; fi
  ts "k8s $K8S_VERSION: building $what (cold: ~10 min on 2 cores)"
  # k8s.io/kubernetes is consumable as a module only if every staging module (v0.0.0 + ./staging
  # replace in its go.mod) is pointed at the published v0.Y.Z tag: do that in a wrapper module.
  local src=$dir/src staging=v0.${K8S_VERSION#v1.}
  mkdir -p "$src"
  local kmod
  kmod=$(cd "$src" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "module trafficlab.local/k8sbuild"; echo; echo "go 1.24.0"; echo
    echo "require k8s.io/kubernetes $K8S_VERSION"; echo
    echo "replace ("
    grep -oE '^\s+k8s\.io/[a-z0-9-]+ => \./staging' "$kmod" | awk -v v="$staging" '{print "\t"$1" => "$1" "v}'
    echo ")"
  } > "$src/go.mod"
  rm -f "$src/go.sum"
  local minor ldf="-s -w" pkgs="" p
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf="$ldf -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  for w in $what; do pkgs="$pkgs k8s.io/kubernetes/cmd/$w"; done
  # shellcheck disable=SC2086
  (cd "$src" && GOFLAGS="-mod=mod -buildvcs=false" go list -deps $pkgs >/dev/null)
  ts "k8s $K8S_VERSION: modules downloaded"
  local tmp=$dir/bin.tmp; rm -rf "$tmp"; mkdir -p "$tmp"
  # shellcheck disable=SC2086
  (cd "$src" && GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath -ldflags "$ldf" -o "$tmp/" $pkgs)
  touch "$tmp/.complete"
  publish_dir "$tmp" "$dir/bin"
  ts "k8s $K8S_VERSION: built: $(cd "$dir/bin" && echo *)"
}

MKIMAGE=""
build_mkimage() {
  [ -n "$MKIMAGE" ] && return
  local out=$TRAFFICLAB_CACHE/tools; mkdir -p "$out"
  (cd "$TRAFFICLAB_ROOT" && go build -trimpath -o "$out/mkimage.tmp" ./hack/mkimage) && mv "$out/mkimage.tmp" "$out/mkimage"
  MKIMAGE=$out/mkimage
}

build_coredns() {
  local dir=$COREDNS_DIR
  if [ -f "$dir/coredns.tar" ]; then ts "CoreDNS $COREDNS_VERSION: cached in $dir"; return; fi
  mkdir -p "$dir/src"
  if [ ! -x "$dir/coredns" ]; then
    ts "CoreDNS $COREDNS_VERSION: building (cold: ~4 min)"
    (cd "$dir/src" && { [ -f go.mod ] || go mod init trafficlab.local/coredns >/dev/null 2>&1; } \
      && GOFLAGS="-mod=mod -buildvcs=false" go get "github.com/coredns/coredns@$COREDNS_VERSION" \
      && GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath -ldflags "-s -w" -o "$dir/coredns.tmp" github.com/coredns/coredns)
    mv "$dir/coredns.tmp" "$dir/coredns"
  fi
  build_mkimage
  local r; r=$(mktemp -d); mkdir -p "$r/bin" "$r/etc/coredns"; cp "$dir/coredns" "$r/bin/coredns"
  "$MKIMAGE" -platform "linux/amd64=$r" -tag "trafficlab.local/coredns:$COREDNS_VERSION" \
    -entrypoint /bin/coredns -out "$dir/coredns.tar.tmp"
  mv "$dir/coredns.tar.tmp" "$dir/coredns.tar"; rm -rf "$r"
  ts "CoreDNS $COREDNS_VERSION: image packed"
}

# Content hash of everything that ends up in an image: sources, module graph, this script,
# and the Debian packages whose files we copy in. Short enough for a tag.
src_hash() { # paths...
  {
    (cd "$TRAFFICLAB_ROOT" && find "$@" -type f -not -name '*_test.go' | LC_ALL=C sort | xargs sha256sum)
    cat "$TRAFFICLAB_ROOT/go.sum" "$TRAFFICLAB_ROOT/hack/cluster/build.sh" | sha256sum
    go version
    dpkg-query -W busybox-static nftables 2>/dev/null || true
  } | sha256sum | cut -c1-12
}

# Root filesystem skeleton with busybox (sh, wget, ...) and nft plus its shared libraries.
tools_rootfs() { # dir
  local r=$1 a l
  mkdir -p "$r/bin" "$r/usr/sbin" "$r/tmp" "$r/etc"
  chmod 1777 "$r/tmp"
  cp /bin/busybox "$r/bin/busybox"
  for a in $("$r/bin/busybox" --list); do [ -e "$r/bin/$a" ] || ln -s busybox "$r/bin/$a"; done
  cp /usr/sbin/nft "$r/usr/sbin/nft"
  for l in $(ldd /usr/sbin/nft | grep -oE '/[^ ]+'); do mkdir -p "$r$(dirname "$l")"; cp -L "$l" "$r$l"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532:nonroot:/home/nonroot:/bin/sh\n' > "$r/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$r/etc/group"
}

build_images() {
  mkdir -p "$IMAGES_DIR"
  local ph pe
  ph=$(src_hash hack/mkimage test/peers/pause)
  # meshproxy reads SO_ORIGINAL_DST through the agent's ephemeral/netfilter
  pe=$(src_hash hack/mkimage test/peers ephemeral/netfilter)
  local pause_ref=trafficlab.local/pause:$ph peers_ref=trafficlab.local/peers:$pe
  local pause_tar=$IMAGES_DIR/pause-$ph.tar peers_tar=$IMAGES_DIR/peers-$pe.tar
  if [ -f "$pause_tar" ] && [ -f "$peers_tar" ]; then
    ts "images: cached ($pause_ref, $peers_ref)"
  else
    ts "images: building $pause_ref $peers_ref"
    build_mkimage
    local w; w=$(mktemp -d)
    (cd "$TRAFFICLAB_ROOT" && go build -trimpath -ldflags "-s -w" -o "$w/bin/" \
      ./test/peers/pause ./test/peers/echo ./test/peers/greeter ./test/peers/wsecho ./test/peers/udpecho \
      ./test/peers/meshproxy)
    if [ ! -f "$pause_tar" ]; then
      mkdir -p "$w/pause"; cp "$w/bin/pause" "$w/pause/pause"
      "$MKIMAGE" -platform "linux/amd64=$w/pause" -tag "$pause_ref" -entrypoint /pause -out "$pause_tar.tmp"
      mv "$pause_tar.tmp" "$pause_tar"
    fi
    if [ ! -f "$peers_tar" ]; then
      tools_rootfs "$w/peers"
      # "echo" is also a busybox applet (a symlink in /bin): install peers under their own names
      mkdir -p "$w/peers/usr/local/bin"
      for a in echo greeter wsecho udpecho meshproxy; do cp "$w/bin/$a" "$w/peers/usr/local/bin/peer-$a"; done
      "$MKIMAGE" -platform "linux/amd64=$w/peers" -tag "$peers_ref" -entrypoint /usr/local/bin/peer-echo -out "$peers_tar.tmp"
      mv "$peers_tar.tmp" "$peers_tar"
    fi
    rm -rf "$w"
    # older builds are unreachable by refs.env; drop them so the cache does not grow forever
    find "$IMAGES_DIR" -maxdepth 1 \( -name 'pause-*.tar' -o -name 'peers-*.tar' \) \
      ! -name "pause-$ph.tar" ! -name "peers-$pe.tar" -delete
    ts "images: packed"
  fi
  cat > "$IMAGES_REFS.tmp" <<REFS
# written by hack/cluster/build.sh; image refs of the current build (all imported by up.sh)
TRAFFICLAB_PAUSE_IMAGE=$pause_ref
TRAFFICLAB_PEERS_IMAGE=$peers_ref
TRAFFICLAB_COREDNS_IMAGE=trafficlab.local/coredns:$COREDNS_VERSION
TRAFFICLAB_PAUSE_TAR=$pause_tar
TRAFFICLAB_PEERS_TAR=$peers_tar
TRAFFICLAB_COREDNS_TAR=$COREDNS_DIR/coredns.tar
REFS
  mv "$IMAGES_REFS.tmp" "$IMAGES_REFS"
}

mkdir -p "$TRAFFICLAB_CACHE"
phases=${*:-k8s coredns images}
for p in $phases; do
  case $p in
    k8s) build_k8s ;;
    coredns) build_coredns ;;
    images) build_images ;;
    *) echo "build.sh: unknown phase $p" >&2; exit 2 ;;
  esac
done
