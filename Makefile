# regcred developer commands. `make test` is the one CI runs (.ci/run).
CARGO ?= cargo

.PHONY: test lint unit crds deps build

## Everything CI checks: formatting, clippy, and the whole test suite against
## a real control plane (installing and building what it needs first).
test: deps lint
	$(CARGO) test --workspace --all-targets

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
