#!/usr/bin/env bash
# Cross-builds the phone path for aarch64-unknown-linux-gnu against the real aarch64 ExecuTorch
# runtime: `libmobilemoe_executorch.so` (the plugin cdylib) and the `mobilemoe` runner, linked to
# the lib/ of PyPI's executorch manylinux_2_28 aarch64 wheel.
#   1. toolchain: scripts/aarch64_toolchain.sh (apt, only when missing)
#   2. the wheel: `pip download --only-binary=:all: --platform manylinux_2_28_aarch64` (pip checks
#      PyPI's sha256), unpacked (lib/, include/, the custom-ops and quantized libraries) into
#      $ET_AARCH64_CACHE (default ~/.cache/mobilemoe/executorch-aarch64/1.5.1), outside the
#      repository; nothing of it is committed. Done once: a stamp marks a complete unpack.
#   3. cargo build --target aarch64-unknown-linux-gnu with EXECUTORCH_DIR / EXECUTORCH_LIB_DIR
#      pointing there (backend/build_executorch.rs), into $CARGO_TARGET_DIR (default target/aarch64).
# The wheel's libraries need glibc >= 2.27 and GLIBCXX_3.4.22 (bookworm's arm64 multiarch libs
# have 2.36 and 3.4.30). Run the result with `qemu-aarch64 -cpu cortex-a76 <bin>` (no -L: the arm64
# loader and libs come from the multiarch paths; see docs/aarch64.md).
# Prints the paths of the two artifacts on the last two lines.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/aarch64_toolchain.sh

fetch_runtime() {
    local stamp="$ET_AARCH64_CACHE/.complete"
    if [[ -f $stamp && -f $ET_AARCH64_DIR/lib/libexecutorch.so ]]; then
        return 0
    fi
    local pip=(python3 -m pip)
    [[ -x .venv/bin/pip ]] && pip=(.venv/bin/pip)
    mkdir -p "$ET_AARCH64_CACHE"
    local tmp
    tmp=$(mktemp -d "$ET_AARCH64_CACHE/.unpack.XXXXXX")
    trap 'rm -rf "$tmp"' RETURN
    echo "== fetching executorch==$ET_VERSION (manylinux_2_28_aarch64, cp311) into $ET_AARCH64_CACHE"
    "${pip[@]}" download --quiet --only-binary=:all: --platform manylinux_2_28_aarch64 --python-version 3.11 \
        --implementation cp --no-deps "executorch==$ET_VERSION" -d "$tmp/wheel"
    local whl
    whl=$(ls "$tmp"/wheel/executorch-"$ET_VERSION"-*manylinux_2_28_aarch64.whl)
    # Only what a native aarch64 program links or loads: the runtime libraries, the headers, the
    # llm custom-ops and quantized-ops libraries (for the comparisons with ExecuTorch's own ops).
    python3 - "$whl" "$tmp/x" <<'PY'
import sys, zipfile
keep = ("executorch/lib/", "executorch/include/", "executorch/extension/llm/custom_ops/",
        "executorch/kernels/quantized/", "executorch-")
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith(keep)])
PY
    file -b "$tmp/x/executorch/lib/libexecutorch.so" | grep -q "ARM aarch64" \
        || { echo "error: $whl: lib/libexecutorch.so is not an aarch64 library" >&2; return 1; }
    rm -rf "$ET_AARCH64_DIR" "$ET_AARCH64_CACHE"/executorch-*.dist-info
    mv "$tmp"/x/* "$ET_AARCH64_CACHE"/
    mv "$whl" "$ET_AARCH64_CACHE"/
    touch "$stamp"
}

fetch_runtime
echo "== cross-building libmobilemoe_executorch.so + mobilemoe for $AARCH64_TARGET against $ET_AARCH64_DIR/lib"
EXECUTORCH_DIR="$ET_AARCH64_DIR" EXECUTORCH_LIB_DIR="$ET_AARCH64_DIR/lib" \
    cargo build --release --target "$AARCH64_TARGET" -p mobilemoe-backend -p mobilemoe-runner --lib --bin mobilemoe
out="$CARGO_TARGET_DIR/$AARCH64_TARGET/release"
for f in "$out/libmobilemoe_executorch.so" "$out/mobilemoe"; do
    file -b "$f" | grep -q "ARM aarch64" || { echo "error: $f is not an aarch64 ELF" >&2; exit 1; }
done
echo "$out/libmobilemoe_executorch.so"
echo "$out/mobilemoe"
