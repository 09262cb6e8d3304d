#!/usr/bin/env bash
# Builds the release tools and prints the directory holding them:
#   cosign           github.com/sigstore/cosign/v3/cmd/cosign  (COSIGN_VERSION)
#   cargo-cyclonedx  crates.io cargo-cyclonedx                 (CARGO_CYCLONEDX_VERSION)
# Versions come from hack/release-versions.env (REGCRED_COSIGN_VERSION and
# REGCRED_CARGO_CYCLONEDX_VERSION override them).
#
# Each goes into its own versioned directory of the cache outside the repo
# ($REGCRED_CACHE, default ~/.cache/regcred):
#   release-tools/cosign-<version>/cosign
#   release-tools/cargo-cyclonedx-<version>/bin/cargo-cyclonedx
# and is reused afterwards. The printed directory
# (release-tools/bin-cosign-<version>-cargo-cyclonedx-<version>) holds links
# to both. Nothing is downloaded but Go modules from the module proxy and
# crates from crates.io.
set -euo pipefail

# shellcheck source=release-versions.env
source "$(dirname "${BASH_SOURCE[0]}")/release-versions.env"
COSIGN_VERSION="${REGCRED_COSIGN_VERSION:-$COSIGN_VERSION}"
CARGO_CYCLONEDX_VERSION="${REGCRED_CARGO_CYCLONEDX_VERSION:-$CARGO_CYCLONEDX_VERSION}"
CACHE_ROOT="${REGCRED_CACHE:-$HOME/.cache/regcred}"
TOOLS="$CACHE_ROOT/release-tools"
# Bump when the way the tools are built changes, to rebuild cached ones.
RECIPE=1

log() { echo "release-tools: $*" >&2; }

command -v go >/dev/null 2>&1 || {
  log "Go is required to build cosign (install it from your distribution, e.g. 'apt-get install golang')"
  exit 1
}
command -v cargo >/dev/null 2>&1 || {
  log "cargo is required to build cargo-cyclonedx (install Rust, e.g. with rustup)"
  exit 1
}

# built DIR EXE: whether DIR/EXE is there, built by this recipe.
built() {
  [[ -x "$1/$2" && "$(cat "$1/.recipe" 2>/dev/null)" == "$RECIPE" ]]
}

build_cosign() {
  local dir="$TOOLS/cosign-$COSIGN_VERSION"
  built "$dir" cosign && return 0
  local start=$SECONDS
  mkdir -p "$dir"
  log "building cosign $COSIGN_VERSION from its Go module (several minutes on a cold cache)"
  # The upstream Makefile's LDFLAGS: the version `cosign version` prints.
  local ldflags="-s -w -buildid= -X sigs.k8s.io/release-utils/version.gitVersion=$COSIGN_VERSION"
  ldflags+=" -X sigs.k8s.io/release-utils/version.gitTreeState=clean"
  # go install PACKAGE@VERSION builds the published module as it is, checked
  # against the checksum database. GOTOOLCHAIN=local: a module that needs a
  # newer Go fails here rather than fetching a toolchain.
  if ! CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}" GOFLAGS="${GOFLAGS:-} -trimpath -buildvcs=false" \
    GOBIN="$dir" go install -ldflags "$ldflags" "github.com/sigstore/cosign/v3/cmd/cosign@$COSIGN_VERSION" >&2; then
    log "building cosign $COSIGN_VERSION failed ($(go env GOVERSION); a cosign that needs a newer Go" \
      "fails with 'requires go >= ...': pick another COSIGN_VERSION in hack/release-versions.env)"
    exit 1
  fi
  [[ -x "$dir/cosign" ]] || { log "cosign was not built"; exit 1; }
  echo "$RECIPE" >"$dir/.recipe"
  log "built cosign in $((SECONDS - start)) s"
}

build_cyclonedx() {
  local dir="$TOOLS/cargo-cyclonedx-$CARGO_CYCLONEDX_VERSION"
  built "$dir" bin/cargo-cyclonedx && return 0
  local start=$SECONDS
  mkdir -p "$dir"
  log "building cargo-cyclonedx $CARGO_CYCLONEDX_VERSION from crates.io (a few minutes on a cold cache)"
  # --locked: the crate's own Cargo.lock, as published. Its own target
  # directory, removed afterwards, keeps the project's build cache apart.
  if ! cargo install --quiet --locked --force --root "$dir" --target-dir "$TOOLS/build-cargo-cyclonedx" \
    cargo-cyclonedx --version "=$CARGO_CYCLONEDX_VERSION" >&2; then
    log "cargo install cargo-cyclonedx $CARGO_CYCLONEDX_VERSION failed"
    exit 1
  fi
  rm -rf "$TOOLS/build-cargo-cyclonedx"
  [[ -x "$dir/bin/cargo-cyclonedx" ]] || { log "cargo-cyclonedx was not built"; exit 1; }
  echo "$RECIPE" >"$dir/.recipe"
  log "built cargo-cyclonedx in $((SECONDS - start)) s"
}

mkdir -p "$TOOLS"
build_cosign
build_cyclonedx

# One directory with both, for PATH (cargo finds `cargo cyclonedx` there).
BIN="$TOOLS/bin-cosign-$COSIGN_VERSION-cargo-cyclonedx-$CARGO_CYCLONEDX_VERSION"
mkdir -p "$BIN"
ln -sf "$TOOLS/cosign-$COSIGN_VERSION/cosign" "$BIN/cosign"
ln -sf "$TOOLS/cargo-cyclonedx-$CARGO_CYCLONEDX_VERSION/bin/cargo-cyclonedx" "$BIN/cargo-cyclonedx"
log "cosign: $("$BIN/cosign" version 2>/dev/null | awk '/^GitVersion/ {print $2}')"
log "cargo-cyclonedx: $("$BIN/cargo-cyclonedx" cyclonedx --version 2>/dev/null | awk '{print $NF}')"
echo "$BIN"
