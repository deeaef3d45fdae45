# MobileMoE for ExecuTorch — every entry point bootstraps what it needs (idempotently).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PY := .venv/bin/python
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: demo test build venv bench test-rust test-python test-aarch64 test-android fuzz clean help

help:
	@echo "make demo          run the main job on the embedded default model"
	@echo "make test          run every test (Rust, Python/ExecuTorch, aarch64 under qemu)"
	@echo "make bench         kernel benchmark table (ops/src/bin/moe_bench.rs)"
	@echo "make test-aarch64  cross-build + run the ops tests under qemu (3 CPUs)"
	@echo "make test-android  JNI layer on the host JVM, javac -h symbols, aapt2 link"

venv:
	@scripts/bootstrap_venv.sh

build: venv
	$(CARGO) build --release --workspace

demo: build
	@scripts/demo.sh

test: build test-rust test-python test-aarch64 test-android
	@echo "make test: all suites passed"

test-rust: build
	$(CARGO) test --release --workspace

test-python: build
	@scripts/run_pytest.sh

test-aarch64:
	@scripts/test_aarch64.sh

test-android: build
	@scripts/test_android.sh

bench: build
	$(CARGO) run --release -p mobilemoe-ops --bin moe_bench

clean:
	$(CARGO) clean
