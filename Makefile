# regcred developer commands. `make test` is the one CI runs (.ci/run).
CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
# Operator logs and the secret values tests used, for the leak check.
TEST_LOG_DIR := $(TARGET_DIR)/test-logs

.PHONY: test lint crds deps build demo

## Everything CI checks: formatting, clippy, and the whole test suite against
## a real control plane (installing and building what it needs first).
test: deps lint
	rm -rf $(TEST_LOG_DIR) && mkdir -p $(TEST_LOG_DIR)
	REGCRED_TEST_LOG_DIR=$(abspath $(TEST_LOG_DIR)) $(CARGO) test --workspace --all-targets
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

## The scale benchmark (docs/benchmarks.md): a real control plane, 2,000
## namespaces, 3 ClusterRegistryCredentials, release builds; prints a table.
## Flags through ARGS, e.g. `make bench ARGS="--namespaces 5000"`.
.PHONY: bench bench-smoke
bench: deps
	$(CARGO) build --release --bin regcred
	$(CARGO) build --release -p regcred-testenv --bin regcred-bench
	$(TARGET_DIR)/release/regcred-bench --regcred $(TARGET_DIR)/release/regcred $(ARGS)

## The benchmark reduced to 200 namespaces (debug builds), run by `make test`:
## fails if regcred does not converge, serve new namespaces and
## ServiceAccounts, rotate with one provider call or stay idle; no timing
## assertions.
bench-smoke: deps
	$(CARGO) build --quiet --bin regcred
	$(CARGO) build --quiet -p regcred-testenv --bin regcred-bench
	$(TARGET_DIR)/debug/regcred-bench --regcred $(TARGET_DIR)/debug/regcred \
		--namespaces 200 --rounds 2 --samples 20 --idle-seconds 10 --lifetime-seconds 45
