#!/usr/bin/env bash
# Executed-instruction counts of the aarch64 kernel sets (scalar vs NEON vs sdot vs smmla) on the
# MobileMoE-S expert GEMMs and on one S attention layer (decode at depths 128 and 1024, a 128-token
# prefill), measured with a QEMU TCG plugin under qemu-user (-cpu max).
# Prints two markdown tables (instructions, ratio vs scalar) and writes the raw counts to
# docs/results/${INSN_RESULTS_NAME:-insn-aarch64}-<date>.json (scripts/bench_common.py; INSN_RESULTS=0
# skips it). Instruction counts are a proxy, not time.
#
# Needs the aarch64 toolchain of scripts/test_aarch64.sh (run it first, or let this script install
# it) and the header include/qemu/qemu-plugin.h of Debian's qemu source: deb-src entries are
# added (/etc/apt/sources.list.d/debian-src.sources) and `apt-get source --download-only qemu`
# fetched into $QEMU_SRC_DIR if missing; only the header is extracted. The plugin
# (scripts/qemu_plugin/insn_marker.c) needs no glib.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK="${INSN_WORK_DIR:-$ROOT/target/aarch64/insn}"
QEMU_SRC_DIR="${QEMU_SRC_DIR:-$WORK/qemu-src}"
mkdir -p "$WORK" "$QEMU_SRC_DIR"

command -v qemu-aarch64 >/dev/null || { echo "qemu-aarch64 missing: run scripts/test_aarch64.sh first" >&2; exit 1; }

HDR_DIR="$QEMU_SRC_DIR/hdr"
if [ ! -f "$HDR_DIR/qemu-plugin.h" ]; then
    if ! ls "$QEMU_SRC_DIR"/qemu_*.orig.tar.* >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
        if ! grep -rqs "deb-src" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            $SUDO tee /etc/apt/sources.list.d/debian-src.sources >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        fi
        $SUDO apt-get update -qq
        (cd "$QEMU_SRC_DIR" && apt-get source --download-only qemu >/dev/null 2>&1)
    fi
    tarball=$(ls "$QEMU_SRC_DIR"/qemu_*.orig.tar.* | head -1)
    mkdir -p "$HDR_DIR"
    hdr=$(tar tf "$tarball" | grep '/include/qemu/qemu-plugin.h$' | head -1)
    tar xf "$tarball" -O "$hdr" > "$HDR_DIR/qemu-plugin.h"
fi
PLUGIN="$WORK/insn_marker.so"
if [ ! -f "$PLUGIN" ] || [ "$ROOT/scripts/qemu_plugin/insn_marker.c" -nt "$PLUGIN" ]; then
    cc -O2 -shared -fPIC -Wall -I"$HDR_DIR" -o "$PLUGIN" "$ROOT/scripts/qemu_plugin/insn_marker.c"
fi

export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/aarch64}"
[ -n "${INSN_SKIP_BUILD:-}" ] || cargo build --release -p mobilemoe-ops --target aarch64-unknown-linux-gnu --bin insn_bench >&2
BENCH="$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/release/insn_bench"

KERNELS=(scalar neon neon-dotprod neon-i8mm)
declare -A COUNT
REGIONS=()
for kn in "${KERNELS[@]}"; do
    log="$WORK/run_$kn.log"
    MOBILEMOE_KERNEL=$kn qemu-aarch64 -cpu max -plugin "$PLUGIN" "$BENCH" > "$log" 2>&1
    got=$(awk '/^KERNEL/{print $2}' "$log")
    [ "$got" = "$kn" ] || { echo "kernel $kn not selected (got $got)" >&2; exit 1; }
    # MARK lines come in pairs around each region; REGION lines name them in the same order.
    mapfile -t diffs < <(awk '/^MARK/{if(h){printf "%.0f\n", $2-p; h=0}else{p=$2; h=1}}' "$log")
    mapfile -t names < <(awk '/^REGION/{print $2}' "$log")
    [ ${#diffs[@]} = ${#names[@]} ] || { echo "marker mismatch in $log" >&2; exit 1; }
    for i in "${!names[@]}"; do COUNT[$kn,${names[$i]}]=${diffs[$i]}; done
    REGIONS=("${names[@]}")
done

label() {
    case "$1" in
        gate_up_m1) echo "gate+up 1024x1024, decode (1 token)" ;;
        down_m1) echo "down 1024x512, decode (1 token)" ;;
        gate_up_m128) echo "gate+up 1024x1024, prefill (128 tokens)" ;;
        down_m128) echo "down 1024x512, prefill (128 tokens)" ;;
        attn_d128) echo "decode, depth 128" ;;
        attn_d1024) echo "decode, depth 1024" ;;
        attn_p128) echo "prefill 128 tokens from position 0" ;;
        *) echo "$1" ;;
    esac
}
fmt() { awk -v n="$1" 'BEGIN{ if (n >= 1e6) printf "%.2f M", n/1e6; else printf "%.1f k", n/1e3 }'; }
ratio() { awk -v s="$1" -v n="$2" 'BEGIN{ printf "%.1fx", s/n }'; }
row() {
    local r=$1 s=${COUNT[scalar,$1]} line
    line="| $(label "$r") | $(fmt "$s")"
    for kn in neon neon-dotprod neon-i8mm; do
        n=${COUNT[$kn,$r]}
        line+=" | $(fmt "$n") ($(ratio "$s" "$n"))"
    done
    echo "$line |"
}

echo "Executed aarch64 instructions per GEMM call (one expert, Q8 path, INT4 weights, group 32, one"
echo "thread), counted by a QEMU TCG plugin under \`qemu-aarch64 -cpu max\`; ratio = scalar / kernel."
echo "Instruction counts are a proxy, not time: they ignore latency, issue width, memory bandwidth"
echo "(decode is memory-bound on phones) and the higher cost per instruction of sdot/smmla on some cores.
The scalar column is the unoptimized reference (per-element layout addressing), so ratios vs scalar
overstate SIMD gains; compare the three NEON columns with each other."
echo
echo "| GEMM | scalar | neon | neon-dotprod (sdot) | neon-i8mm (smmla) |"
echo "|---|---|---|---|---|"
for r in "${REGIONS[@]}"; do
    if [[ $r != attn_* ]]; then row "$r"; fi
done
echo
echo "Executed aarch64 instructions per call of one MobileMoE-S attention layer (D=768, 12 query / 4 KV"
echo "heads x 64, interleaved RoPE + QK-norm, fp16 KV cache, Q8 projections, one thread: the whole op,"
echo "wqkv and wo included); ratio = scalar / kernel. Per decoded token: times the 20 layers of S."
echo
echo "| attention layer | scalar | neon | neon-dotprod | neon-i8mm |"
echo "|---|---|---|---|---|"
for r in "${REGIONS[@]}"; do
    if [[ $r == attn_* ]]; then row "$r"; fi
done

if [ "${INSN_RESULTS:-1}" != 0 ]; then
    raw=""
    for kn in "${KERNELS[@]}"; do
        for r in "${REGIONS[@]}"; do raw+="$kn $r ${COUNT[$kn,$r]}"$'\n'; done
    done
    path=$(INSN_RAW="$raw" python3 - "${INSN_RESULTS_NAME:-insn-aarch64}" "$(qemu-aarch64 --version | head -1)" <<'PY'
import os, sys
sys.path.insert(0, "scripts")
import bench_common as bc

name, qemu = sys.argv[1], sys.argv[2]
counts = {}
for line in os.environ["INSN_RAW"].split("\n"):
    if line.strip():
        kernel, region, n = line.split()
        counts.setdefault(kernel, {})[region] = int(n)
payload = {
    "command": "scripts/insn_count_aarch64.sh" + (f" (INSN_RESULTS_NAME={name})" if name != "insn-aarch64" else ""),
    "what": "executed aarch64 instructions per call (QEMU TCG plugin scripts/qemu_plugin/insn_marker.c, "
            "qemu-user -cpu max, one thread), ops/src/bin/insn_bench.rs regions: expert GEMMs of an S-like "
            "layer (D=1024, F=512, INT4 g32, Q8) and one MobileMoE-S attention layer (fp16 KV cache, whole op)",
    "renderer": "insn_tables", "emulator": qemu, "cpu_model": "max", "layers_per_token_S": 20,
    "loadavg_before": bc.loadavg(), "loadavg_after": bc.loadavg(), "machine": bc.machine(), "counts": counts,
}
print(bc.write_results(name, payload))
PY
)
    echo "raw counts: ${path#"$ROOT"/}" >&2
fi
