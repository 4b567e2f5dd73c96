#!/usr/bin/env bash
# Builds devicelet's container image without a container engine or a registry: the image the
# Dockerfile describes, assembled with buildah (vfs storage, chroot isolation) on a Debian bookworm
# base made by `debootstrap --variant=minbase`, and written as an OCI archive. Needs root (as CI
# and the dev machines run); installs buildah and debootstrap from Debian's packages when missing.
#
#   hack/image/build.sh [--output FILE] [--tag NAME:TAG] [--gzip]   -> prints the archive's path
#
# Default output: ${DEVICELET_CACHE:-~/.cache/devicelet}/image/devicelet-image.tar, tagged
# devicelet:<package version>. Its layers are uncompressed (about 320 MB, quick to write and to
# unpack); --gzip compresses them (about 100 MB) for copying elsewhere. It loads with `podman load
# -i`, `skopeo copy oci-archive:FILE ...` or `docker load` (Docker 25+); hack/image/oci.ts unpacks
# and runs it without an engine. A warm run (cached base and dependencies) takes about a minute.
#
# The Dockerfile's stages, and how this script does the same:
#   build stage   npm ci, npm run build, npm prune --omit=dev
#                 -> `npm ci --omit=dev --ignore-scripts` in a folder cached by the hash of
#                    package.json and package-lock.json, and the checkout's `tsc -p
#                    tsconfig.build.json` writing dist/ into the build's work folder
#   final stage   node:24-bookworm-slim; /app with package.json, node_modules, dist and bin; the
#                 `devicelet` link; user 1000; ENTRYPOINT devicelet
#                 -> a debootstrap base (cached by month, so a new month takes Debian's updates),
#                    Node.js from the npm registry's `node` package at hack/node.sh's pin, and the
#                    `node` user (uid/gid 1000, home /home/node) as the official image has it
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache_root=${DEVICELET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/devicelet}
output="$cache_root/image/devicelet-image.tar"
version=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' "$root/package.json")
tag="devicelet:$version"
compress=false
while (($#)); do
  case "$1" in
    --output) output=$(realpath -m "$2"); shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --gzip) compress=true; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

started=$(date +%s)
log() { printf '[image] %3ss %s\n' "$(($(date +%s) - started))" "$*" >&2; }
[[ $(id -u) == 0 ]] || { echo "build.sh: run as root (buildah's vfs storage and debootstrap need it)" >&2; exit 1; }

# As hack/testenv/mosquitto.ts installs Mosquitto: apt-get, refreshing the package lists only when
# the install fails without it. The tests install packages too: wait for dpkg's lock, do not fail.
install_debian_package() {
  log "$1 is missing; installing it from Debian's packages (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  local apt=(apt-get -o DPkg::Lock::Timeout=300 -y -qq)
  "${apt[@]}" install "$@" >&2 || { "${apt[@]}" update >&2 && "${apt[@]}" install "$@" >&2; }
}
command -v buildah >/dev/null || install_debian_package buildah
command -v debootstrap >/dev/null || install_debian_package debootstrap

arch=$(dpkg --print-architecture)
case "$arch" in
  amd64) node_arch=x64 ;;
  arm64) node_arch=arm64 ;;
  *) echo "build.sh: no Node.js package for $arch" >&2; exit 1 ;;
esac

state="$cache_root/image"
mkdir -p "$state"
# One storage for every run: it keeps the base image; the devicelet image goes straight into the
# archive and is never stored there.
bah() { buildah --root "$state/storage" --runroot "$state/run" --storage-driver vfs "$@"; }
work=$(mktemp -d "$state/work.XXXXXX")
containers=()
cleanup() {
  local c
  for c in "${containers[@]}"; do bah rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# --- the base: Debian bookworm, minbase, trimmed as the slim images are ---------------------------
base_key="bookworm-minbase-$arch-$(date -u +%Y%m)"
base_image="localhost/devicelet-base:$base_key"
if ! bah inspect --type image "$base_image" >/dev/null 2>&1; then
  base_tar="$state/base-$base_key.tar"
  if [[ ! -f "$base_tar" ]]; then
    log "debootstrap --variant=minbase bookworm (cached as $base_tar)"
    rootfs="$work/base"
    debootstrap --variant=minbase --arch="$arch" bookworm "$rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
      { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    # A container runtime provides /dev, /proc and /sys; the package cache, the package lists and
    # the documentation only make the image larger.
    rm -rf "${rootfs:?}"/dev/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
      "$rootfs"/var/log/* "$rootfs"/var/cache/debconf/*-old "$rootfs"/debootstrap
    tar --numeric-owner --xattrs -C "$rootfs" -cf "$base_tar.part" .
    mv "$base_tar.part" "$base_tar"
    rm -rf "$rootfs"
  fi
  log "importing the base as $base_image"
  ctr=$(bah from --name "devicelet-base-$$" scratch)
  containers+=("$ctr")
  mnt=$(bah mount "$ctr")
  tar --numeric-owner --xattrs -C "$mnt" -xf "$base_tar"
  bah umount "$ctr" >/dev/null
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  bah commit --quiet --format oci --rm "$ctr" "$base_image" >/dev/null
  containers=()
fi
# Bases of earlier months are not used again.
find "$state" -maxdepth 1 -name 'base-*.tar' ! -name "base-$base_key.tar" -delete
for old in $(bah images --noheading --format '{{.Name}}:{{.Tag}}' | grep '^localhost/devicelet-base:' || true); do
  [[ $old == "$base_image" ]] || bah rmi "$old" >/dev/null
done

# --- Node.js: the npm registry's `node` package at hack/node.sh's pin -----------------------------
node_pin=$(sed -n 's/^NODE_PIN=//p' "$root/hack/node.sh")
node_dir="$cache_root/node-$node_pin"
node_binary="$node_dir/node_modules/node-linux-$node_arch/bin/node"
[[ -x "$node_binary" ]] || node_binary="$node_dir/node_modules/node/node_modules/node-linux-$node_arch/bin/node"
if [[ ! -x "$node_binary" ]]; then
  log "installing Node.js $node_pin from the npm registry into $node_dir"
  mkdir -p "$node_dir"
  npm install --prefix "$node_dir" --no-save --no-package-lock --loglevel=error "node@$node_pin" >&2
  node_binary=$(readlink -f "$node_dir/node_modules/node/bin/node")
fi
node_bin_dir=$(dirname "$node_binary")
[[ $("$node_binary" --version) == "v$node_pin" ]] || { echo "build.sh: $node_binary is not Node.js $node_pin" >&2; exit 1; }

# --- the build stage: production dependencies and dist/ ---------------------------------------------
deps_key=$(cat "$root/package.json" "$root/package-lock.json" | sha256sum | cut -c1-16)
deps="$state/deps-$deps_key"
if [[ ! -f "$deps/.complete" ]]; then
  log "npm ci --omit=dev (cached as $deps)"
  rm -rf "$deps" && mkdir -p "$deps"
  cp "$root/package.json" "$root/package-lock.json" "$deps/"
  (cd "$deps" && PATH="$node_bin_dir:$PATH" npm ci --omit=dev --ignore-scripts --prefer-offline \
    --no-audit --no-fund --loglevel=error >&2)
  touch "$deps/.complete"
fi
find "$state" -maxdepth 1 -name 'deps-*' ! -name "deps-$deps_key" -exec rm -rf {} +
# The checkout's own compiler and settings, as `npm run build`, with the output here. Types are
# checked by CI's typecheck and build steps; the image only needs the JavaScript, which
# isolatedModules makes file by file, so --noCheck emits the same files sooner.
log "tsc -p tsconfig.build.json"
[[ -x "$root/node_modules/.bin/tsc" ]] || "$root/hack/npm" ci --loglevel=error >&2
(cd "$root" && PATH="$node_bin_dir:$PATH" node_modules/.bin/tsc -p tsconfig.build.json --noCheck \
  --outDir "$work/dist" >&2)

# --- the final stage --------------------------------------------------------------------------------
log "assembling $tag"
ctr=$(bah from --name "devicelet-$$" --pull-never "$base_image")
containers+=("$ctr")
bah copy --quiet --chown 0:0 "$ctr" "$node_binary" /usr/local/bin/node
bah copy --quiet --chown 0:0 "$ctr" "$root/package.json" /app/package.json
bah copy --quiet --chown 0:0 "$ctr" "$root/bin" /app/bin
bah copy --quiet --chown 0:0 "$ctr" "$deps/node_modules" /app/node_modules
bah copy --quiet --chown 0:0 "$ctr" "$work/dist" /app/dist
bah run --isolation chroot "$ctr" -- sh -ec '
  chmod 0755 /usr/local/bin/node
  groupadd --gid 1000 node
  useradd --uid 1000 --gid node --shell /bin/bash --create-home node
  ln -s /app/bin/devicelet.js /usr/local/bin/devicelet'
bah config \
  --env NODE_VERSION="$node_pin" --env NODE_ENV=production --workingdir /app --user 1000:1000 \
  --env MALLOC_MMAP_THRESHOLD_=65536 --env MALLOC_TRIM_THRESHOLD_=65536 \
  --port 8080/tcp --port 8081/tcp --port 10250/tcp \
  --entrypoint '["devicelet"]' --cmd '["run", "--config", "/etc/devicelet/config.yaml"]' \
  --label org.opencontainers.image.title=devicelet \
  --label org.opencontainers.image.version="$version" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  "$ctr"
log "commit and write the archive"
mkdir -p "$(dirname "$output")"
rm -f "$output"
uncompressed=true
[[ $compress == true ]] && uncompressed=false
bah commit --quiet --format oci --disable-compression="$uncompressed" --rm "$ctr" "oci-archive:$output:$tag" >/dev/null
containers=()
log "wrote $output ($(du -h "$output" | cut -f1))"
echo "$output"
