# regcred developer commands. `make test` is the one CI runs (.ci/run).
CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
# Operator logs and the secret values tests used, for the leak check.
TEST_LOG_DIR := $(TARGET_DIR)/test-logs

.PHONY: test lint crds deps build demo image

## Everything CI checks: formatting, clippy, and the whole test suite against
## a real control plane (installing and building what it needs first).
test: deps lint
	rm -rf $(TEST_LOG_DIR) && mkdir -p $(TEST_LOG_DIR)
	REGCRED_TEST_LOG_DIR=$(abspath $(TEST_LOG_DIR)) $(CARGO) test --workspace --all-targets
	REGCRED_TEST_LOG_DIR=$(abspath $(TEST_LOG_DIR)) $(MAKE) test-matrix-ci
	hack/check-leaks.sh $(TEST_LOG_DIR)
	$(MAKE) demo ARGS=--once
	$(MAKE) bench-smoke

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

deps:
	hack/install-test-deps.sh

build:
	$(CARGO) build --release

## The container image, with no container engine (docs/install.md): the
## release binary, the shared libraries it loads, CA certificates and a
## non-root user, as an OCI layout in $(TARGET_DIR)/image. PUSH=HOST/REPO:TAG
## pushes it with skopeo; SKOPEO_FLAGS adds flags such as
## --dest-tls-verify=false or --dest-creds=USER:PASS.
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE_SOURCE ?= $(shell git config --get remote.origin.url 2>/dev/null)
PUSH ?=
SKOPEO_FLAGS ?=
image:
	$(CARGO) build --release --bin regcred
	$(CARGO) build --quiet -p regcred-testenv --bin regcred-image
	$(TARGET_DIR)/debug/regcred-image --binary $(TARGET_DIR)/release/regcred --out $(TARGET_DIR)/image \
		--tag $(IMAGE_TAG) --source "$(IMAGE_SOURCE)" --revision "$(shell git rev-parse HEAD 2>/dev/null)" \
		--push "$(PUSH)" $(SKOPEO_FLAGS)

## A signed release (docs/release.md): `make release VERSION=X.Y.Z` checks
## that Cargo.toml, the chart and the image tag say VERSION and CHANGELOG.md
## has its section, builds the image, an SBOM of its crates and the chart,
## signs them with cosign (COSIGN_KEY; COSIGN_PASSWORD in the environment)
## and pushes them to REGISTRY=HOST[:PORT][/PATH] (image REGISTRY/regcred,
## chart oci://REGISTRY/charts/regcred), or, without REGISTRY, writes them
## to OUT (default $(TARGET_DIR)/dist/regcred-VERSION). DRY_RUN=1 prints
## the commands and runs none. REGISTRY_PLAIN_HTTP=1 or REGISTRY_INSECURE=1
## for a test registry; credentials from REGISTRY_AUTH_FILE, or
## REGISTRY_USERNAME with REGISTRY_PASSWORD in the environment (never on the
## command line). `make release-selftest` proves it against a local registry.
.PHONY: release release-selftest
VERSION ?=
REGISTRY ?=
OUT ?=
DRY_RUN ?=
release:
	VERSION="$(VERSION)" REGISTRY="$(REGISTRY)" OUT="$(OUT)" DRY_RUN="$(DRY_RUN)" \
		IMAGE_TAG="$(IMAGE_TAG)" IMAGE_SOURCE="$(IMAGE_SOURCE)" CARGO="$(CARGO)" hack/release.sh

release-selftest:
	CARGO="$(CARGO)" hack/release-selftest.sh

## Regenerate crds/ from the Rust types.
crds:
	$(CARGO) run --quiet -- crd --output-dir crds

## See regcred work on this machine: a local control plane and registry, a
## ClusterRegistryCredential, the operator, and a pull with the written Secret.
## `make demo ARGS=--once` exits after the last step.
demo: deps
	$(CARGO) build --quiet --bin regcred
	$(CARGO) build --quiet -p regcred-testenv --bin regcred-demo
	$(TARGET_DIR)/debug/regcred-demo --regcred $(TARGET_DIR)/debug/regcred $(ARGS)

## Copy crds/ into the Helm chart (charts/regcred/files/crds), which cannot
## read files outside its directory. Run after `make crds`; a test fails when
## the copies drift.
.PHONY: chart-crds
chart-crds:
	rm -f charts/regcred/files/crds/*.yaml
	cp crds/*.yaml charts/regcred/files/crds/

## The support matrix (docs/compatibility.md): the control-plane suites
## (reconcile, rotation, tenancy, admission, faults) and the real-node suites
## (node, admission_node, delivery) on every supported Kubernetes minor
## (hack/versions.env), then a table of version x suite. VERSIONS="1.34.4 1.37.2"
## or SUITES="admission delivery" narrow it. Long (about 10 min per release,
## plus a cold build of each release's binaries): not part of `make test`.
.PHONY: test-matrix test-matrix-ci
test-matrix: deps
	hack/test-matrix.sh

## The part of the matrix `make test` runs (docs/compatibility.md): the
## reconcile and admission suites on K8S_CI_VERSIONS (hack/versions.env):
## the oldest minor and the one whose injection goes through v1beta1.
test-matrix-ci:
	. hack/versions.env && VERSIONS="$$K8S_CI_VERSIONS" SUITES="reconcile admission" hack/test-matrix.sh

## The scale benchmark (docs/benchmarks.md): a real control plane, 2,000
## namespaces, 3 ClusterRegistryCredentials, release builds; prints a table.
## Flags through ARGS, e.g. `make bench ARGS="--namespaces 5000"`; the other
## scenarios: `make bench ARGS="--scenario breadth"` (10,000 namespaces),
## `make bench ARGS="--scenario tenants"` (2,000 tenants with a credential each)
## and `make bench ARGS="--scenario fleet"` (a hub writing into 4 spoke control
## planes of 1,000 namespaces each, one spoke killed and restarted).
.PHONY: bench bench-smoke
bench: deps
	$(CARGO) build --release --bin regcred
	$(CARGO) build --release -p regcred-testenv --bin regcred-bench
	$(TARGET_DIR)/release/regcred-bench --regcred $(TARGET_DIR)/release/regcred $(ARGS)

## The benchmark reduced to 200 namespaces (debug builds), run by `make test`:
## fails if regcred does not converge, serve new namespaces and
## ServiceAccounts, rotate with one provider call or stay idle; no timing
## assertions. Then the tenants scenario reduced to 100 tenants with 30 s
## tokens: fails on extra provider calls or writes, writes to objects that
## should not change, a second over the provider call cap, or anything left
## behind when the credentials are deleted. Then the fleet scenario reduced
## to 2 spokes of 50 namespaces: fails on more than one provider call per
## mint or rotation, an idle write, no convergence, or a killed spoke not
## converging when it is back.
bench-smoke: deps
	$(CARGO) build --quiet --bin regcred
	$(CARGO) build --quiet -p regcred-testenv --bin regcred-bench
	$(TARGET_DIR)/debug/regcred-bench --regcred $(TARGET_DIR)/debug/regcred \
		--namespaces 200 --rounds 2 --samples 20 --idle-seconds 10 --lifetime-seconds 45
	$(TARGET_DIR)/debug/regcred-bench --regcred $(TARGET_DIR)/debug/regcred --scenario tenants \
		--namespaces 100 --samples 10 --steady-seconds 45 --lifetime-seconds 30
	$(TARGET_DIR)/debug/regcred-bench --regcred $(TARGET_DIR)/debug/regcred --scenario fleet \
		--spokes 2 --namespaces 50 --rounds 1 --samples 10 --idle-seconds 10 --down-seconds 3
