# MobileMoE for ExecuTorch — every entry point bootstraps what it needs (idempotently).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PY := .venv/bin/python
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: demo test test-clock build venv bench lint test-rust test-python test-aarch64 test-android test-robustness test-fuzz fuzz clean help

help:
	@echo "make demo          run the main job on the embedded default model"
	@echo "make test          run every test (Rust, Python/ExecuTorch, aarch64 under qemu)"
	@echo "make bench         kernel benchmark table (ops/src/bin/moe_bench.rs)"
	@echo "make test-aarch64  ops tests + plugin/runner on the aarch64 ExecuTorch runtime, under qemu (3 CPUs)"
	@echo "make test-android  JNI layer on the host JVM, javac -h symbols, aapt2 link"
	@echo "make fuzz          every cargo-fuzz target for FUZZ_SECONDS (default 60) each"

venv:
	@scripts/timed.sh venv scripts/bootstrap_venv.sh

build: venv
	@scripts/timed.sh build $(CARGO) build --release --workspace

demo: build
	@scripts/demo.sh

# Under `make test` a missing prerequisite fails instead of skipping (every suite honours it).
test test-rust test-python test-robustness: export MOBILEMOE_NO_SKIP := 1

test: test-clock build test-rust test-python test-robustness test-fuzz test-aarch64 test-android
	@echo "make test: wall time per suite (s):"; sort -k2 -n -r target/suite-times.txt | awk '{t+=$$2; printf "    %-12s %5d %s\n", $$1, $$2, $$3} END {printf "    %-12s %5d\n", "total", t}'
	@echo "make test: all suites passed (nothing skipped: MOBILEMOE_NO_SKIP=1)"

# Empties the per-suite timing file of scripts/timed.sh (CI time is budgeted per suite).
test-clock:
	@mkdir -p target && : > target/suite-times.txt

test-rust: build lint
	scripts/timed.sh cargo-test $(CARGO) test --release --workspace

# Formatting (rustfmt.toml; also the fuzz and robustness workspaces) and clippy with warnings as
# errors; ruff over the Python sources.
lint: venv
	@command -v rustfmt >/dev/null || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy
	$(CARGO) fmt --all --check
	cd tests/fuzz && $(CARGO) fmt --all --check
	cd tests/robustness && $(CARGO) fmt --all --check
	scripts/timed.sh clippy $(CARGO) clippy --release --workspace --all-targets -- -D warnings
	$(PY) -m ruff check python_export scripts tests runner/tests

test-python: build
	@scripts/timed.sh python scripts/run_pytest.sh

# Needs the host build: the x86 runner is the reference of the aarch64 runner's tokens and logits.
test-aarch64: build
	@scripts/timed.sh aarch64 scripts/test_aarch64.sh

test-android: build
	@scripts/timed.sh android scripts/test_android.sh

# Malformed blobs/programs/op inputs + concurrency (own workspace, debug assertions on).
test-robustness: build
	$(PY) tests/backend/make_pte.py target/robustness/leak_pte --lib target/release/libmobilemoe_executorch.so >/dev/null
	cd tests/robustness && MOBILEMOE_LEAK_PTE=$(CURDIR)/target/robustness/leak_pte/delegate.pte \
	  CARGO_TARGET_DIR=../../target/robustness ../../scripts/timed.sh robustness $(CARGO) test --release

# Regression inputs replayed, then every fuzz target briefly on the checked-in seed corpus.
test-fuzz:
	@scripts/timed.sh fuzz-replay scripts/fuzz.sh --replay
	@scripts/timed.sh fuzz-smoke scripts/fuzz.sh --smoke

# Longer fuzzing: FUZZ_SECONDS per target (default 60).
fuzz:
	@scripts/fuzz.sh

bench: build
	$(CARGO) run --release -p mobilemoe-ops --bin moe_bench

clean:
	$(CARGO) clean
