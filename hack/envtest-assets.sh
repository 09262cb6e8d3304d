#!/usr/bin/env bash
# Prints a directory holding kube-apiserver, etcd, kubectl,
# kube-controller-manager, and, for the real node, kubelet and kube-scheduler,
# building whatever is missing from their Go modules.
#
# - REGCRED_K8S_VERSION picks the release (default: K8S_DEFAULT in
#   hack/versions.env); each version has its own cache directory.
# - If KUBEBUILDER_ASSETS is set, binaries found there are used as they are;
#   only the missing ones are built.
# - Builds go into a cache outside the repo, keyed by version
#   ($REGCRED_CACHE, default ~/.cache/regcred), and are reused on the next run.
#
# k8s.io/kubernetes cannot be `go install`ed directly (its go.mod replaces the
# staging modules with local paths), so a small wrapper module requires it and
# replaces every staging module with its published v0.N.P version, read from
# that release's own go.mod.
set -euo pipefail

# shellcheck source=versions.env
source "$(dirname "${BASH_SOURCE[0]}")/versions.env"
K8S_VERSION="${REGCRED_K8S_VERSION:-$K8S_DEFAULT}"
CACHE_ROOT="${REGCRED_CACHE:-$HOME/.cache/regcred}"
OUT="$CACHE_ROOT/envtest/v$K8S_VERSION"
BINARIES=(kube-apiserver etcd kubectl kube-controller-manager kubelet kube-scheduler)
# Bump when the way the binaries are built changes, to rebuild cached ones.
RECIPE=2

log() { echo "envtest-assets: $*" >&2; }

command -v go >/dev/null 2>&1 || {
  log "Go is required to build the control-plane binaries (install it from your distribution, e.g. 'apt-get install golang')"
  exit 1
}

mkdir -p "$OUT"
if [[ "$(cat "$OUT/.recipe" 2>/dev/null)" != "$RECIPE" ]]; then
  rm -f "${BINARIES[@]/#/$OUT/}"
fi
missing=()
for b in "${BINARIES[@]}"; do
  if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/$b" ]]; then
    # Use the user's binary; link it so that one directory holds them all.
    if [[ "$(readlink -f "$KUBEBUILDER_ASSETS/$b")" != "$(readlink -f "$OUT/$b" 2>/dev/null || true)" ]]; then
      ln -sf "$(readlink -f "$KUBEBUILDER_ASSETS/$b")" "$OUT/$b"
    fi
  elif [[ ! -x "$OUT/$b" ]]; then
    missing+=("$b")
  fi
done

if [[ -n "${KUBEBUILDER_ASSETS:-}" && ${#missing[@]} -eq 0 ]]; then
  all_there=1
  for b in "${BINARIES[@]}"; do [[ -x "$KUBEBUILDER_ASSETS/$b" ]] || all_there=0; done
  if [[ $all_there == 1 ]]; then
    echo "$KUBEBUILDER_ASSETS"
    exit 0
  fi
fi

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "$OUT"
  exit 0
fi

export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath -buildvcs=false" GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
WORK="$CACHE_ROOT/envtest/build-v$K8S_VERSION"
mkdir -p "$WORK"

kmod_json=$(cd "$WORK" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION")
kmod=$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' <<<"$kmod_json")
[[ -f "$kmod" ]] || { log "could not download k8s.io/kubernetes@v$K8S_VERSION: $kmod_json"; exit 1; }
minor="${K8S_VERSION#*.}"; minor="${minor%%.*}"; patch="${K8S_VERSION##*.}"
staging_version="v0.$minor.$patch"
etcd_version=$(awk '$1=="go.etcd.io/etcd/server/v3" {print $2}' "$kmod")
[[ -n "$etcd_version" ]] || etcd_version=$(awk '$1=="go.etcd.io/etcd/client/v3" {print $2}' "$kmod")
go_line=$(awk '$1=="go" {print $2; exit}' "$kmod")

# Stamp the release version, as the upstream build does.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

build_k8s() {
  local dir="$WORK/kubernetes"
  mkdir -p "$dir"
  if [[ ! -f "$dir/go.mod" ]]; then
    {
      echo "module regcred.dev/envtest-kubernetes"
      echo
      echo "go $go_line"
      echo
      echo "require k8s.io/kubernetes v$K8S_VERSION"
      echo
      echo "replace ("
      sed -n '/^replace (/,/^)/p' "$kmod" | awk '$1 ~ /^k8s.io\// && $2=="=>" {print "\t" $1 " => " $1 " '"$staging_version"'"}'
      echo ")"
    } >"$dir/go.mod"
  fi
  # Every command the wrapper builds is imported here, so that `go mod tidy`
  # records its dependencies; a wrapper made by an older recipe is tidied again.
  local tools
  tools=$(
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for b in kube-apiserver kube-controller-manager kubectl kubelet kube-scheduler; do
      printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$b"
    done
    printf ')\n'
  )
  if [[ "$(cat "$dir/tools.go" 2>/dev/null)" != "$tools" ]]; then
    printf '%s\n' "$tools" >"$dir/tools.go"
    (cd "$dir" && go mod tidy -e >&2)
  fi
  local b
  for b in "$@"; do
    log "building $b v$K8S_VERSION (takes minutes on a cold cache)"
    (cd "$dir" && go build -ldflags "$ldflags" -o "$OUT/$b" "k8s.io/kubernetes/cmd/$b" >&2)
  done
}

build_etcd() {
  local dir="$WORK/etcd"
  mkdir -p "$dir"
  if [[ ! -f "$dir/go.mod" ]]; then
    cat >"$dir/main.go" <<'GO'
// Command etcd is etcd's own server entry point, built from its Go module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    printf 'module regcred.dev/envtest-etcd\n\ngo %s\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$go_line" "$etcd_version" >"$dir/go.mod"
    (cd "$dir" && go mod tidy -e >&2)
  fi
  log "building etcd $etcd_version"
  (cd "$dir" && go build -ldflags "-s -w" -o "$OUT/etcd" . >&2)
}

k8s_missing=()
for b in "${missing[@]}"; do
  case "$b" in
    etcd) build_etcd ;;
    *) k8s_missing+=("$b") ;;
  esac
done
if [[ ${#k8s_missing[@]} -gt 0 ]]; then build_k8s "${k8s_missing[@]}"; fi

for b in "${BINARIES[@]}"; do
  [[ -x "$OUT/$b" ]] || { log "$b was not built"; exit 1; }
done
echo "$RECIPE" >"$OUT/.recipe"
echo "$OUT"
