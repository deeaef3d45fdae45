#!/usr/bin/env bash
# Fuzz the MobileMoE entry points with cargo-fuzz/libFuzzer (+ AddressSanitizer, debug assertions).
#
#   scripts/fuzz.sh [target ...]          each target FUZZ_SECONDS (default 60) s; new inputs kept in
#                                         $FUZZ_WORK/corpus/<target>, crashes in $FUZZ_WORK/artifacts/<target>
#   scripts/fuzz.sh --smoke [target ...]  CI mode: each target SMOKE_SECONDS (default 5) s starting from the
#                                         checked-in seed corpus tests/fuzz/corpus/<target> (not modified)
#   scripts/fuzz.sh --replay              replay tests/fuzz/{corpus,regressions}/* without libFuzzer (cargo test);
#                                         fails if a target has no corpus/<target> inputs or no regressions/<target>
#   scripts/fuzz.sh --cmin [target ...]   minimise $FUZZ_WORK/corpus/<target> + tests/fuzz/corpus/<target> into
#                                         tests/fuzz/corpus/<target> (cargo fuzz cmin, set cover of the edges): run
#                                         after a campaign, then check the result in (CI's smoke run starts from it)
#   scripts/fuzz.sh --list                list targets
#
# Targets (tests/fuzz/fuzz_targets/, harnesses in tests/fuzz/harness/src/): ops_matrix_spec, ops_routing,
# ops_kernels, ops_linear, ops_moe_ffn, blob_parse, blob_structured, pte_inspect, capi (the C ABI).
# Works on stable Rust: cargo-fuzz needs nightly flags (-Zsanitizer, -Cpasses=sancov), enabled here with
# RUSTC_BOOTSTRAP=1; cargo-fuzz is installed with `cargo install` when missing. A crash exits non-zero and prints
# the command that reproduces it; keep the input as a regression test by copying it to
# tests/fuzz/regressions/<target>/<name> (replayed by --replay / cargo test). The full campaign is
# `make fuzz FUZZ_SECONDS=600` (docs/robustness.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_DIR="$ROOT/tests/fuzz"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/fuzz}"
export RUSTC_BOOTSTRAP=1
FUZZ_WORK="${FUZZ_WORK:-$CARGO_TARGET_DIR/work}"
ALL_TARGETS=(ops_matrix_spec ops_routing ops_kernels ops_linear ops_moe_ffn blob_parse blob_structured pte_inspect capi)
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"

mode=run
targets=()
for a in "$@"; do
  case "$a" in
    --smoke) mode=smoke ;;
    --replay) mode=replay ;;
    --cmin) mode=cmin ;;
    --list) printf '%s\n' "${ALL_TARGETS[@]}"; exit 0 ;;
    -h|--help) sed -n '/^set -euo/q;2,$p' "$0"; exit 0 ;;
    -*) echo "unknown option $a" >&2; exit 2 ;;
    *) targets+=("$a") ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

if [ "$mode" = replay ]; then
  cd "$FUZZ_DIR"
  exec cargo test -p mobilemoe-fuzz-harness --release -- --nocapture
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz (cargo install cargo-fuzz)"
  cargo install cargo-fuzz --version '^0.13' --locked
fi

echo "[fuzz] building ${#targets[@]} target(s) (ASan + debug assertions) into $CARGO_TARGET_DIR"
for t in "${targets[@]}"; do
  cargo fuzz build --fuzz-dir "$FUZZ_DIR" "$t"
done
BIN="$CARGO_TARGET_DIR/$TRIPLE/release"

if [ "$mode" = cmin ]; then
  for t in "${targets[@]}"; do
    dst="$FUZZ_DIR/corpus/$t"
    mkdir -p "$dst" "$FUZZ_WORK/corpus/$t"
    before=$(ls "$dst" | wc -l)
    # cargo fuzz cmin minimises one folder in place: gather the checked-in and the grown inputs there.
    cp -n "$FUZZ_WORK/corpus/$t"/* "$dst"/ 2>/dev/null || true
    merged=$(ls "$dst" | wc -l)
    # Set cover over edge coverage only (no hit counters, no comparison operands): the few inputs that
    # reach every edge the campaign reached, so the checked-in corpus stays small (the full grown
    # corpus stays in $FUZZ_WORK for the next long run).
    cargo fuzz cmin --fuzz-dir "$FUZZ_DIR" "$t" "$dst" -- -set_cover_merge=1 -use_counters=0 -use_cmp=0 \
      -max_len=65536 -rss_limit_mb=4096 -timeout=60 >"$FUZZ_WORK/$t.cmin.log" 2>&1 ||
      { echo "[fuzz] cmin $t failed (log $FUZZ_WORK/$t.cmin.log)" >&2; exit 1; }
    printf '%-16s %6s checked in + grown = %6s -> %6s files, %s\n' "$t" "$before" "$merged" "$(ls "$dst" | wc -l)" \
      "$(du -sh "$dst" | cut -f1)"
  done
  exit 0
fi

secs=${FUZZ_SECONDS:-60}
[ "$mode" = smoke ] && secs=${SMOKE_SECONDS:-5}
failed=()
printf '%-16s %10s %8s %10s %s\n' target execs exec/s corpus result
for t in "${targets[@]}"; do
  seeds="$FUZZ_DIR/corpus/$t"
  if [ "$mode" = smoke ] && [ -z "$(ls -A "$seeds" 2>/dev/null)" ]; then
    echo "[fuzz] $t has no seed corpus ($seeds): the smoke run would start from nothing" >&2
    failed+=("$t")
    continue
  fi
  mkdir -p "$seeds"
  if [ "$mode" = smoke ]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
  else
    work="$FUZZ_WORK/corpus/$t"
  fi
  art="$FUZZ_WORK/artifacts/$t/"
  mkdir -p "$work" "$art"
  log="$FUZZ_WORK/$t.log"
  set +e
  "$BIN/$t" "$work" "$seeds" -max_total_time="$secs" -artifact_prefix="$art" -print_final_stats=1 \
    -rss_limit_mb=4096 -timeout=60 -max_len=65536 >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  ncorp=$(ls "$work" | wc -l)
  if [ $rc -eq 0 ]; then res=ok; else res="CRASH (rc $rc, log $log)"; failed+=("$t"); fi
  printf '%-16s %10s %8s %10s %s\n' "$t" "${execs:-?}" "${rate:-?}" "$ncorp" "$res"
  if [ $rc -ne 0 ]; then
    grep -E "panicked at|ERROR: AddressSanitizer|SUMMARY" -A2 "$log" | head -12 || true
    crash=$(ls -t "$art" 2>/dev/null | head -1)
    [ -n "$crash" ] && echo "  reproduce: $BIN/$t $art$crash   (then: cp it to tests/fuzz/regressions/$t/)"
  fi
  [ "$mode" = smoke ] && rm -rf "$work"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "[fuzz] crashes in: ${failed[*]}" >&2
  exit 1
fi
echo "[fuzz] no crashes"
