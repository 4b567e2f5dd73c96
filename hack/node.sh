#!/usr/bin/env bash
# Prints a folder whose `node` is Node.js >= 22.12. When the machine's own Node.js is older, installs
# Node.js 24 from the npm registry (the `node` package ships the binary) into a cache folder that a
# second run reuses, and prints that folder instead. Meant to be used as
#   PATH="$(hack/node.sh):$PATH"
set -euo pipefail
NODE_PIN=24.21.0
cache_root=${DEVICELET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/devicelet}

new_enough() {
  local v
  v=$("$1" -p 'process.versions.node' 2>/dev/null) || return 1
  IFS=. read -r major minor _ <<<"$v"
  ((major > 22 || (major == 22 && minor >= 12)))
}

if system_node=$(command -v node) && new_enough "$system_node"; then
  dirname "$system_node"
  exit 0
fi

dest="$cache_root/node-$NODE_PIN"
if [[ ! -x "$dest/node_modules/.bin/node" ]] || ! new_enough "$dest/node_modules/.bin/node"; then
  echo "[node] system Node.js is $( [[ -n "${system_node:-}" ]] && "$system_node" --version || echo missing); installing Node.js $NODE_PIN from the npm registry into $dest" >&2
  mkdir -p "$dest"
  npm install --prefix "$dest" --no-save --no-package-lock --loglevel=error "node@$NODE_PIN" >&2
  new_enough "$dest/node_modules/.bin/node" || { echo "[node] the installed node does not run" >&2; exit 1; }
fi
echo "$dest/node_modules/.bin"
