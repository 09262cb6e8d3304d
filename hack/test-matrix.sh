#!/usr/bin/env bash
# `make test-matrix`: the control-plane and real-node suites on every
# supported Kubernetes minor (K8S_MATRIX in hack/versions.env), then a table
# of version x suite: pass or fail, tests run, time.
#
#   VERSIONS="1.34.4 1.37.2"   only these releases (default: K8S_MATRIX)
#   SUITES="admission delivery" only these suites (default: all below)
#
# Each release's binaries are built by hack/envtest-assets.sh into a cache
# directory of their own (minutes each on a cold cache, reused after). Logs
# go to $CARGO_TARGET_DIR/test-matrix/<version>/<suite>.log and the table to
# $CARGO_TARGET_DIR/test-matrix/results.md. Exits non-zero if a suite failed.
#
# What each minor cannot run, and so does not (docs/compatibility.md):
# - 1.33 serves no MutatingAdmissionPolicy API regcred uses: `admission` runs
#   its AdmissionPolicyUnsupported test only, `admission_node` its tests
#   without injection (recovery included); the kubelet-plugin test leaves out
#   per-Pod identity (tokenAttributes, 1.34+) by itself.
# - 1.34 and 1.35 run injection through `v1beta1`, with the feature gate on
#   (the test control plane does that on those minors).
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=versions.env
source hack/versions.env

VERSIONS="${VERSIONS:-$K8S_MATRIX}"
CONTROL_PLANE_SUITES="reconcile rotation tenancy admission faults"
NODE_SUITES="node admission_node delivery"
SUITES="${SUITES:-$CONTROL_PLANE_SUITES $NODE_SUITES}"
TARGET="${CARGO_TARGET_DIR:-target}"
OUT="$TARGET/test-matrix"
CARGO="${CARGO:-cargo}"
mkdir -p "$OUT"

log() { echo "test-matrix: $*" >&2; }

# The test filter of a suite on a release: empty runs all of it.
filter() {
  local version=$1 suite=$2 minor
  minor=$(cut -d. -f2 <<<"$version")
  case "$suite@$minor" in
    admission@3[0-3]) echo "clusters_without_the_api" ;;
    admission_node@3[0-3]) echo "without_injection with_recovery" ;;
    *) echo "" ;;
  esac
}

log "building the test binaries"
$CARGO test --workspace --no-run --quiet >&2 || { log "the test binaries do not build"; exit 1; }

declare -A result
failed=0
for v in $VERSIONS; do
  mkdir -p "$OUT/$v"
  start=$(date +%s)
  if ! REGCRED_K8S_VERSION="$v" hack/envtest-assets.sh >"$OUT/$v/assets.log" 2>&1; then
    log "Kubernetes $v: building its binaries failed (see $OUT/$v/assets.log)"
    for s in $SUITES; do result["$v/$s"]="fail (no binaries)"; done
    failed=1
    continue
  fi
  log "Kubernetes $v: binaries ready in $(( $(date +%s) - start )) s"
  for s in $SUITES; do
    f=$(filter "$v" "$s")
    log "Kubernetes $v: $s ${f:+(only: $f) }..."
    start=$(date +%s)
    # shellcheck disable=SC2086
    REGCRED_K8S_VERSION="$v" $CARGO test --quiet --test "$s" -- $f >"$OUT/$v/$s.log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    passed=$(sed -n 's/^test result: .* \([0-9]\+\) passed.*/\1/p' "$OUT/$v/$s.log" | tail -1)
    failed_n=$(sed -n 's/^test result: .* \([0-9]\+\) failed.*/\1/p' "$OUT/$v/$s.log" | tail -1)
    if [[ $rc == 0 && "${passed:-0}" -gt 0 ]]; then
      result["$v/$s"]="pass ${passed}${f:+*} ${secs}s"
    else
      result["$v/$s"]="FAIL ${failed_n:-?}/$(( ${passed:-0} + ${failed_n:-0} )) ${secs}s"
      failed=1
    fi
    log "Kubernetes $v: $s: ${result["$v/$s"]}"
  done
done

{
  echo "| Kubernetes | $(sed 's/ / | /g' <<<"$SUITES") |"
  echo "|---|$(for _ in $SUITES; do printf -- '---|'; done)"
  for v in $VERSIONS; do
    row="| $v |"
    for s in $SUITES; do row+=" ${result["$v/$s"]} |"; done
    echo "$row"
  done
  echo
  echo "pass N: N tests passed; * only the tests that minor supports (hack/test-matrix.sh, filter()); times are wall-clock."
  echo "containerd $CONTAINERD on the node; commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%Y-%m-%d)."
} | tee "$OUT/results.md"
exit $failed
