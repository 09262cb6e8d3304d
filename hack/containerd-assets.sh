#!/usr/bin/env bash
# Prints a directory holding containerd 2 (containerd, containerd-shim-runc-v2,
# ctr), building whatever is missing from containerd's Go module.
#
# Kubernetes 1.36 and later support containerd 2.x only (1.35 was the last
# minor to support 1.x; Debian 12 ships 1.6). The test node runs these
# binaries with Debian's runc.
#
# - REGCRED_CONTAINERD_VERSION picks the release (default: CONTAINERD in
#   hack/versions.env).
# - Builds go into a cache outside the repo ($REGCRED_CACHE, default
#   ~/.cache/regcred), keyed by version, and are reused on the next run.
# - The build is static (CGO_ENABLED=0) with the `no_btrfs` tag, as upstream's
#   static release binaries are: the node uses the overlayfs snapshotter.
set -euo pipefail

# shellcheck source=versions.env
source "$(dirname "${BASH_SOURCE[0]}")/versions.env"
VERSION="${REGCRED_CONTAINERD_VERSION:-$CONTAINERD}"
CACHE_ROOT="${REGCRED_CACHE:-$HOME/.cache/regcred}"
OUT="$CACHE_ROOT/containerd/v$VERSION"
BINARIES=(containerd containerd-shim-runc-v2 ctr)
RECIPE=1

log() { echo "containerd-assets: $*" >&2; }

command -v go >/dev/null 2>&1 || {
  log "Go is required to build containerd (install it from your distribution, e.g. 'apt-get install golang')"
  exit 1
}

mkdir -p "$OUT"
if [[ "$(cat "$OUT/.recipe" 2>/dev/null)" != "$RECIPE" ]]; then
  rm -f "${BINARIES[@]/#/$OUT/}"
fi
missing=()
for b in "${BINARIES[@]}"; do [[ -x "$OUT/$b" ]] || missing+=("$b"); done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "$OUT"
  exit 0
fi

export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath -buildvcs=false" GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
WORK="$CACHE_ROOT/containerd/build-v$VERSION"
mkdir -p "$WORK"
module=github.com/containerd/containerd/v2
if [[ ! -f "$WORK/go.mod" ]]; then
  mod_json=$(cd "$WORK" && go mod download -json "$module@v$VERSION")
  gomod=$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' <<<"$mod_json")
  [[ -f "$gomod" ]] || { log "could not download $module@v$VERSION: $mod_json"; exit 1; }
  go_line=$(awk '$1=="go" {print $2; exit}' "$gomod")
  printf 'module regcred.dev/containerd-assets\n\ngo %s\n\nrequire %s v%s\n' "$go_line" "$module" "$VERSION" >"$WORK/go.mod"
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for b in "${BINARIES[@]}"; do printf '\t_ "%s/cmd/%s"\n' "$module" "$b"; done
    printf ')\n'
  } >"$WORK/tools.go"
  (cd "$WORK" && go mod tidy -e >&2)
fi

# Stamp the release version, as upstream's Makefile does.
ldflags="-s -w -X $module/version.Version=v$VERSION -X $module/version.Package=github.com/containerd/containerd"
for b in "${missing[@]}"; do
  log "building $b v$VERSION (takes minutes on a cold cache)"
  (cd "$WORK" && go build -tags "no_btrfs no_devmapper no_zfs" -ldflags "$ldflags" -o "$OUT/$b" "$module/cmd/$b" >&2)
done
for b in "${BINARIES[@]}"; do
  [[ -x "$OUT/$b" ]] || { log "$b was not built"; exit 1; }
done
echo "$RECIPE" >"$OUT/.recipe"
echo "$OUT"
