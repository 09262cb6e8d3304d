#!/usr/bin/env bash
# Installs what the test suite needs and the machine lacks:
# - Debian packages: docker-registry (CNCF Distribution), skopeo, apache2-utils (htpasswd),
#   openssl (test CAs); for the real node: runc,
#   containernetworking-plugins (bridge, host-local, loopback) and busybox-static
#   (the test images and the pause image are made from it); faketime (libfaketime,
#   the node clock that lies in tests/hostile.rs); prometheus (promtool and the
#   server tests/alerts.rs runs on 127.0.0.1; the package's own service is kept off);
# - moto[server] from PyPI (the AWS stand-in);
# - the control-plane and node binaries (hack/envtest-assets.sh) and containerd 2
#   (hack/containerd-assets.sh), built from their Go modules and cached under
#   ~/.cache/regcred;
# - the release tools, cosign and cargo-cyclonedx (hack/release-tools.sh), and
#   the previous release built from its recorded commit (hack/previous-release.sh).
# Safe to re-run: it installs nothing that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v docker-registry >/dev/null 2>&1 || [[ -x /usr/bin/docker-registry ]] || need+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
[[ -x /usr/sbin/runc ]] || command -v runc >/dev/null 2>&1 || need+=(runc)
[[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" || need+=(busybox-static)
[[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]] || need+=(faketime)
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || need+=(prometheus)
if [[ ${#need[@]} -gt 0 ]]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: missing ${need[*]} and no apt-get; install them with your package manager" >&2
    exit 1
  fi
  sudo=""
  [[ $(id -u) == 0 ]] || sudo="sudo"
  echo "install-test-deps: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  # Debian's prometheus package enables and starts its own server (maintainer
  # scripts go through invoke-rc.d, which asks policy-rc.d): refuse every
  # service start for this install, unless the machine already has a policy.
  policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
  fi
  installed=0
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || installed=$?
  [[ -z $policy ]] || $sudo rm -f "$policy"
  [[ $installed == 0 ]] || exit "$installed"
  if [[ " ${need[*]} " == *" prometheus "* ]]; then
    # The tests start their own server; the package's must not run or start at boot.
    if [[ -d /run/systemd/system ]]; then
      $sudo systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    else
      $sudo systemctl disable prometheus.service >/dev/null 2>&1 || true
      $sudo update-rc.d prometheus disable >/dev/null 2>&1 || true
      [[ ! -x /etc/init.d/prometheus ]] || $sudo /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
  fi
fi

# moto (AWS stand-in) from PyPI.
if ! command -v moto_server >/dev/null 2>&1; then
  echo "install-test-deps: installing moto[server] from PyPI" >&2
  python3 -m pip install --quiet 'moto[server]' || {
    echo "install-test-deps: pip install 'moto[server]' failed; install python3-pip first" >&2
    exit 1
  }
  hash -r
  command -v moto_server >/dev/null 2>&1 || { echo "install-test-deps: moto_server not on PATH after pip install" >&2; exit 1; }
fi

hack/envtest-assets.sh >/dev/null
hack/containerd-assets.sh >/dev/null
hack/helm-tools.sh >/dev/null  # helm and kubeconform for the chart tests
hack/release-tools.sh >/dev/null  # cosign and cargo-cyclonedx for the release tests
hack/previous-release.sh >/dev/null  # the previous release, for the upgrade tests
