# The developer interface. `make demo` and `make test` work on a fresh
# machine with a Rust toolchain: protoc is vendored, nothing else is needed.

CARGO ?= cargo

.PHONY: all build test lint fmt demo tools clean

all: build

build:
	$(CARGO) build --workspace --locked

# Cluster tests run the real `coffer` binary: build it first, in the same
# profile the tests use.
test:
	$(CARGO) build --locked -p coffer-cli
	$(CARGO) test --workspace --locked

tools:
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt

lint: tools
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) fmt --all -- --check

fmt:
	$(CARGO) fmt --all

# Builds in release mode, starts the embedded local cluster, backs up a
# sample tree, stops a whole site, restores and verifies.
demo:
	$(CARGO) build --release --locked -p coffer-cli
	bash scripts/demo.sh target/release/coffer

clean:
	$(CARGO) clean
