#!/usr/bin/env bash
# Cross-build mobilemoe-ops for aarch64 and run its tests under qemu-user on three CPU models,
# checking that runtime dispatch picks the right kernel on each:
#   cortex-a53 (ARMv8.0: NEON only)      -> neon
#   cortex-a76 (ARMv8.2 + dotprod)       -> neon-dotprod
#   max        (dotprod + i8mm, ...)     -> neon-i8mm
# Idempotent: installs the toolchain with apt only when missing (Debian bookworm, root).
# Env: PROPTEST_CASES (default 24 under qemu), CARGO_TARGET_DIR (default target/aarch64),
#      CPUS (default "cortex-a53 cortex-a76 max").
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
    echo "=== qemu-aarch64 -cpu $cpu: expecting Kernels::best() = $exp (PROPTEST_CASES=$PROPTEST_CASES)"
    if ! CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu" \
        MOBILEMOE_EXPECT_KERNEL="$exp" \
        cargo test --release -p mobilemoe-ops --target "$TARGET" -- --test-threads 2; then
        echo "=== FAILED on -cpu $cpu"
        status=1
    fi
done
[ $status = 0 ] && echo "=== aarch64: all CPU models passed"
exit $status
