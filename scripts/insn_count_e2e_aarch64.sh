#!/usr/bin/env bash
# Executed aarch64 instructions per method call of two whole-decoder .pte programs of the same shape
# under qemu-aarch64: ours (one MobileMoEBackend delegate) and XNNPACK's (8da4w, ExecuTorch's
# standard CPU backend; scripts/export_xnnpack_dense.py), both run by the aarch64 `mobilemoe`
# runner on the wheel's aarch64 ExecuTorch runtime (scripts/build_aarch64_runtime.sh), XNNPACK's
# library preloaded. Prints a markdown table. Instruction counts are a proxy, not time.
#
#   scripts/insn_count_e2e_aarch64.sh OURS.pte XNNPACK.pte
#
# Method: the TCG plugin scripts/qemu_plugin/insn_marker.c prints the total at exit; a call's count
# is (total of `bench --raw --iters 6` - total of `--iters 2`) / 4, both after 2 warm-up calls, so
# loading and first-call set-up cancel. One thread on both sides: `--threads 1` sizes our pool, and
# ExecuTorch's threadpool (XNNPACK) sizes itself from cpuinfo, which reads /sys/devices/system/cpu:
# each run sees one CPU through a private mount namespace (unshare -m, root), otherwise a second
# thread's polling is counted and repeated runs differ by ~2 %. With it, repeated runs agree to
# ~100 instructions.
# Env: INSN_PLUGIN (default target/aarch64/insn/insn_marker.so, built by scripts/insn_count_aarch64.sh),
#      CPUS (default "cortex-a53 cortex-a76 max"), TOKENS (default "1 8 32").
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/aarch64_toolchain.sh
(($# == 2)) || { echo "usage: $0 OURS.pte XNNPACK.pte" >&2; exit 2; }
OURS=$(realpath "$1"); XNN=$(realpath "$2")
PLUGIN="${INSN_PLUGIN:-$PWD/target/aarch64/insn/insn_marker.so}"
[[ -f $PLUGIN ]] || { echo "$PLUGIN missing: run scripts/insn_count_aarch64.sh once (it builds the plugin)" >&2; exit 1; }
RUNNER="$CARGO_TARGET_DIR/$AARCH64_TARGET/release/mobilemoe"
[[ -x $RUNNER ]] || { echo "$RUNNER missing: run scripts/build_aarch64_runtime.sh" >&2; exit 1; }
XNN_LIB="$ET_AARCH64_DIR/lib/libexecutorch_backend_xnnpack.so"
ONE=$(mktemp); echo 0 > "$ONE"; trap 'rm -f "$ONE"' EXIT

total() { # cpu pte tokens iters [preload]
    local pre=()
    [[ -n ${5:-} ]] && pre=(-E "LD_PRELOAD=$5")
    local out
    out=$(unshare -m bash -c 'for f in possible present online; do mount --bind "$1" /sys/devices/system/cpu/$f; done; shift; exec "$@"' \
        _ "$ONE" qemu-aarch64 -cpu "$1" -plugin "$PLUGIN" "${pre[@]}" \
        "$RUNNER" bench "$2" --raw --tokens "$3" --iters "$4" --warmup 2 --threads 1 2>&1) || { echo "$out" >&2; return 1; }
    sed -n 's/^TOTAL //p' <<<"$out"
}
per_call() { echo $(( ($(total "$1" "$2" "$3" 6 "${4:-}") - $(total "$1" "$2" "$3" 2 "${4:-}")) / 4 )); }
fmt() { awk -v n="$1" 'BEGIN { if (n >= 1e6) printf "%.3f M", n / 1e6; else printf "%.1f k", n / 1e3 }'; }

echo "Executed aarch64 instructions per \`forward\` call (\`bench --raw\`: T tokens from position 0),"
echo "one thread, counted by the QEMU TCG plugin; $(qemu-aarch64 --version | head -1); executorch $ET_VERSION"
echo "aarch64 wheel; commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(date -u '+%Y-%m-%d %H:%M UTC')."
echo "ours: $(basename "$OURS"), XNNPACK: $(basename "$XNN")."
echo
echo "| -cpu | tokens per call | ours (MobileMoEBackend) | XNNPACK 8da4w | XNNPACK / ours |"
echo "|---|---|---|---|---|"
for cpu in ${CPUS:-cortex-a53 cortex-a76 max}; do
    for t in ${TOKENS:-1 8 32}; do
        o=$(per_call "$cpu" "$OURS" "$t")
        x=$(per_call "$cpu" "$XNN" "$t" "$XNN_LIB")
        ratio=$(awk -v a="$x" -v b="$o" 'BEGIN { printf "%.2fx", a / b }')
        echo "| $cpu | $t | $(fmt "$o") ($(fmt $((o / t)))/token) | $(fmt "$x") ($(fmt $((x / t)))/token) | $ratio |"
    done
done
