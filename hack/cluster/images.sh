#!/bin/bash
# Print the image refs of the current build (pause, peers, CoreDNS) as KEY=VALUE lines,
# e.g. `eval "$(hack/cluster/images.sh)"; echo $TRAFFICLAB_PEERS_IMAGE`. Builds them if needed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/env.sh"
[ -f "$IMAGES_REFS" ] || "$HERE/build.sh" images >&2
grep -E '^TRAFFICLAB_[A-Z_]+_IMAGE=' "$IMAGES_REFS"
