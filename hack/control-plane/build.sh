#!/usr/bin/env bash
# Builds the control plane devicelet's tests run against, from the Go module proxy, and caches it
# by version outside the repo. A second run with the same versions only prints the bin folder.
#
#   hack/control-plane/build.sh      -> prints the folder holding etcd, kube-apiserver,
#                                       kube-controller-manager, kube-scheduler and kubectl
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
. "$here/versions.sh"

cache_root=${DEVICELET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/devicelet}
dest="$cache_root/control-plane/k8s-$KUBE_VERSION-etcd-$ETCD_VERSION"
bin="$dest/bin"
if [[ -f "$dest/.complete" ]]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: Go is needed to build the control plane" >&2; exit 1; }
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
work="$dest/src"
rm -rf "$work" "$bin"
mkdir -p "$work/kube" "$work/etcd" "$bin"
log() { printf '[control-plane] %s\n' "$*" >&2; }
start=$(date +%s)

# --- kube: one multi-call binary ---------------------------------------------------------------
# k8s.io/kubernetes pins its staging modules at v0.0.0 and replaces them with ./staging paths,
# which is why `go install k8s.io/kubernetes/cmd/...` is refused. Our own module requires it and
# replaces each of those staging modules with the published v0.<minor>.<patch> of the same tree.
log "resolving k8s.io/kubernetes $KUBE_VERSION"
kube_mod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
staging_version="v0.${KUBE_VERSION#v1.}"
cp "$here/kube/main.go" "$work/kube/main.go"
{
  echo "module devicelet.dev/hack/control-plane/kube"
  echo
  echo "go $(sed -n 's/^go \(.*\)$/\1/p' "$kube_mod")"
  echo
  echo "require k8s.io/kubernetes $KUBE_VERSION"
  echo
  echo "replace ("
  sed -n 's#^\s*\(k8s.io/[^ ]*\) => ./staging/src/.*$#\1#p' "$kube_mod" | while read -r m; do
    echo "	$m => $m $staging_version"
  done
  echo ")"
} >"$work/kube/go.mod"
log "go mod tidy (kube), $(grep -c ' => ' "$work/kube/go.mod") staging modules replaced at $staging_version"
(cd "$work/kube" && go mod tidy)

minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$now"
done
log "go build (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl in one binary)"
(cd "$work/kube" && go build -trimpath -ldflags "$ldflags" -o "$bin/k8s" .)
for part in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  ln -sf k8s "$bin/$part"
done

# --- etcd ----------------------------------------------------------------------------------------
cp "$here/etcd/main.go" "$work/etcd/main.go"
printf 'module devicelet.dev/hack/control-plane/etcd\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
  "$ETCD_VERSION" >"$work/etcd/go.mod"
log "go mod tidy + build (etcd $ETCD_VERSION)"
(cd "$work/etcd" && go mod tidy && go build -trimpath \
  -ldflags "-s -w" -o "$bin/etcd" .)

"$bin/kube-apiserver" --version >&2
"$bin/etcd" --version >&2 | head -1
end=$(date +%s)
{
  echo "kube=$KUBE_VERSION etcd=$ETCD_VERSION built=$now seconds=$((end - start))"
  du -sh "$bin" | sed 's/^/bin: /'
} >"$dest/.complete"
log "built in $((end - start)) s; $(du -sh "$bin" | cut -f1) of binaries"
echo "$bin"
