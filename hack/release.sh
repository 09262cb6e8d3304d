#!/usr/bin/env bash
# `make release VERSION=X.Y.Z`: a signed regcred release.
#
#   hack/release.sh --version X.Y.Z [--registry HOST[:PORT][/PATH]] [--out DIR]
#                   [--plain-http] [--insecure] [--allow-dirty] [--force] [--dry-run]
#
# Each flag has an environment twin (what `make release` passes):
#   VERSION, REGISTRY, OUT, DRY_RUN=1, REGISTRY_PLAIN_HTTP=1, REGISTRY_INSECURE=1,
#   ALLOW_DIRTY=1, FORCE=1.
# Other settings, from the environment only:
#   COSIGN_KEY            the signing key: a cosign.key file (`cosign generate-key-pair`)
#                         or a KMS URI (awskms://, gcpkms://, azurekms://, hashivault://)
#   COSIGN_PASSWORD       the key file's password; cosign reads it itself
#   REGISTRY_USERNAME     with REGISTRY_PASSWORD: credentials for the registry (never
#   REGISTRY_PASSWORD       put on a command line; written to a 0600 file, removed after)
#   REGISTRY_AUTH_FILE    or a docker/containers auth file (config.json) to use instead
#   IMAGE_REPO            where the image goes (default REGISTRY/regcred)
#   CHART_REPO            where the chart goes (default REGISTRY/charts: the chart is
#                         then oci://REGISTRY/charts/regcred)
#   CHART_IMAGE_REPOSITORY the chart's default image.repository (default IMAGE_REPO when
#                         pushing; the repository's value otherwise)
#   IMAGE_TAG             the image tag make computed; must equal VERSION
#   IMAGE_SOURCE          the image's org.opencontainers.image.source label
#   CHANGELOG             the changelog to check (default CHANGELOG.md)
#   RELEASES              the list of published releases (default releases.txt)
#   COSIGN_SIGNING_CONFIG a cosign signing config with the services to use (e.g. a
#                         transparency log); default: none, signing is offline
#   COSIGN_TRUSTED_ROOT   the trusted root that goes with it
#   REGCRED_BINARY        tests only: put this regcred binary in the image instead of
#                         building one with `cargo build --release`
#
# What it does, in order:
#  1. checks that the versions agree: VERSION, Cargo.toml and Cargo.lock, the chart's
#     version and appVersion, the image tag; that CHANGELOG.md has a `## [VERSION]`
#     section (Keep a Changelog) and releases.txt does not list VERSION yet; that the
#     work tree is clean (--allow-dirty skips this);
#  2. builds cosign and cargo-cyclonedx (hack/release-tools.sh) and helm
#     (hack/helm-tools.sh) when they are not cached;
#  3. builds the image as an OCI layout (the engine-free `make image`);
#  4. writes the SBOM of the regcred binary's crates (CycloneDX 1.5 JSON, cargo-cyclonedx);
#  5. packages the chart (`helm package`);
#  6. signs everything into OUT with cosign bundles (sign-blob, and the SBOM as an in-toto
#     attestation whose subject is the image manifest) and writes SHA256SUMS, signed too;
#  7. with a registry: pushes the image (skopeo), signs it and attaches the SBOM as a signed
#     CycloneDX attestation (an OCI artifact referring to the image), pushes the chart
#     (`helm push`) and signs it, then verifies all three with the public key.
# --dry-run prints every command it would run and runs none (the read-only checks of
# step 1 still run, so that a dry run also says whether a release would be refused).
#
# Signing is offline: cosign gets a signing config with no services (no Fulcio, no Rekor,
# no timestamp authority) and an empty trusted root, so it never fetches Sigstore's TUF
# metadata; verification needs `--insecure-ignore-tlog` accordingly (see the printed
# commands). Keyless signing (Fulcio certificate from an OIDC identity, Rekor entry) is
# not done here: it needs the public Sigstore services. In CI with an OIDC token it is
# `cosign sign --yes IMAGE@DIGEST` (default signing config from Sigstore's TUF root),
# verified with `cosign verify --certificate-identity=... --certificate-oidc-issuer=...`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

truthy() { [[ "${1:-}" =~ ^(1|true|yes|on)$ ]]; }

VERSION="${VERSION:-}"
REGISTRY="${REGISTRY:-}"
OUT="${OUT:-}"
DRY_RUN="${DRY_RUN:-}"
PLAIN_HTTP="${REGISTRY_PLAIN_HTTP:-}"
INSECURE="${REGISTRY_INSECURE:-}"
ALLOW_DIRTY="${ALLOW_DIRTY:-}"
FORCE="${FORCE:-}"
while (($#)); do
  case "$1" in
    --version) VERSION="${2:?--version needs a value}"; shift ;;
    --version=*) VERSION="${1#*=}" ;;
    --registry) REGISTRY="${2:?--registry needs a value}"; shift ;;
    --registry=*) REGISTRY="${1#*=}" ;;
    --out) OUT="${2:?--out needs a value}"; shift ;;
    --out=*) OUT="${1#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    --plain-http) PLAIN_HTTP=1 ;;
    --insecure) INSECURE=1 ;;
    --allow-dirty) ALLOW_DIRTY=1 ;;
    --force) FORCE=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "release: unknown argument $1 (--help lists them)" >&2; exit 2 ;;
  esac
  shift
done
truthy "$DRY_RUN" && DRY=1 || DRY=0

step() { printf '\n==> %s\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
warn() { printf 'release: warning: %s\n' "$*" >&2; }
die() { printf 'release: error: %s\n' "$*" >&2; exit 1; }

# show CMD...: prints a command as it would be typed (words with shell
# metacharacters quoted; placeholders such as <image digest> left readable).
show() {
  local out="+" a
  for a in "$@"; do
    if [[ "$a" =~ ^[][A-Za-z0-9_./:@=,+%^{}\<\>-]+$ ]]; then out+=" $a"; else out+=" $(printf '%q' "$a")"; fi
  done
  printf '%s\n' "$out" >&2
}
# note TEXT: shows a step done in the script itself (a file it writes).
note() { printf '+ # %s\n' "$*" >&2; }
# run CMD...: shows it, and runs it unless this is a dry run.
run() {
  show "$@"
  ((DRY)) || "$@"
}

# --- 1. Checks ---------------------------------------------------------------

step "checking the release $VERSION"
[[ -n "$VERSION" ]] || die "VERSION is required: make release VERSION=X.Y.Z"
# Semantic Versioning 2.0.0 (https://semver.org), without a leading v: the
# chart's version must be SemVer too, and the tag is the same string.
[[ "$VERSION" =~ ^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$ ]] ||
  die "VERSION '$VERSION' is not X.Y.Z (Semantic Versioning, no leading v)"

problems=()
cargo_version=$(awk '/^\[/{pkg = ($0 == "[package]")} pkg && $1 == "version" {gsub(/"/, "", $3); print $3; exit}' Cargo.toml)
[[ "$cargo_version" == "$VERSION" ]] || problems+=("Cargo.toml [package] version is '$cargo_version'")
lock_version=$(awk '$0 == "name = \"regcred\"" {getline; gsub(/"/, "", $3); print $3; exit}' Cargo.lock)
[[ "$lock_version" == "$VERSION" ]] || problems+=("Cargo.lock has regcred '$lock_version' (run cargo build to update it)")
chart_field() { sed -n "s/^$1:[[:space:]]*[\"']\{0,1\}\([^\"' ]*\)[\"']\{0,1\}[[:space:]]*$/\1/p" charts/regcred/Chart.yaml | head -1; }
chart_version=$(chart_field version)
chart_app_version=$(chart_field appVersion)
[[ "$chart_version" == "$VERSION" ]] || problems+=("charts/regcred/Chart.yaml version is '$chart_version'")
[[ "$chart_app_version" == "$VERSION" ]] || problems+=("charts/regcred/Chart.yaml appVersion is '$chart_app_version'")
[[ -z "${IMAGE_TAG:-}" || "$IMAGE_TAG" == "$VERSION" ]] || problems+=("the image tag (IMAGE_TAG) is '$IMAGE_TAG'")

# Keep a Changelog (https://keepachangelog.com/en/1.1.0/): one
# `## [X.Y.Z] - YYYY-MM-DD` section per release, newest first.
CHANGELOG="${CHANGELOG:-CHANGELOG.md}"
notes=""
if [[ ! -f "$CHANGELOG" ]]; then
  problems+=("$CHANGELOG is missing")
else
  heading=$(grep -m1 -E "^## \[${VERSION//./\\.}\]" "$CHANGELOG" || true)
  if [[ -z "$heading" ]]; then
    problems+=("$CHANGELOG has no '## [$VERSION]' section")
  else
    notes=$(awk -v h="$heading" '$0 == h {on = 1; next} on && /^## / {exit} on' "$CHANGELOG")
    [[ -n "$(tr -d '[:space:]' <<<"$notes")" ]] || problems+=("the '## [$VERSION]' section of $CHANGELOG is empty")
    [[ "$heading" =~ \ -\ [0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] ||
      warn "the changelog heading '$heading' has no release date (Keep a Changelog: '## [$VERSION] - YYYY-MM-DD')"
  fi
fi
# releases.txt: one line per published release (version, commit, date).
RELEASES="${RELEASES:-releases.txt}"
if [[ -f "$RELEASES" ]] && awk -v v="$VERSION" '$1 == v {found = 1} END {exit !found}' "$RELEASES"; then
  problems+=("$RELEASES already lists $VERSION: a published version is never rebuilt")
fi

revision=$(git rev-parse HEAD 2>/dev/null || true)
# --no-optional-locks: a status that never writes the index.
dirty=$(git --no-optional-locks status --porcelain 2>/dev/null | head -5 || true)
if [[ -n "$dirty" ]]; then
  if truthy "$ALLOW_DIRTY"; then
    warn "the work tree has uncommitted changes; the image's revision label says $revision all the same"
  else
    problems+=("the work tree has uncommitted changes (--allow-dirty / ALLOW_DIRTY=1 to release anyway):
$dirty")
  fi
fi
if ((${#problems[@]})); then
  printf 'release: refused:\n' >&2
  printf '  - %s\n' "${problems[@]}" >&2
  exit 1
fi
info "Cargo.toml, Cargo.lock, Chart.yaml (version, appVersion) and the image tag: $VERSION"
info "$CHANGELOG: $heading"

REGISTRY="${REGISTRY%/}"
if [[ -n "$REGISTRY" ]]; then
  IMAGE_REPO="${IMAGE_REPO:-$REGISTRY/regcred}"
  CHART_REPO="${CHART_REPO:-$REGISTRY/charts}"
  CHART_IMAGE_REPOSITORY="${CHART_IMAGE_REPOSITORY:-$IMAGE_REPO}"
else
  [[ -z "${IMAGE_REPO:-}${CHART_REPO:-}" ]] || die "IMAGE_REPO and CHART_REPO need REGISTRY"
  CHART_IMAGE_REPOSITORY="${CHART_IMAGE_REPOSITORY:-}"
  if truthy "$PLAIN_HTTP" || truthy "$INSECURE" || [[ -n "${REGISTRY_USERNAME:-}${REGISTRY_AUTH_FILE:-}" ]]; then
    warn "no REGISTRY: the registry settings (plain HTTP, insecure, credentials) are not used"
  fi
fi

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="${OUT:-$TARGET_DIR/dist/regcred-$VERSION}"
[[ "$OUT" == /* ]] || OUT="$ROOT/$OUT"
# OUT is emptied with --force: never the work tree, a source directory in
# it, HOME, or a directory holding one of them.
out_real=$(realpath -m "$OUT")
out_real="${out_real%/}/"
case "$out_real" in
  "$ROOT"/charts/* | "$ROOT"/src/* | "$ROOT"/hack/* | "$ROOT"/tests/* | "$ROOT"/testenv/*)
    die "OUT=$OUT is not a directory to release into" ;;
esac
for keep in "$ROOT/" "$(realpath -m "$HOME")/"; do
  [[ "$keep" != "$out_real"* ]] || die "OUT=$OUT is not a directory to release into"
done
if [[ -e "$OUT" && -n "$(ls -A "$OUT" 2>/dev/null)" ]]; then
  truthy "$FORCE" || die "$OUT is not empty (--force / FORCE=1 replaces it)"
fi

COSIGN_KEY="${COSIGN_KEY:-}"
if [[ -z "$COSIGN_KEY" ]]; then
  ((DRY)) || die "COSIGN_KEY is required: a cosign key file (cosign generate-key-pair) or a KMS URI"
  COSIGN_KEY="<COSIGN_KEY>"
elif [[ "$COSIGN_KEY" != *://* ]]; then
  [[ -f "$COSIGN_KEY" ]] || die "COSIGN_KEY $COSIGN_KEY does not exist"
  COSIGN_KEY=$(cd "$(dirname "$COSIGN_KEY")" && pwd)/$(basename "$COSIGN_KEY")
  [[ -n "${COSIGN_PASSWORD+set}" ]] || warn "COSIGN_PASSWORD is not set: cosign will ask for the key's password"
fi
if [[ -n "$REGISTRY" ]] && ! ((DRY)); then
  command -v skopeo >/dev/null 2>&1 || die "skopeo is required to push the image (apt-get install skopeo)"
fi
command -v python3 >/dev/null 2>&1 || die "python3 is required to check the SBOM"

if ((DRY)); then
  WORK="<tmp>"
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/regcred-release.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi

# --- 2. Tools ----------------------------------------------------------------

step "tools: cosign, cargo-cyclonedx, helm"
if ((DRY)); then
  show hack/release-tools.sh
  show hack/helm-tools.sh
  TOOLS="<release-tools>"
  HELM="<helm-tools>/helm"
else
  TOOLS=$(hack/release-tools.sh)
  HELM="$(hack/helm-tools.sh)/helm"
  info "cosign $("$TOOLS/cosign" version 2>/dev/null | awk '/^GitVersion/ {print $2}'), cargo-cyclonedx $("$TOOLS/cargo-cyclonedx" cyclonedx --version | awk '{print $NF}'), helm $("$HELM" version --short)"
fi
COSIGN="$TOOLS/cosign"

# --- 3. Image ----------------------------------------------------------------

CARGO="${CARGO:-cargo}"
step "building the image (OCI layout in $OUT/image)"
if truthy "$FORCE"; then run rm -rf "$OUT"; fi
run mkdir -p "$OUT"
# --locked: the release is built from exactly the committed Cargo.lock.
# REGCRED_BINARY (tests only) puts an already built regcred in the image.
BINARY="${REGCRED_BINARY:-$TARGET_DIR/release/regcred}"
if [[ -z "${REGCRED_BINARY:-}" ]]; then
  run "$CARGO" build --release --locked --bin regcred
else
  info "using the regcred binary $BINARY (REGCRED_BINARY: tests only)"
fi
run "$CARGO" build --quiet --locked -p regcred-testenv --bin regcred-image
run "$TARGET_DIR/debug/regcred-image" --binary "$BINARY" --out "$OUT/image" \
  --tag "$VERSION" --source "${IMAGE_SOURCE:-$(git config --get remote.origin.url 2>/dev/null || true)}" \
  --revision "$revision"
if ((DRY)); then
  IMAGE_DIGEST="sha256:<image-digest>"
else
  IMAGE_DIGEST=$(python3 -c '
import json, sys
m = [d for d in json.load(open(sys.argv[1]))["manifests"]
     if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == sys.argv[2]]
print(m[0]["digest"] if len(m) == 1 else "")' "$OUT/image/index.json" "$VERSION")
  [[ "$IMAGE_DIGEST" == sha256:* ]] || die "no image tagged $VERSION in $OUT/image/index.json"
  echo "$IMAGE_DIGEST" >"$OUT/image-digest.txt"
fi
MANIFEST_BLOB="$OUT/image/blobs/sha256/${IMAGE_DIGEST#sha256:}"
info "image manifest: $IMAGE_DIGEST"

# --- 4. SBOM -----------------------------------------------------------------

SBOM="$OUT/regcred-$VERSION.cdx.json"
step "SBOM of the regcred binary's crates ($SBOM)"
# cargo-cyclonedx writes next to each Cargo.toml, so it runs on a copy of
# the work tree as the build sees it (tracked and untracked, not ignored).
run mkdir -p "$WORK/src"
note "git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -C $WORK/src -xf -"
if ! ((DRY)); then
  git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -C "$WORK/src" -xf -
fi
host_triple=$(rustc -vV | sed -n 's/^host: //p')
# The SBOM's timestamp is the commit's, so that one commit gives one SBOM;
# offline: the crates are those Cargo.lock names, already downloaded by the build.
run env SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null || date +%s)" CARGO_NET_OFFLINE=true \
  "$TOOLS/cargo-cyclonedx" cyclonedx --manifest-path "$WORK/src/Cargo.toml" --describe binaries \
  --format json --spec-version 1.5 --target "$host_triple" --quiet
run mv "$WORK/src/regcred_bin.cdx.json" "$SBOM"
if ! ((DRY)); then
  python3 - "$SBOM" "$VERSION" Cargo.toml <<'PY' >&2 || die "the SBOM does not describe regcred $VERSION and its crates"
import json, sys, tomllib
bom = json.load(open(sys.argv[1]))
main = bom["metadata"]["component"]
names = {c["name"] for c in bom.get("components", [])}
assert bom["bomFormat"] == "CycloneDX", bom["bomFormat"]
assert (main["name"], main["version"]) == ("regcred", sys.argv[2]), main
# Every crate regcred's Cargo.toml depends on must be listed.
deps = tomllib.load(open(sys.argv[3], "rb"))["dependencies"]
wanted = {v.get("package", k) if isinstance(v, dict) else k for k, v in deps.items()}
assert not wanted - names, f"missing crates: {sorted(wanted - names)}"
print(f"    CycloneDX {bom['specVersion']}: {main['name']} {main['version']} and {len(names)} crates, "
      f"all {len(wanted)} of Cargo.toml's dependencies among them")
PY
fi

# --- 5. Chart ----------------------------------------------------------------

CHART_TGZ="$OUT/regcred-$VERSION.tgz"
step "packaging the chart ($CHART_TGZ)"
chart_src=charts/regcred
if [[ -n "$CHART_IMAGE_REPOSITORY" ]]; then
  # The published chart's default image is the one published with it; the
  # repository's chart stays as it is.
  chart_src="$WORK/chart/regcred"
  run mkdir -p "$WORK/chart"
  run cp -r charts/regcred "$WORK/chart/"
  note "set image.repository: $CHART_IMAGE_REPOSITORY in $chart_src/values.yaml"
  if ! ((DRY)); then
    awk -v repo="$CHART_IMAGE_REPOSITORY" '
      /^[^ #]/ {block = $0}
      block == "image:" && /^  repository:/ {print "  repository: " repo; n++; next}
      {print}
      END {exit n != 1}' charts/regcred/values.yaml >"$chart_src/values.yaml" ||
      die "charts/regcred/values.yaml has no single image.repository to set"
  fi
fi
run "$HELM" package "$chart_src" --destination "$OUT"

# --- 6. Signatures and checksums in OUT --------------------------------------

step "signing into $OUT (cosign bundles, offline)"
SIGN_OFFLINE=()
if [[ -n "${COSIGN_SIGNING_CONFIG:-}" ]]; then
  SIGN_OFFLINE=(--signing-config "$COSIGN_SIGNING_CONFIG")
  [[ -z "${COSIGN_TRUSTED_ROOT:-}" ]] || SIGN_OFFLINE+=(--trusted-root "$COSIGN_TRUSTED_ROOT")
  VERIFY_TLOG=()
  [[ -z "${COSIGN_TRUSTED_ROOT:-}" ]] || VERIFY_TLOG=(--trusted-root "$COSIGN_TRUSTED_ROOT")
else
  # No service to call: a signing config naming none, and an empty trusted
  # root so that cosign does not fetch Sigstore's from TUF to check its work.
  run "$COSIGN" signing-config create --out "$WORK/signing-config.json"
  run "$COSIGN" trusted-root create --out "$WORK/trusted-root.json"
  SIGN_OFFLINE=(--signing-config "$WORK/signing-config.json" --trusted-root "$WORK/trusted-root.json")
  VERIFY_TLOG=(--insecure-ignore-tlog)
fi
run "$COSIGN" public-key --key "$COSIGN_KEY" --outfile "$OUT/cosign.pub"
note "write the $CHANGELOG section to $OUT/release-notes.md"
((DRY)) || printf '%s\n' "$heading" "$notes" >"$OUT/release-notes.md"
sign_blob() {
  run "$COSIGN" sign-blob --yes --key "$COSIGN_KEY" "${SIGN_OFFLINE[@]}" --bundle "$2" "$1"
}
sign_blob "$CHART_TGZ" "$CHART_TGZ.sigstore.json"
sign_blob "$SBOM" "$SBOM.sigstore.json"
sign_blob "$MANIFEST_BLOB" "$OUT/image-manifest.sigstore.json"
# The SBOM as a CycloneDX in-toto attestation about the image manifest: the
# same statement the registry gets, for an image copied from the layout.
run "$COSIGN" attest-blob --yes --key "$COSIGN_KEY" "${SIGN_OFFLINE[@]}" --type cyclonedx \
  --predicate "$SBOM" --bundle "$OUT/image-sbom.intoto.sigstore.json" "$MANIFEST_BLOB"

# --- 7. Registry ---------------------------------------------------------------

COSIGN_ENV=()
SKOPEO_DEST=()
HELM_REG=()
COSIGN_REG=()
if [[ -n "$REGISTRY" ]]; then
  step "publishing to $REGISTRY"
  host="${REGISTRY%%/*}"
  if [[ -n "${REGISTRY_AUTH_FILE:-}" || -n "${REGISTRY_USERNAME:-}" ]]; then
    auth="$WORK/auth/config.json"
    run mkdir -m 700 -p "$WORK/auth"
    if [[ -n "${REGISTRY_AUTH_FILE:-}" ]]; then
      [[ -f "$REGISTRY_AUTH_FILE" ]] || die "REGISTRY_AUTH_FILE $REGISTRY_AUTH_FILE does not exist"
      run install -m 600 "$REGISTRY_AUTH_FILE" "$auth"
    else
      [[ -n "${REGISTRY_PASSWORD:-}" ]] || die "REGISTRY_USERNAME needs REGISTRY_PASSWORD (in the environment)"
      note "write $REGISTRY_USERNAME's credentials for $host to $auth, mode 0600"
      if ! ((DRY)); then
        (umask 077 && printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$host" \
          "$(printf '%s:%s' "$REGISTRY_USERNAME" "$REGISTRY_PASSWORD" | base64 -w0)" >"$auth")
      fi
    fi
    # One file for the three clients: cosign reads DOCKER_CONFIG/config.json.
    COSIGN_ENV=(env "DOCKER_CONFIG=$WORK/auth")
    SKOPEO_DEST+=(--dest-authfile "$auth")
    HELM_REG+=(--registry-config "$auth")
  fi
  if truthy "$PLAIN_HTTP"; then
    SKOPEO_DEST+=(--dest-tls-verify=false)
    HELM_REG+=(--plain-http)
    COSIGN_REG+=(--allow-http-registry)
  elif truthy "$INSECURE"; then
    SKOPEO_DEST+=(--dest-tls-verify=false)
    HELM_REG+=(--insecure-skip-tls-verify)
    COSIGN_REG+=(--allow-insecure-registry)
  fi

  info "image $IMAGE_REPO:$VERSION"
  note "write skopeo's policy (accept the local layout) to $WORK/policy.json"
  ((DRY)) || echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$WORK/policy.json"
  # --preserve-digests: skopeo fails rather than push a converted manifest,
  # so the registry holds the manifest that was signed above.
  run skopeo --policy "$WORK/policy.json" copy --preserve-digests --digestfile "$WORK/image.digest" \
    "${SKOPEO_DEST[@]}" "oci:$OUT/image:$VERSION" "docker://$IMAGE_REPO:$VERSION"
  if ! ((DRY)); then
    pushed=$(cat "$WORK/image.digest")
    [[ "$pushed" == "$IMAGE_DIGEST" ]] || die "the registry stored $pushed, not $IMAGE_DIGEST"
  fi
  image_ref="$IMAGE_REPO@$IMAGE_DIGEST"
  run "${COSIGN_ENV[@]}" "$COSIGN" sign --yes --key "$COSIGN_KEY" "${SIGN_OFFLINE[@]}" "${COSIGN_REG[@]}" "$image_ref"
  run "${COSIGN_ENV[@]}" "$COSIGN" attest --yes --key "$COSIGN_KEY" "${SIGN_OFFLINE[@]}" "${COSIGN_REG[@]}" \
    --type cyclonedx --predicate "$SBOM" "$image_ref"

  info "chart oci://$CHART_REPO/regcred --version $VERSION"
  show "$HELM" push "$CHART_TGZ" "oci://$CHART_REPO" "${HELM_REG[@]}"
  if ((DRY)); then
    CHART_DIGEST="sha256:<chart-digest>"
  else
    helm_out=$("$HELM" push "$CHART_TGZ" "oci://$CHART_REPO" "${HELM_REG[@]}" 2>&1) || die "helm push failed: $helm_out"
    printf '%s\n' "$helm_out" | sed 's/^/    /' >&2
    CHART_DIGEST=$(sed -n 's/^Digest: //p' <<<"$helm_out")
    [[ "$CHART_DIGEST" == sha256:* ]] || die "helm push printed no digest"
  fi
  chart_ref="$CHART_REPO/regcred@$CHART_DIGEST"
  run "${COSIGN_ENV[@]}" "$COSIGN" sign --yes --key "$COSIGN_KEY" "${SIGN_OFFLINE[@]}" "${COSIGN_REG[@]}" "$chart_ref"

  step "verifying what the registry serves with $OUT/cosign.pub"
  verify=("${COSIGN_ENV[@]}" "$COSIGN" verify --key "$OUT/cosign.pub" "${VERIFY_TLOG[@]}" "${COSIGN_REG[@]}")
  run "${verify[@]}" --output text "$IMAGE_REPO:$VERSION" >/dev/null
  run "${verify[@]}" --output text "$CHART_REPO/regcred:$VERSION" >/dev/null
  run "${COSIGN_ENV[@]}" "$COSIGN" verify-attestation --key "$OUT/cosign.pub" "${VERIFY_TLOG[@]}" \
    "${COSIGN_REG[@]}" --type cyclonedx --output text "$IMAGE_REPO:$VERSION" >/dev/null
  note "write the published references to $OUT/published.txt"
  ((DRY)) || printf '%s\n' "image $image_ref" "chart $chart_ref" >"$OUT/published.txt"
fi

step "checksums ($OUT/SHA256SUMS)"
note "cd $OUT && sha256sum <every file but SHA256SUMS*, image/ included> >SHA256SUMS"
if ! ((DRY)); then
  (cd "$OUT" && find . -type f ! -name 'SHA256SUMS*' -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum >SHA256SUMS)
fi
sign_blob "$OUT/SHA256SUMS" "$OUT/SHA256SUMS.sigstore.json"
# cosign writes its files 0600; a release is public.
run chmod -R a+rX "$OUT"

step "done"
((DRY)) && info "dry run: nothing was built, signed, written or pushed"
pub="$OUT/cosign.pub"
cat >&2 <<EOF
    Release $VERSION ($revision) in $OUT.
    Check it with the public key (signatures are not in a transparency log, hence --insecure-ignore-tlog):
      cosign verify-blob --key $pub --insecure-ignore-tlog --bundle $OUT/SHA256SUMS.sigstore.json $OUT/SHA256SUMS
      (cd $OUT && sha256sum -c SHA256SUMS)
      cosign verify-blob --key $pub --insecure-ignore-tlog --bundle $CHART_TGZ.sigstore.json $CHART_TGZ
      cosign verify-blob-attestation --key $pub --insecure-ignore-tlog --type cyclonedx --bundle $OUT/image-sbom.intoto.sigstore.json $MANIFEST_BLOB
EOF
if [[ -n "$REGISTRY" ]]; then
  flags="${COSIGN_REG[*]:+ ${COSIGN_REG[*]}}"
  helm_flags=""
  truthy "$PLAIN_HTTP" && helm_flags=" --plain-http"
  cat >&2 <<EOF
      cosign verify --key $pub --insecure-ignore-tlog$flags $IMAGE_REPO:$VERSION
      cosign verify --key $pub --insecure-ignore-tlog$flags $CHART_REPO/regcred:$VERSION
      cosign verify-attestation --key $pub --insecure-ignore-tlog$flags --type cyclonedx $IMAGE_REPO:$VERSION
      helm show chart oci://$CHART_REPO/regcred --version $VERSION$helm_flags
EOF
fi
cat >&2 <<EOF
    Record the release: add this line to $RELEASES and commit it, with the tag v$VERSION:
      $VERSION $revision $(date -u +%Y-%m-%d)
EOF
