#!/usr/bin/env bash
# Builds KWOK (sigs.k8s.io/kwok, the ceiling devicelet's engine benchmark compares against) from the
# Go module proxy at the pinned version and caches it; prints the binary's path.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
. "$here/versions.sh"
cache_root=${DEVICELET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/devicelet}
bin="$cache_root/kwok-$KWOK_VERSION/bin"
if [[ ! -x "$bin/kwok" ]]; then
  echo "[kwok] building sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" >&2
  mkdir -p "$bin"
  (cd "$(mktemp -d)" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOBIN="$bin" \
    go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION")
fi
echo "$bin/kwok"
