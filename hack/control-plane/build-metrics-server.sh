#!/usr/bin/env bash
# Builds metrics-server (sigs.k8s.io/metrics-server, which serves the metrics.k8s.io API behind
# `kubectl top`) from the Go module proxy at the pinned version and caches it by version next to the
# control plane. A second run with the same version only prints the binary's path.
#
#   hack/control-plane/build-metrics-server.sh   -> prints the path of the metrics-server binary
#
# It is built as a tool of a module of its own rather than with `go install pkg@version`, because
# metrics-server's go.mod carries replace directives that `go install` refuses.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
. "$here/versions.sh"

cache_root=${DEVICELET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/devicelet}
dest="$cache_root/metrics-server-$METRICS_SERVER_VERSION"
bin="$dest/bin"
if [[ -f "$dest/.complete" ]]; then
  echo "$bin/metrics-server"
  exit 0
fi

command -v go >/dev/null || { echo "build-metrics-server.sh: Go is needed" >&2; exit 1; }
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
log() { printf '[metrics-server] %s\n' "$*" >&2; }
work="$dest/src"
rm -rf "$work" "$bin"
mkdir -p "$work" "$bin"
start=$(date +%s)

log "resolving sigs.k8s.io/metrics-server $METRICS_SERVER_VERSION"
printf 'module devicelet.dev/hack/control-plane/metrics-server\n\ngo 1.24\n' >"$work/go.mod"
(cd "$work" && go get -tool "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION")
log "go build"
(cd "$work" && go build -trimpath -ldflags "-s -w" -o "$bin/metrics-server" \
  sigs.k8s.io/metrics-server/cmd/metrics-server)

end=$(date +%s)
echo "metrics-server=$METRICS_SERVER_VERSION built=$(date -u +%Y-%m-%dT%H:%M:%SZ) seconds=$((end - start))" \
  >"$dest/.complete"
log "built in $((end - start)) s"
echo "$bin/metrics-server"
