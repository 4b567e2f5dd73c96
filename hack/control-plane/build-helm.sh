#!/usr/bin/env bash
# Builds Helm (helm.sh/helm/v4) from the Go module proxy at the pinned version and caches it by
# version next to the control plane. A second run with the same version only prints the binary's
# path.
#
#   hack/control-plane/build-helm.sh   -> prints the path of the helm binary
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
. "$here/versions.sh"

cache_root=${DEVICELET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/devicelet}
dest="$cache_root/helm-$HELM_VERSION"
bin="$dest/bin"
if [[ -f "$dest/.complete" ]]; then
  echo "$bin/helm"
  exit 0
fi

command -v go >/dev/null || { echo "build-helm.sh: Go is needed" >&2; exit 1; }
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
log() { printf '[helm] %s\n' "$*" >&2; }
work="$dest/src"
rm -rf "$work" "$bin"
mkdir -p "$work" "$bin"
start=$(date +%s)

log "resolving helm.sh/helm/v4 $HELM_VERSION"
printf 'module devicelet.dev/hack/control-plane/helm\n\ngo 1.24\n' >"$work/go.mod"
(cd "$work" && go get -tool "helm.sh/helm/v4/cmd/helm@$HELM_VERSION")
log "go build"
# The version Helm prints is set at link time, as its own Makefile does.
(cd "$work" && go build -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
  -o "$bin/helm" helm.sh/helm/v4/cmd/helm)
"$bin/helm" version --short >&2

end=$(date +%s)
echo "helm=$HELM_VERSION built=$(date -u +%Y-%m-%dT%H:%M:%SZ) seconds=$((end - start))" >"$dest/.complete"
log "built in $((end - start)) s"
echo "$bin/helm"
