#!/usr/bin/env bash
# Proves hack/release.sh end to end on this machine, offline:
# - a real CNCF Distribution registry (Debian docker-registry) on 127.0.0.1,
#   plain HTTP, htpasswd authentication;
# - a throwaway cosign key pair (and a second one, the wrong key);
# - `hack/release.sh` with the registry, then checks with independent clients:
#   cosign verify / verify-attestation with the right key (pass) and the wrong
#   one (fail), the SBOM inside the attestation, `helm show chart` / `helm pull`
#   over oci://, `skopeo inspect`, what the registry stores for the
#   signatures (no referrers API: the referrers tag), the files in OUT
#   (sha256sum -c, verify-blob, a tampered chart refused);
# - a dry run, which must change nothing, and a release without a registry.
# The release runs with a dead HTTP(S) proxy (loopback is never proxied) and
# its own TUF_ROOT, and, when strace is installed, under strace: any connection
# that is not to loopback fails the test.
#
#   hack/release-selftest.sh            (CARGO_TARGET_DIR as for the build)
#   KEEP=1 hack/release-selftest.sh     keeps the temporary directory
# Ends with "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '\n### %s\n' "$*" >&2; }
passed=0
failed=0
# check NAME CMD...: runs CMD, which must succeed.
check() {
  local name=$1; shift
  if "$@" >"$T/check.out" 2>&1; then
    passed=$((passed + 1)); echo "PASS $name"
  else
    failed=$((failed + 1)); echo "FAIL $name"; sed 's/^/     /' "$T/check.out" | tail -15
  fi
}
# refuse NAME CMD...: runs CMD, which must fail.
refuse() {
  local name=$1; shift
  if "$@" >"$T/check.out" 2>&1; then
    failed=$((failed + 1)); echo "FAIL $name (succeeded)"; sed 's/^/     /' "$T/check.out" | tail -15
  else
    local why
    why=$(grep -iE 'error|fail|invalid|unauthorized|denied' "$T/check.out" | tail -1)
    passed=$((passed + 1)); echo "PASS $name (refused: $(cut -c1-160 <<<"${why:-$(tail -1 "$T/check.out")}"))"
  fi
}

for tool in docker-registry:docker-registry skopeo:skopeo htpasswd:apache2-utils curl:curl python3:python3; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || [[ -x "/usr/bin/${tool%%:*}" ]] ||
    { echo "release-selftest: ${tool%%:*} is missing (apt-get install ${tool#*:})" >&2; exit 1; }
done

T=$(mktemp -d "${TMPDIR:-/tmp}/regcred-release-selftest.XXXXXX")
registry_pid=""
cleanup() {
  [[ -z "$registry_pid" ]] || { kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; }
  if [[ -n "${KEEP:-}" ]]; then echo "kept $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT

VERSION=$(awk '/^\[/{pkg = ($0 == "[package]")} pkg && $1 == "version" {gsub(/"/, "", $3); print $3; exit}' Cargo.toml)
# Test-only secrets: never printed.
REG_USER=release-bot
REG_PASS="selftest-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
COSIGN_PASSWORD="key-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
export COSIGN_PASSWORD

log "tools (built outside the offline part)"
TOOLS=$(hack/release-tools.sh)
HELM="$(hack/helm-tools.sh)/helm"
COSIGN="$TOOLS/cosign"
# Every crate the release builds, fetched now, so that the release itself
# needs no network.
${CARGO:-cargo} fetch --locked --target "$(rustc -vV | sed -n 's/^host: //p')" >/dev/null

log "registry: docker-registry $(docker-registry --version | awk '{print $3}') on loopback"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REG="127.0.0.1:$port"
mkdir -p "$T/registry/data"
htpasswd -Bbn "$REG_USER" "$REG_PASS" >"$T/registry/htpasswd" 2>/dev/null
cat >"$T/registry/config.yml" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $T/registry/data
http:
  addr: $REG
auth:
  htpasswd:
    realm: regcred-release-selftest
    path: $T/registry/htpasswd
EOF
docker-registry serve "$T/registry/config.yml" >"$T/registry/log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
  [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$REG/v2/")" == 401 ]] && break
  sleep 0.1
done
[[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$REG/v2/")" == 401 ]] || { cat "$T/registry/log"; exit 1; }
# One auth file for the checking clients (mode 0600, in $T).
(umask 077 && printf '%s\n' "$REG_PASS" "$COSIGN_PASSWORD" >"$T/secrets")
(umask 077 && printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$REG" "$(printf '%s:%s' "$REG_USER" "$REG_PASS" | base64 -w0)" >"$T/auth.json")
mkdir -p "$T/docker" && cp "$T/auth.json" "$T/docker/config.json"
curl_reg() { curl -s -K - "$@" <<<"user = \"$REG_USER:$REG_PASS\""; }

log "keys"
(cd "$T" && "$COSIGN" generate-key-pair >/dev/null 2>&1 && COSIGN_PASSWORD=other "$COSIGN" generate-key-pair --output-key-prefix wrong >/dev/null 2>&1)

# The changelog and release list the release is checked against: copies, so
# that the self-test works whatever state CHANGELOG.md and releases.txt are in.
printf '# Changelog\n\n## [%s] - %s\n\n### Added\n- The self-test release.\n' "$VERSION" "$(date -u +%F)" >"$T/CHANGELOG.md"
: >"$T/releases.txt"
release_env=(
  env CHANGELOG="$T/CHANGELOG.md" RELEASES="$T/releases.txt" ALLOW_DIRTY=1 COSIGN_KEY="$T/cosign.key"
  HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 http_proxy=http://127.0.0.1:9
  NO_PROXY= no_proxy= TUF_ROOT="$T/tuf"
)
tracer=()
if command -v strace >/dev/null 2>&1; then
  tracer=(strace -f -qq -e trace=connect -o "$T/connect.trace")
else
  echo "strace is not installed: the connection check is skipped (apt-get install strace)" >&2
fi

log "dry run"
catalog() { curl_reg "http://$REG/v2/_catalog"; }
before=$(catalog)
check "dry run succeeds" "${release_env[@]}" REGISTRY="$REG/regcred" REGISTRY_PLAIN_HTTP=1 \
  REGISTRY_USERNAME="$REG_USER" REGISTRY_PASSWORD="$REG_PASS" OUT="$T/dry" DRY_RUN=1 hack/release.sh --version "$VERSION"
cp "$T/check.out" "$T/dry.log"
check "dry run writes nothing" test ! -e "$T/dry"
check "dry run pushes nothing" test "$(catalog)" == "$before"
check "dry run shows the commands" grep -q "^+ .*cosign sign --yes --key $T/cosign.key .*$REG/regcred/regcred@sha256:<image-digest>" "$T/dry.log"

log "release to $REG/regcred (image $REG/regcred/regcred, chart oci://$REG/regcred/charts/regcred)"
OUT="$T/out"
start=$SECONDS
if "${tracer[@]}" "${release_env[@]}" REGISTRY="$REG/regcred" REGISTRY_PLAIN_HTTP=1 \
  REGISTRY_USERNAME="$REG_USER" REGISTRY_PASSWORD="$REG_PASS" OUT="$OUT" hack/release.sh --version "$VERSION" >"$T/release.log" 2>&1; then
  passed=$((passed + 1)); echo "PASS release to the registry ($((SECONDS - start)) s)"
else
  failed=$((failed + 1)); echo "FAIL release to the registry"; tail -30 "$T/release.log"
fi
IMAGE="$REG/regcred/regcred"
CHART="$REG/regcred/charts/regcred"
cosign_reg=(env DOCKER_CONFIG="$T/docker" HTTPS_PROXY=http://127.0.0.1:9 TUF_ROOT="$T/tuf" "$COSIGN")

log "offline"
check "no TUF metadata was fetched (TUF_ROOT untouched)" test ! -e "$T/tuf"
check "no cosign warning about TUF or Sigstore's services" bash -c "! grep -E '\\bTUF\\b|sigstore\\.dev' '$T/release.log'"
if ((${#tracer[@]})); then
  # connect() to anything but loopback (AF_UNIX sockets are local).
  check "every connection went to loopback" bash -c "! grep -E 'AF_INET6?' '$T/connect.trace' | grep -vE 'inet_addr\\(\"127\\.|inet_pton\\(AF_INET6, \"::1\"|sin6?_port=htons\\(0\\)'"
  info_conn=$(grep -cE 'AF_INET6?' "$T/connect.trace" || true)
  echo "     ($info_conn inet connect() calls traced)"
fi
check "the passwords are in no log" bash -c "! grep -qF -f '$T/secrets' '$T/release.log' '$T/dry.log' '$T/registry/log'"
check "no private key in OUT" bash -c "! grep -rl 'PRIVATE KEY' '$OUT'"

log "signatures in the registry"
check "cosign verify image (right key)" "${cosign_reg[@]}" verify --key "$OUT/cosign.pub" --insecure-ignore-tlog --allow-http-registry "$IMAGE:$VERSION"
refuse "cosign verify image (wrong key)" "${cosign_reg[@]}" verify --key "$T/wrong.pub" --insecure-ignore-tlog --allow-http-registry "$IMAGE:$VERSION"
check "cosign verify chart (right key)" "${cosign_reg[@]}" verify --key "$OUT/cosign.pub" --insecure-ignore-tlog --allow-http-registry "$CHART:$VERSION"
refuse "cosign verify chart (wrong key)" "${cosign_reg[@]}" verify --key "$T/wrong.pub" --insecure-ignore-tlog --allow-http-registry "$CHART:$VERSION"
signed_digest() {
  "${cosign_reg[@]}" verify --key "$OUT/cosign.pub" --insecure-ignore-tlog --allow-http-registry "$IMAGE:$VERSION" 2>/dev/null |
    grep -q "\"docker-manifest-digest\":\"$(cat "$OUT/image-digest.txt")\""
}
check "the image signature names the pushed digest" signed_digest
check "cosign verify-attestation --type cyclonedx (right key)" "${cosign_reg[@]}" verify-attestation --key "$OUT/cosign.pub" --insecure-ignore-tlog --allow-http-registry --type cyclonedx "$IMAGE:$VERSION"
refuse "cosign verify-attestation (wrong key)" "${cosign_reg[@]}" verify-attestation --key "$T/wrong.pub" --insecure-ignore-tlog --allow-http-registry --type cyclonedx "$IMAGE:$VERSION"
"${cosign_reg[@]}" verify-attestation --key "$OUT/cosign.pub" --insecure-ignore-tlog --allow-http-registry --type cyclonedx "$IMAGE:$VERSION" 2>/dev/null >"$T/att.json" || true
sbom_check() {
  python3 - "$T/att.json" "$VERSION" "$(cat "$OUT/image-digest.txt")" <<'PY'
import base64, json, sys
stmt = json.loads(base64.b64decode(json.loads(open(sys.argv[1]).readline())["payload"]))
assert stmt["predicateType"] == "https://cyclonedx.org/bom", stmt["predicateType"]
assert stmt["subject"][0]["digest"]["sha256"] == sys.argv[3].split(":")[1], stmt["subject"]
bom = stmt["predicate"]
names = {c["name"] for c in bom["components"]}
assert bom["metadata"]["component"]["name"] == "regcred" and bom["metadata"]["component"]["version"] == sys.argv[2]
assert {"kube", "k8s-openapi", "tokio", "serde"} <= names, names
print(f"SBOM from the registry: regcred {sys.argv[2]}, {len(names)} crates, e.g. kube, k8s-openapi, tokio")
PY
}
check "the registry's SBOM names regcred and its crates" sbom_check
sed -n 1p "$T/check.out" | sed 's/^/     /'
download_attestation() {
  "${cosign_reg[@]}" download attestation --allow-http-registry --predicate-type https://cyclonedx.org/bom "$IMAGE:$VERSION" | grep -q '"payload"'
}
check "cosign download attestation" download_attestation

log "what Distribution 2.8 stores"
digest=$(cat "$OUT/image-digest.txt")
check "no referrers API (404)" test "$(curl_reg -o /dev/null -w '%{http_code}' "http://$REG/v2/regcred/regcred/referrers/$digest")" == 404
check "the referrers tag sha256-<digest> exists" bash -c "curl -s -K - 'http://$REG/v2/regcred/regcred/tags/list' <<<'user = \"$REG_USER:$REG_PASS\"' | grep -q 'sha256-${digest#sha256:}'"
curl_reg -H 'Accept: application/vnd.oci.image.index.v1+json' "http://$REG/v2/regcred/regcred/manifests/sha256-${digest#sha256:}" >"$T/referrers.json"
check "it indexes two sigstore bundles (signature, attestation)" python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))["manifests"]
assert len(m) == 2 and all(d["artifactType"] == "application/vnd.dev.sigstore.bundle.v0.3+json" for d in m), m' "$T/referrers.json"

log "helm and skopeo"
check "helm show chart oci:// --plain-http" bash -c "'$HELM' show chart 'oci://$CHART' --version '$VERSION' --plain-http --registry-config '$T/auth.json' | grep -qx 'version: $VERSION'"
mkdir -p "$T/pulled"
check "helm pull oci:// --plain-http" "$HELM" pull "oci://$CHART" --version "$VERSION" --plain-http --registry-config "$T/auth.json" --destination "$T/pulled"
check "the pulled chart is the signed one" cmp "$T/pulled/regcred-$VERSION.tgz" "$OUT/regcred-$VERSION.tgz"
check "the chart's default image is the pushed one" bash -c "'$HELM' show values '$T/pulled/regcred-$VERSION.tgz' | grep -qx '  repository: $IMAGE'"
check "skopeo inspect of the image" bash -c "skopeo inspect --tls-verify=false --authfile '$T/auth.json' 'docker://$IMAGE:$VERSION' >'$T/inspect.json' && python3 -c '
import json, sys
i = json.load(open(sys.argv[1]))
assert i[\"Digest\"] == sys.argv[2], i[\"Digest\"]
assert i[\"Labels\"][\"org.opencontainers.image.version\"] == sys.argv[3], i[\"Labels\"]
print(i[\"Digest\"], i[\"Labels\"][\"org.opencontainers.image.version\"])' '$T/inspect.json' '$digest' '$VERSION'"

log "files in OUT"
check "sha256sum -c SHA256SUMS" bash -c "cd '$OUT' && sha256sum --quiet -c SHA256SUMS"
check "verify-blob SHA256SUMS" "$COSIGN" verify-blob --key "$OUT/cosign.pub" --insecure-ignore-tlog --bundle "$OUT/SHA256SUMS.sigstore.json" "$OUT/SHA256SUMS"
check "verify-blob chart" "$COSIGN" verify-blob --key "$OUT/cosign.pub" --insecure-ignore-tlog --bundle "$OUT/regcred-$VERSION.tgz.sigstore.json" "$OUT/regcred-$VERSION.tgz"
check "verify-blob image manifest" "$COSIGN" verify-blob --key "$OUT/cosign.pub" --insecure-ignore-tlog --bundle "$OUT/image-manifest.sigstore.json" "$OUT/image/blobs/sha256/${digest#sha256:}"
check "verify-blob-attestation SBOM about the image" "$COSIGN" verify-blob-attestation --key "$OUT/cosign.pub" --insecure-ignore-tlog --type cyclonedx --bundle "$OUT/image-sbom.intoto.sigstore.json" "$OUT/image/blobs/sha256/${digest#sha256:}"
cp "$OUT/regcred-$VERSION.tgz" "$T/tampered.tgz" && printf 'x' >>"$T/tampered.tgz"
refuse "verify-blob of a tampered chart" "$COSIGN" verify-blob --key "$OUT/cosign.pub" --insecure-ignore-tlog --bundle "$OUT/regcred-$VERSION.tgz.sigstore.json" "$T/tampered.tgz"
refuse "verify-blob with the wrong key" "$COSIGN" verify-blob --key "$T/wrong.pub" --insecure-ignore-tlog --bundle "$OUT/SHA256SUMS.sigstore.json" "$OUT/SHA256SUMS"

log "credentials"
wrong_password() {
  ! "${release_env[@]}" REGISTRY="$REG/regcred" REGISTRY_PLAIN_HTTP=1 REGISTRY_USERNAME="$REG_USER" \
    REGISTRY_PASSWORD=not-the-password OUT="$T/badpass" hack/release.sh --version "$VERSION" >"$T/badpass.log" 2>&1 &&
    grep -qi 'unauthorized' "$T/badpass.log" && grep unauthorized "$T/badpass.log" | tail -1 | cut -c1-160
}
check "a release with a wrong registry password fails at the push (401)" wrong_password
sed -n 1p "$T/check.out" | sed 's/^/     /'
check "a release with REGISTRY_AUTH_FILE" "${release_env[@]}" REGISTRY="$REG/authfile" REGISTRY_PLAIN_HTTP=1 \
  REGISTRY_AUTH_FILE="$T/auth.json" OUT="$T/authfile" hack/release.sh --version "$VERSION"
check "its image verifies" "${cosign_reg[@]}" verify --key "$T/authfile/cosign.pub" --insecure-ignore-tlog --allow-http-registry "$REG/authfile/regcred:$VERSION"

log "release without a registry"
check "release into a directory" "${release_env[@]}" OUT="$T/dir" hack/release.sh --version "$VERSION"
default_repo=$(grep -m1 '^  repository:' charts/regcred/values.yaml)
check "its chart keeps the repository's default image" bash -c "'$HELM' show values '$T/dir/regcred-$VERSION.tgz' | grep -qxF '$default_repo'"
check "its checksums and signature hold" bash -c "cd '$T/dir' && sha256sum --quiet -c SHA256SUMS && '$COSIGN' verify-blob --key cosign.pub --insecure-ignore-tlog --bundle SHA256SUMS.sigstore.json SHA256SUMS"
check "the same image digest as the pushed release" cmp "$T/dir/image-digest.txt" "$OUT/image-digest.txt"
refuse "a second release into the same OUT" "${release_env[@]}" OUT="$T/dir" hack/release.sh --version "$VERSION"

echo
echo "release log: $(grep -c '^+ ' "$T/release.log") commands; dry run: $(grep -c '^+ ' "$T/dry.log") commands shown"
echo "$passed passed, $failed failed"
((failed == 0))
