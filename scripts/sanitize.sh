#!/usr/bin/env bash
# Sanitizer runs for MobileMoE (stable Rust + RUSTC_BOOTSTRAP=1 for the -Z sanitizer flags).
#
#   scripts/sanitize.sh [asan] [lsan-cycles] [valgrind] [tsan]     (default: all four)
#
#   asan         AddressSanitizer (+ LeakSanitizer at exit) over the ops, schema and robustness tests and the
#                backend's delegate/profiling tests. Rust is instrumented with -Zsanitizer=address; the cxx
#                C++ bridge is compiled by clang++ with -fsanitize=address (CXX/CXXFLAGS, cc crate).
#   lsan-cycles  LEAK_CYCLES (default 1000) delegate init/execute/destroy cycles under ASan+LSan.
#   valgrind     valgrind memcheck (definite leaks and invalid accesses are errors) over LEAK_CYCLES cycles of the
#                real ExecuTorch path: Program load -> method init (C++ BackendInterface::init) -> execute ->
#                destroy, on a .pte made by tests/backend/make_pte.py (needs the venv + target/release plugin).
#   tsan         ThreadSanitizer over tests/robustness/tests/concurrency.rs.
#
# Target dirs: $SAN_TARGET_DIR (default target/sanitize)/{asan,tsan,plain}. Exit status non-zero on any report.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="${SAN_TARGET_DIR:-$ROOT/target/sanitize}"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTC_BOOTSTRAP=1
export LEAK_CYCLES="${LEAK_CYCLES:-1000}"
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(asan lsan-cycles valgrind tsan)
fail=()
log() { echo "[sanitize] $*"; }

cxx_asan() {
  local cxx=""
  for c in clang++ clang++-16 clang++-15 clang++-14; do
    if command -v "$c" >/dev/null 2>&1; then cxx="$c"; break; fi
  done
  if [ -z "$cxx" ] && command -v apt-get >/dev/null 2>&1; then
    log "installing clang (apt-get install clang libclang-rt-14-dev) for the ASan build of the C++ bridge"
    (apt-get install -y --no-install-recommends clang libclang-rt-14-dev >/dev/null 2>&1 ||
      (apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends clang libclang-rt-14-dev >/dev/null 2>&1)) || true
    for c in clang++ clang++-14; do
      if command -v "$c" >/dev/null 2>&1; then cxx="$c"; break; fi
    done
  fi
  if [ -n "$cxx" ]; then
    # The ASan runtime linked into the test binaries is Rust's (compiler-rt); clang's instrumentation
    # matches it. Sanitizer flags are added to the C++ of the cxx bridge only (cc crate reads CXXFLAGS).
    log "C++ bridge compiled by $cxx with -fsanitize=address"
    export CXX="$cxx" CXXFLAGS="-fsanitize=address -fno-omit-frame-pointer"
  else
    log "clang++ not found: the C++ bridge is not ASan-instrumented (apt-get install clang); valgrind covers it"
  fi
}

run_asan() {
  log "ASan + LSan: ops, schema, robustness, backend (delegate) and runner (profiling_trace) tests"
  (
    export CARGO_TARGET_DIR="$BASE/asan"
    export RUSTFLAGS="-Zsanitizer=address -Cforce-frame-pointers=yes" RUSTDOCFLAGS="-Zsanitizer=address"
    # allocator_may_return_null: an impossible allocation returns null, as from libc (ops tests check
    # that it becomes OpsError::OutOfMemory; ASan would otherwise abort on it)
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=1:allocator_may_return_null=1"
    export LSAN_OPTIONS="suppressions=$ROOT/tests/robustness/lsan.supp:print_suppressions=0"
    cxx_asan
    cd "$ROOT"
    LEAK_CYCLES=20 cargo test --target "$TRIPLE" --release -p mobilemoe-ops -p mobilemoe-schema --lib --tests
    # init_destroy_1000_times_without_growth checks RSS, which ASan's quarantine inflates by design
    # (freed memory is held back to catch use-after-free); leaks are checked by lsan-cycles/valgrind.
    cargo test --target "$TRIPLE" --release -p mobilemoe-backend --test delegate -- \
      --skip init_destroy_1000_times_without_growth
    cargo test --target "$TRIPLE" --release -p mobilemoe-runner --test profiling_trace
    cd "$ROOT/tests/robustness"
    LEAK_CYCLES=20 cargo test --target "$TRIPLE" --release
    cd "$ROOT/tests/fuzz"
    cargo test --target "$TRIPLE" --release -p mobilemoe-fuzz-harness
  ) || fail+=(asan)
}

run_lsan_cycles() {
  log "LeakSanitizer: $LEAK_CYCLES delegate init/execute/destroy cycles"
  (
    export CARGO_TARGET_DIR="$BASE/asan"
    export RUSTFLAGS="-Zsanitizer=address -Cforce-frame-pointers=yes"
    export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1"
    export LSAN_OPTIONS="suppressions=$ROOT/tests/robustness/lsan.supp"
    cxx_asan
    cd "$ROOT/tests/robustness"
    cargo test --target "$TRIPLE" --release --test lifecycle -- --nocapture delegate_cycles
  ) || fail+=(lsan-cycles)
}

run_valgrind() {
  command -v valgrind >/dev/null || { log "valgrind missing"; fail+=(valgrind); return; }
  local lib="$ROOT/target/release/libmobilemoe_executorch.so" py="$ROOT/.venv/bin/python" pte_dir="$BASE/pte"
  if [ ! -x "$py" ] || [ ! -f "$lib" ]; then
    log "valgrind: needs $py and $lib (make build); skipping the ExecuTorch cycles"
  elif [ ! -f "$pte_dir/delegate.pte" ]; then
    "$py" "$ROOT/tests/backend/make_pte.py" "$pte_dir" --lib "$lib" >/dev/null
  fi
  (
    export CARGO_TARGET_DIR="$BASE/plain"
    cd "$ROOT/tests/robustness"
    bin=$(cargo test --release --test lifecycle --no-run --message-format=json 2>/dev/null \
      | sed -n 's/.*"executable":"\([^"]*lifecycle[^"]*\)".*/\1/p' | tail -1)
    [ -n "$bin" ] || { echo "lifecycle test binary not built"; exit 1; }
    [ -f "$pte_dir/delegate.pte" ] && export MOBILEMOE_LEAK_PTE="$pte_dir/delegate.pte"
    export MOBILEMOE_THREADS=2
    valgrind --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect \
      --errors-for-leak-kinds=definite,indirect --suppressions="$ROOT/tests/robustness/valgrind.supp" \
      "$bin" --test-threads=1 --nocapture 2>&1 | tee "$BASE/valgrind.log" | grep -E "cycles|SKIPPED|ERROR SUMMARY|definitely lost|indirectly lost|test result"
    exit "${PIPESTATUS[0]}"
  ) || fail+=(valgrind)
}

run_tsan() {
  log "ThreadSanitizer: concurrency tests"
  (
    export CARGO_TARGET_DIR="$BASE/tsan"
    export RUSTFLAGS="-Zsanitizer=thread -Cforce-frame-pointers=yes"
    export TSAN_OPTIONS="halt_on_error=1:suppressions=$ROOT/tests/robustness/tsan.supp"
    cd "$ROOT/tests/robustness"
    # rustc refuses to mix a TSan crate with the uninstrumented std (ABI check), and an uninstrumented
    # std would hide its Mutex/Condvar synchronisation from TSan: rebuild std with -Zbuild-std
    # (needs `rustup component add rust-src`).
    if rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
      cargo test -Zbuild-std --target "$TRIPLE" --release --test concurrency
    else
      log "rust-src missing: TSan with an uninstrumented std (-Cunsafe-allow-abi-mismatch=sanitizer; may report false races)"
      RUSTFLAGS="$RUSTFLAGS -Cunsafe-allow-abi-mismatch=sanitizer" cargo test --target "$TRIPLE" --release --test concurrency
    fi
  ) || fail+=(tsan)
}

for s in "${steps[@]}"; do
  case "$s" in
    asan) run_asan ;;
    lsan-cycles) run_lsan_cycles ;;
    valgrind) run_valgrind ;;
    tsan) run_tsan ;;
    *) echo "unknown step $s" >&2; exit 2 ;;
  esac
done
if [ ${#fail[@]} -gt 0 ]; then
  log "FAILED: ${fail[*]}"
  exit 1
fi
log "all clean: ${steps[*]}"
