#!/usr/bin/env bash
# Cross-build mobilemoe-ops for aarch64 and run its tests under qemu-user on three CPU models,
# checking that runtime dispatch picks the right kernel on each:
#   cortex-a53 (ARMv8.0: NEON only)      -> neon
#   cortex-a76 (ARMv8.2 + dotprod)       -> neon-dotprod
#   max        (dotprod + i8mm, ...)     -> neon-i8mm available, best() = neon-dotprod (fewer instructions)
# Then the phone path end to end: the plugin (libmobilemoe_executorch.so) and the `mobilemoe`
# runner cross-built against the aarch64 ExecuTorch runtime of PyPI's executorch wheel
# (scripts/build_aarch64_runtime.sh) run the embedded default model's .pte under qemu on the same
# three CPU models, with token and logit parity against the x86 runner (details below).
# Idempotent: installs the toolchain with apt only when missing (scripts/aarch64_toolchain.sh;
# Debian bookworm, root), the aarch64 ExecuTorch runtime once into a cache outside the repository.
# Needs the host build (make build: the x86 runner is the reference) and .venv (the export).
# Env: PROPTEST_CASES (default 24 under qemu), CARGO_TARGET_DIR (default target/aarch64),
#      CPUS (default "cortex-a53 cortex-a76 max"), SKIP_BACKEND=1 / SKIP_OPS=1 (skip the
#      end-to-end part / the ops test suite),
#      E2E_TOKENS (greedy tokens compared, default 16), HOST_RUNNER (default target/release/mobilemoe).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/aarch64_toolchain.sh
export PROPTEST_CASES="${PROPTEST_CASES:-24}"
unset MOBILEMOE_KERNEL
TARGET=$AARCH64_TARGET

expect_for() {
    case "$1" in
        cortex-a53) echo neon ;;
        cortex-a76) echo neon-dotprod ;;
        max) echo neon-i8mm ;;
        *) echo "unknown cpu $1" >&2; exit 2 ;;
    esac
}

status=0
cpus="${CPUS:-cortex-a53 cortex-a76 max}"
if [ "${SKIP_OPS:-0}" != 1 ]; then
    # Build once (the runner is only used by `cargo test`, building does not depend on it).
    cargo test --release -p mobilemoe-ops --target "$TARGET" --no-run

    for cpu in $cpus; do
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
fi

if [ "${SKIP_BACKEND:-0}" != 1 ]; then
    # The phone path end to end: plugin + runner linked against the aarch64 ExecuTorch runtime of
    # PyPI's executorch wheel (scripts/build_aarch64_runtime.sh), run under qemu on the embedded
    # default model's .pte, the same file `make demo` exports (scripts/export_default_pte.sh, on
    # x86). The plugin cdylib loads into the wheel's runtime and registers its backend. Checks per
    # CPU model: the greedy token ids of `mobilemoe generate` equal the x86 runner's; the logits of
    # one 8-token forward pass equal x86's bit for bit (every kernel set is bit-exact against the
    # scalar reference, and the whole decoder is one delegate: no ExecuTorch kernel computes
    # anything); `inspect` and `bench --raw --tokens 1` work. On `max` also with
    # MOBILEMOE_KERNEL=neon-i8mm (best() picks neon-dotprod there).
    t_e2e=$SECONDS
    echo "=== plugin + runner for $TARGET on the aarch64 ExecuTorch runtime (executorch $ET_VERSION wheel), under qemu"
    scripts/build_aarch64_runtime.sh
    so="$CARGO_TARGET_DIR/$TARGET/release/libmobilemoe_executorch.so"
    runner="$CARGO_TARGET_DIR/$TARGET/release/mobilemoe"
    host_runner="${HOST_RUNNER:-$PWD/target/release/mobilemoe}"
    [[ -x $host_runner ]] || { echo "=== FAILED: the x86 runner $host_runner is missing (make build)"; exit 1; }
    model=$(scripts/export_default_pte.sh)
    tokenizer=python_export/mobilemoe_export/assets/tokenizer.json
    W="$CARGO_TARGET_DIR/e2e"
    rm -rf "$W"; mkdir -p "$W"
    e2e_ok=0
    e2e_bad=0
    pass() { echo "    ok: $*"; e2e_ok=$((e2e_ok + 1)); }
    fail() { echo "    FAILED: $*"; e2e_bad=$((e2e_bad + 1)); }
    # The aarch64 loader resolves ExecuTorch from the unpacked wheel (the rpath), glibc/libstdc++
    # from Debian's arm64 multiarch paths (no -L: see docs/aarch64.md).
    deps=$(qemu-aarch64 -E LD_TRACE_LOADED_OBJECTS=1 "$runner" 2>&1 || true)
    if grep -q "libexecutorch.so => $ET_AARCH64_DIR/lib/libexecutorch.so" <<<"$deps" &&
       grep -q "libexecutorch_kernels_optimized.so => $ET_AARCH64_DIR/lib/" <<<"$deps"; then
        pass "the aarch64 runner loads libexecutorch.so + libexecutorch_kernels_optimized.so from $ET_AARCH64_DIR/lib"
    else
        fail "libexecutorch resolution:"; sed 's/^/      /' <<<"$deps"
    fi
    # The cdylib as a host process loads it (dlopen RTLD_NOW against the wheel's libexecutorch.so):
    # it resolves and registers MobileMoEBackend there (tests/aarch64/plugin_load.c).
    aarch64-linux-gnu-gcc -O1 -Wall -Wextra -Werror -o "$W/plugin_load" tests/aarch64/plugin_load.c -ldl
    if msg=$(qemu-aarch64 -cpu cortex-a53 "$W/plugin_load" "$ET_AARCH64_DIR/lib/libexecutorch.so" "$so" 2>&1); then
        pass "dlopen $(basename "$so"): $msg"
    else
        fail "dlopen $(basename "$so"): $msg"
    fi
    gen=(generate "$model" --tokenizer "$tokenizer" --prompt "ROMEO:" --max-new-tokens "${E2E_TOKENS:-16}" --temperature 0 --no-eos)
    fwd=(run "$model" --tokens 8)
    if "$host_runner" "${gen[@]}" --ids-out "$W/x86.ids" > "$W/x86.out" 2> "$W/x86.err" &&
       "$host_runner" "${fwd[@]}" --output "$W/x86.npy" > /dev/null 2>> "$W/x86.err"; then
        pass "x86 reference: ids $(cat "$W/x86.ids")"
    else
        cat "$W/x86.err"; fail "x86 reference run"
    fi
    runs=()
    for cpu in $cpus; do runs+=("$cpu:"); done
    [[ " $cpus " == *" max "* ]] && runs+=("max:neon-i8mm")
    for r in "${runs[@]}"; do
        cpu=${r%%:*}; kern=${r#*:}
        tag="-cpu $cpu${kern:+ MOBILEMOE_KERNEL=$kern}"
        f="$W/$cpu${kern:+-$kern}"
        q=(qemu-aarch64 -cpu "$cpu")
        [[ -n $kern ]] && q+=(-E "MOBILEMOE_KERNEL=$kern")
        if "${q[@]}" "$runner" "${gen[@]}" --ids-out "$f.ids" > "$f.out" 2> "$f.err" && cmp -s "$W/x86.ids" "$f.ids"; then
            pass "$tag: generate: the same $(wc -w < "$f.ids") greedy token ids as x86"
        else
            cat "$f.err"; fail "$tag: generate: ids $(cat "$f.ids" 2>/dev/null) != x86 $(cat "$W/x86.ids")"
        fi
        if "${q[@]}" "$runner" "${fwd[@]}" --output "$f.npy" > "$f.run" 2>&1 && cmp -s "$W/x86.npy" "$f.npy"; then
            pass "$tag: run --tokens 8: logits equal x86's bit for bit"
        else
            cat "$f.run"; fail "$tag: run --tokens 8: logits differ from x86's"
        fi
        [[ -n $kern ]] && continue
        if "${q[@]}" "$runner" inspect "$model" > "$f.inspect" 2>&1 && grep -q "MobileMoEBackend" "$f.inspect" &&
           grep -q "reads MobileMoE blob format" "$f.inspect"; then
            pass "$tag: inspect ($(grep -o 'MMOE format v[0-9]*, [0-9]* nodes' "$f.inspect"))"
        else
            cat "$f.inspect"; fail "$tag: inspect"
        fi
        if "${q[@]}" "$runner" bench "$model" --raw --tokens 1 --iters 1 --warmup 0 > "$f.bench" 2>&1 &&
           grep -Eq '^ +1 +[0-9.]+ ' "$f.bench"; then
            pass "$tag: bench --raw --tokens 1"
        else
            cat "$f.bench"; fail "$tag: bench --raw --tokens 1"
        fi
    done
    echo "=== aarch64 end to end: $e2e_ok passed, $e2e_bad failed ($((SECONDS - t_e2e)) s, build and export included)"
    ((e2e_bad == 0)) || status=1
fi
exit $status
