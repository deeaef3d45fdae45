#!/usr/bin/env bash
# Cross-build mobilemoe-ops for aarch64 and run its tests under qemu-user on three CPU models,
# checking that runtime dispatch picks the right kernel on each:
#   cortex-a53 (ARMv8.0: NEON only)      -> neon
#   cortex-a76 (ARMv8.2 + dotprod)       -> neon-dotprod
#   max        (dotprod + i8mm, ...)     -> neon-i8mm available, best() = neon-dotprod (fewer instructions)
# Then cross-builds the Rust + C++ of mobilemoe-backend (cxx bridge, backend.cpp) and of
# mobilemoe-runner (cxx bridge, runner.cpp, the tokenizer) for aarch64 and checks that the objects
# are aarch64. No aarch64 ExecuTorch library exists here, so nothing of ExecuTorch is linked
# (backend/build_executorch.rs: headers only, from the host wheel) and nothing of it runs.
# Idempotent: installs the toolchain with apt only when missing (Debian bookworm, root).
# Env: PROPTEST_CASES (default 24 under qemu), CARGO_TARGET_DIR (default target/aarch64),
#      CPUS (default "cortex-a53 cortex-a76 max"), SKIP_BACKEND=1 (skip the backend build).
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(rustc-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    dpkg --print-foreign-architectures | grep -qx arm64 || $SUDO dpkg --add-architecture arm64
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's rustc has the aarch64 std (libstd-rust-web-dev:arm64); rustup's cargo drives it.
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/aarch64}"
export PROPTEST_CASES="${PROPTEST_CASES:-24}"
unset MOBILEMOE_KERNEL
TARGET=aarch64-unknown-linux-gnu

expect_for() {
    case "$1" in
        cortex-a53) echo neon ;;
        cortex-a76) echo neon-dotprod ;;
        max) echo neon-i8mm ;;
        *) echo "unknown cpu $1" >&2; exit 2 ;;
    esac
}

# Build once (the runner is only used by `cargo test`, building does not depend on it).
cargo test --release -p mobilemoe-ops --target "$TARGET" --no-run

status=0
for cpu in ${CPUS:-cortex-a53 cortex-a76 max}; do
    exp=$(expect_for "$cpu")
    echo "=== qemu-aarch64 -cpu $cpu: expecting kernels up to $exp (PROPTEST_CASES=$PROPTEST_CASES)"
    if ! CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu" \
        MOBILEMOE_EXPECT_KERNEL="$exp" \
        cargo test --release -p mobilemoe-ops --target "$TARGET" -- --test-threads 2; then
        echo "=== FAILED on -cpu $cpu"
        status=1
    fi
done
[ $status = 0 ] && echo "=== aarch64: all CPU models passed"

# The C++ objects a crate's build script compiled for $TARGET (its out dir of this build: older
# ones may linger in the target dir).
cxx_objects() {
    local pkg=$1
    cargo build --release -p "$pkg" --lib --target "$TARGET" --message-format=json-render-diagnostics | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "build-script-executed" and sys.argv[1] in m["package_id"]:
        print(m["out_dir"])' "$pkg"
}

if [ "${SKIP_BACKEND:-0}" != 1 ]; then
    echo "=== mobilemoe-backend + mobilemoe-runner for $TARGET: Rust + C++ compile (ExecuTorch headers only, not linked)"
    export CXX_aarch64_unknown_linux_gnu="${CXX_aarch64_unknown_linux_gnu:-aarch64-linux-gnu-g++}"
    be_out=$(cxx_objects mobilemoe-backend) || be_out=""
    rn_out=$(cxx_objects mobilemoe-runner) || rn_out=""
    so="$CARGO_TARGET_DIR/$TARGET/release/libmobilemoe_executorch.so"
    rlib=$(ls -t "$CARGO_TARGET_DIR/$TARGET"/release/deps/libmobilemoe_runner-*.rlib 2>/dev/null | head -1 || true)
    shopt -s nullglob
    objs=()
    [ -n "$be_out" ] && objs+=("$be_out"/*.o)
    [ -n "$rn_out" ] && objs+=("$rn_out"/*.o)
    bad=0
    for f in "${objs[@]}" "$so"; do
        info=$(file -b "$f" 2>&1)
        echo "    $(basename "$f"): ${info%%, with debug_info*}"
        [[ $info == *"ARM aarch64"* ]] || bad=1
    done
    names=$(printf '%s\n' "${objs[@]##*/}")
    for want in backend.o runner.o bridge.rs.o; do
        grep -q -- "-$want\$" <<<"$names" || { echo "    missing object: *-$want"; bad=1; }
    done
    [ "$(grep -c -- '-bridge.rs.o$' <<<"$names")" -ge 2 ] || { echo "    missing object: one cxx bridge per crate"; bad=1; }
    [ -n "$rlib" ] || { echo "    missing: libmobilemoe_runner-*.rlib"; bad=1; }
    if [ $bad = 0 ]; then
        undef=$(aarch64-linux-gnu-nm -D --undefined-only "$so" | grep -c executorch || true)
        echo "=== ${#objs[@]} C++ objects (cxx bridges, backend.cpp, runner.cpp) and the cdylib are ARM" \
             "aarch64, the runner rlib (tokenizer included) built; the cdylib leaves $undef ExecuTorch" \
             "symbols undefined (no aarch64 libexecutorch here: not linked, not run)"
    else
        echo "=== FAILED: mobilemoe-backend / mobilemoe-runner aarch64 build"
        status=1
    fi
fi
exit $status
