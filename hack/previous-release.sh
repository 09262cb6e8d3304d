#!/usr/bin/env bash
# Builds the previous regcred release from the commit releases.txt records
# for it, for the upgrade and rollback tests (docs/release.md), and prints
# the directory holding:
#   VERSION      the release's version
#   COMMIT       the commit it was built from
#   regcred      its binary (debug profile, stripped; what the tests put
#                in an image, as they do for the current tree)
#   chart/       its Helm chart (charts/regcred at that commit)
#
# The previous release is the newest line of releases.txt whose version is
# not the tree's own (Cargo.toml); REGCRED_PREVIOUS_RELEASE=X.Y.Z names
# another. The result is cached outside the repository
# ($REGCRED_CACHE, default ~/.cache/regcred: releases/<version>-<commit>/)
# and reused; building one takes a few minutes (its own cargo target
# directory, deleted afterwards: sharing the tree's would mix two copies of
# one workspace).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
CACHE_ROOT="${REGCRED_CACHE:-$HOME/.cache/regcred}"

log() { echo "previous-release: $*" >&2; }

current=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
wanted="${REGCRED_PREVIOUS_RELEASE:-}"
line=$(awk -v cur="$current" -v want="$wanted" '
  /^[[:space:]]*(#|$)/ { next }
  want != "" { if ($1 == want) found = $0; next }
  $1 != cur { found = $0 }
  END { print found }' "$root/releases.txt")
if [[ -z "$line" ]]; then
  log "releases.txt names no release ${wanted:-before $current}"
  exit 1
fi
read -r version commit _ <<<"$line"
out="$CACHE_ROOT/releases/$version-${commit:0:12}"
if [[ -x "$out/regcred" && -f "$out/chart/Chart.yaml" && "$(cat "$out/COMMIT" 2>/dev/null)" == "$commit" ]]; then
  echo "$out"
  exit 0
fi

if ! git -C "$root" cat-file -e "$commit^{commit}" 2>/dev/null; then
  log "commit $commit of release $version is not in this clone ($root); fetch the history (git fetch --unshallow)"
  exit 1
fi
command -v cargo >/dev/null 2>&1 || { log "cargo is required to build release $version"; exit 1; }

work="$CACHE_ROOT/releases/build-$version-${commit:0:12}"
rm -rf "$work" "$out"
mkdir -p "$work/src" "$out"
git -C "$root" archive "$commit" | tar -x -C "$work/src"
log "building regcred $version from $commit (a few minutes on a cold cache)"
started=$SECONDS
CARGO_TARGET_DIR="$work/target" cargo build --locked --quiet --manifest-path "$work/src/Cargo.toml" --bin regcred >&2
strip -o "$out/regcred" "$work/target/debug/regcred" 2>/dev/null || cp "$work/target/debug/regcred" "$out/regcred"
cp -r "$work/src/charts/regcred" "$out/chart"
echo "$version" >"$out/VERSION"
echo "$commit" >"$out/COMMIT"
rm -rf "$work"
log "regcred $version built in $((SECONDS - started)) s: $out"
echo "$out"
