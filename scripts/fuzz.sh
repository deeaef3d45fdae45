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
ALL_TARGETS=(ops_matrix_spec ops_routing ops_kernels ops_linear ops_moe_ffn ops_decoder blob_parse blob_structured pte_inspect capi tokenizer)
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
  min_gain=${CMIN_MIN_GAIN:-2}
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  for t in "${targets[@]}"; do
    dst="$FUZZ_DIR/corpus/$t"
    mkdir -p "$dst" "$FUZZ_WORK/corpus/$t"
    before=$(ls "$dst" | wc -l)
    # Named seeds (anything but libFuzzer's 40-hex-digit names: real .pte files, valid blobs) stay.
    rm -rf "$tmp/named"; mkdir -p "$tmp/named"
    find "$dst" -maxdepth 1 -type f -regextype posix-extended ! -regex '.*/[0-9a-f]{40}' -exec cp {} "$tmp/named/" \;
    # cargo fuzz cmin minimises one folder in place: gather the checked-in and the grown inputs there.
    cp -n "$FUZZ_WORK/corpus/$t"/* "$dst"/ 2>/dev/null || true
    merged=$(ls "$dst" | wc -l)
    # 1. cargo fuzz cmin: set-cover merge on edge coverage only (no hit counters, no comparison operands).
    cargo fuzz cmin --fuzz-dir "$FUZZ_DIR" "$t" "$dst" -- -set_cover_merge=1 -use_counters=0 -use_cmp=0 \
      -max_len=65536 -rss_limit_mb=4096 -timeout=60 >"$FUZZ_WORK/$t.cmin.log" 2>&1 ||
      { echo "[fuzz] cmin $t failed (log $FUZZ_WORK/$t.cmin.log)" >&2; exit 1; }
    after_cmin=$(ls "$dst" | wc -l)
    # 2. libFuzzer's merge records only the edges each input adds to those before it, so its result is
    #    near-minimal but keeps a long tail of inputs adding one edge each. Measure every input's full
    #    edge set (a one-input merge each), then a greedy cover that keeps an input only while it adds
    #    >= CMIN_MIN_GAIN (default 2) edges: ~half the files for ~98% of the edges. CMIN_MIN_GAIN=1: all.
    : >"$tmp/cov.tsv"
    for f in "$dst"/*; do
      rm -rf "$tmp/in" "$tmp/out" "$tmp/ctl"; mkdir -p "$tmp/in" "$tmp/out"; cp "$f" "$tmp/in/"
      "$BIN/$t" -merge=1 -use_counters=0 -use_cmp=0 -print_funcs=0 -max_len=65536 -rss_limit_mb=4096 -timeout=60 \
        -merge_control_file="$tmp/ctl" "$tmp/out" "$tmp/in" >/dev/null 2>&1 || true
      printf '%s\t%s\n' "$f" "$(sed -n 's/^COV 0 *//p' "$tmp/ctl" 2>/dev/null)" >>"$tmp/cov.tsv"
    done
    python3 - "$tmp/cov.tsv" "$min_gain" <<'PY'
import os, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
cov = {f: set(map(int, e.split())) for f, e, *_ in [r + [""] for r in rows]}
left, keep = set().union(*cov.values()), set()
while left:
    best = max(cov, key=lambda f: (len(cov[f] & left), -os.path.getsize(f), f))
    if len(cov[best] & left) < int(sys.argv[2]):
        break
    keep.add(best)
    left -= cov[best]
for f in cov:
    if f not in keep:
        os.remove(f)
PY
    cp -n "$tmp/named"/* "$dst"/ 2>/dev/null || true
    printf '%-16s %5s checked in + grown = %5s -> cmin %5s -> %5s files (edge gain >= %s, + named seeds), %s bytes\n' \
      "$t" "$before" "$merged" "$after_cmin" "$(ls "$dst" | wc -l)" "$min_gain" "$(cat "$dst"/* | wc -c)"
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
