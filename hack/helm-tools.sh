#!/usr/bin/env bash
# Builds the chart tools from their Go modules and prints the directory
# holding them:
#   helm         helm.sh/helm/v3/cmd/helm                 (HELM_VERSION)
#   kubeconform  github.com/yannh/kubeconform/cmd/kubeconform (KUBECONFORM_VERSION)
#
# Each goes into its own versioned directory of the cache outside the repo
# ($REGCRED_CACHE, default ~/.cache/regcred):
#   tools/helm-<version>/helm, tools/kubeconform-<version>/kubeconform
# and is reused afterwards. The printed directory
# (tools/bin-helm-<version>-kubeconform-<version>) holds links to both.
# Nothing is downloaded but Go modules from the module proxy.
set -euo pipefail

HELM_VERSION="${REGCRED_HELM_VERSION:-v3.22.1}"
KUBECONFORM_VERSION="${REGCRED_KUBECONFORM_VERSION:-v0.8.0}"
CACHE_ROOT="${REGCRED_CACHE:-$HOME/.cache/regcred}"
TOOLS="$CACHE_ROOT/tools"
# Bump when the way the tools are built changes, to rebuild cached ones.
RECIPE=1

log() { echo "helm-tools: $*" >&2; }

command -v go >/dev/null 2>&1 || {
  log "Go is required to build helm and kubeconform (install it from your distribution, e.g. 'apt-get install golang')"
  exit 1
}

export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath -buildvcs=false" GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

# built NAME VERSION: whether tools/NAME-VERSION/NAME is there, built by this recipe.
built() {
  [[ -x "$TOOLS/$1-$2/$1" && "$(cat "$TOOLS/$1-$2/.recipe" 2>/dev/null)" == "$RECIPE" ]]
}

# build NAME VERSION PACKAGE LDFLAGS: go install PACKAGE@VERSION (a go build
# of the published module, checked against the checksum database) into
# tools/NAME-VERSION.
build() {
  local name=$1 version=$2 pkg=$3 ldflags=$4
  local dir="$TOOLS/$name-$version"
  mkdir -p "$dir"
  log "building $name $version from its Go module (a minute or two on a cold cache)"
  GOBIN="$dir" go install -ldflags "$ldflags" "$pkg@$version" >&2
  [[ -x "$dir/$name" ]] || { log "$name was not built"; exit 1; }
  echo "$RECIPE" >"$dir/.recipe"
}

helm_ldflags() {
  # Stamp the version as the upstream Makefile does, and helm's default
  # Kubernetes version (.Capabilities.KubeVersion for `helm template` and
  # `helm lint`), which follows its client-go module: v0.N.P means 1.N.
  local flags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.metadata="
  local mod client_go minor pkg
  mod=$(cd "$TOOLS" && go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [[ -f "$mod" ]] || { log "could not download helm.sh/helm/v3@$HELM_VERSION"; exit 1; }
  client_go=$(awk '$1=="k8s.io/client-go" {print $2; exit}' "$mod")
  minor=${client_go#v0.}; minor=${minor%%.*}
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    flags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
  done
  echo "$flags"
}

mkdir -p "$TOOLS"
if ! built helm "$HELM_VERSION"; then
  flags=$(helm_ldflags)
  build helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm "$flags"
fi
if ! built kubeconform "$KUBECONFORM_VERSION"; then
  build kubeconform "$KUBECONFORM_VERSION" github.com/yannh/kubeconform/cmd/kubeconform \
    "-s -w -X main.version=$KUBECONFORM_VERSION"
fi

# One directory with both, for PATH.
BIN="$TOOLS/bin-helm-$HELM_VERSION-kubeconform-$KUBECONFORM_VERSION"
mkdir -p "$BIN"
ln -sf "$TOOLS/helm-$HELM_VERSION/helm" "$BIN/helm"
ln -sf "$TOOLS/kubeconform-$KUBECONFORM_VERSION/kubeconform" "$BIN/kubeconform"
echo "$BIN"
