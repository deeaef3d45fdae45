# Sourced by the aarch64 scripts (test_aarch64.sh, build_aarch64_runtime.sh): installs the cross
# toolchain and qemu-user with apt when missing (Debian bookworm, root or sudo), then exports the
# cargo settings for aarch64-unknown-linux-gnu. Idempotent: a second run only checks dpkg.
# Debian's rustc (rustc-web) has the aarch64 std (libstd-rust-web-dev:arm64, which also brings the
# arm64 multiarch glibc + libstdc++ that qemu-aarch64 loads from /lib/ld-linux-aarch64.so.1 and
# /usr/lib/aarch64-linux-gnu); rustup's cargo drives it.
AARCH64_PKGS=(rustc-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user)
aarch64_missing=()
for p in "${AARCH64_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || aarch64_missing+=("$p")
done
if ((${#aarch64_missing[@]})); then
    echo "installing: ${aarch64_missing[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    dpkg --print-foreign-architectures | grep -qx arm64 || $SUDO dpkg --add-architecture arm64
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${aarch64_missing[@]}"
fi
unset aarch64_missing

export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu="${CXX_aarch64_unknown_linux_gnu:-aarch64-linux-gnu-g++}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/aarch64}"
AARCH64_TARGET=aarch64-unknown-linux-gnu

# The aarch64 ExecuTorch runtime (the PyPI wheel's lib/ + include/), unpacked by
# scripts/build_aarch64_runtime.sh into a cache outside the repository.
ET_VERSION=1.5.1
ET_AARCH64_CACHE="${MOBILEMOE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mobilemoe}/executorch-aarch64/$ET_VERSION"
ET_AARCH64_DIR="$ET_AARCH64_CACHE/executorch"
