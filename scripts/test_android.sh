#!/usr/bin/env bash
# Checks the Android app (android_app/) as far as this machine allows (no android.jar, no d8, no
# NDK here; docs/android.md says what is and is not covered). Idempotent; installs the Debian
# packages it needs (aapt2 + framework-res.apk, kotlinc) only when missing.
#
#   1. aapt2 compiles and links res/ + AndroidManifest.xml against Android's framework-res.apk
#      and generates R.java; the linked manifest says package/minSdk/launcher activity.
#   2. The app's Java and Kotlin sources compile (javac, kotlinc) against small android.* stubs
#      (android_app/hosttest/stubs) and the generated R.
#   3. The Rust JNI crate (android_app/native) builds for the host; its exported Java_* symbols
#      equal the ones `javac -h` derives from MobileMoE.java.
#   4. A plain JVM loads the host .so through the app's own MobileMoE class and runs a real .pte:
#      the embedded default model that `make demo` runs (the trained Shakespeare MobileMoE,
#      python_export/mobilemoe_export/assets/default_model.pt), prompt "ROMEO:"; the greedy token
#      ids (and their text) must equal `mobilemoe generate`'s.
#
# Env: CARGO_TARGET_DIR (default: the workspace's target/, shared with `make build`),
#      ANDROID_TEST_WORK (scratch dir, default $CARGO_TARGET_DIR/android-test).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
APP="$ROOT/android_app"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
W="${ANDROID_TEST_WORK:-$CARGO_TARGET_DIR/android-test}"
PY="$ROOT/.venv/bin/python"
FRAMEWORK_RES=/usr/share/android-framework-res/framework-res.apk
PROMPT="ROMEO:"
MAX_NEW=24

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }
step() { echo; echo "== $*"; }

# ---------------------------------------------------------------- 0. tools
need_pkgs=()
command -v aapt2 >/dev/null || need_pkgs+=(aapt)
[[ -f $FRAMEWORK_RES ]] || need_pkgs+=(android-framework-res)
command -v kotlinc >/dev/null || need_pkgs+=(kotlin)
command -v javac >/dev/null || need_pkgs+=(openjdk-17-jdk-headless)
if ((${#need_pkgs[@]})); then
  step "installing Debian packages: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [[ $(id -u) == 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
rm -rf "$W"
mkdir -p "$W"/{res,gen,stubs,classes,hdr,host-classes}

# ---------------------------------------------------------------- 1. resources + manifest
step "aapt2: compile res/, link AndroidManifest.xml against framework-res.apk"
# AGP 8 takes the package from build.gradle.kts (namespace) and forbids it in the source
# manifest; this aapt2 (2.19) still wants the attribute, so add it the way the manifest merger does.
namespace=$(sed -n 's/^ *namespace *= *"\(.*\)".*/\1/p' "$APP/app/build.gradle.kts")
min_sdk=$(sed -n 's/^ *minSdk *= *\([0-9]*\).*/\1/p' "$APP/app/build.gradle.kts")
sed "s#<manifest xmlns:android=\"http://schemas.android.com/apk/res/android\">#<manifest xmlns:android=\"http://schemas.android.com/apk/res/android\" package=\"$namespace\">#" \
  "$APP/app/src/main/AndroidManifest.xml" > "$W/AndroidManifest.xml"
if aapt2 compile --dir "$APP/app/src/main/res" -o "$W/res/res.zip" &&
   aapt2 link -o "$W/app-res.apk" -I "$FRAMEWORK_RES" --manifest "$W/AndroidManifest.xml" \
     --min-sdk-version "$min_sdk" --target-sdk-version 29 --version-code 1 --version-name 0.1.0 \
     --java "$W/gen" -R "$W/res/res.zip" --auto-add-overlay; then
  ok "aapt2 compile + link (namespace $namespace, minSdk $min_sdk)"
else
  bad "aapt2 compile + link"
fi
badging=$(aapt2 dump badging "$W/app-res.apk" 2>/dev/null || true)
grep -q "package: name='$namespace'" <<<"$badging" && grep -q "sdkVersion:'$min_sdk'" <<<"$badging" &&
  grep -q "launchable-activity: name='$namespace.MainActivity'" <<<"$badging" &&
  ok "linked manifest: package, minSdk, launcher activity" || bad "linked manifest: $badging"
[[ "$min_sdk" -ge 26 ]] && grep -q 'abiFilters += listOf("arm64-v8a")' "$APP/app/build.gradle.kts" &&
  ok "build.gradle.kts: minSdk >= 26, arm64-v8a only" || bad "build.gradle.kts: minSdk/abiFilters"

# ---------------------------------------------------------------- 2. Java + Kotlin compile
step "javac + kotlinc: app sources against android.* stubs"
java_srcs=$(find "$APP/app/src/main/java" -name '*.java')
kt_srcs=$(find "$APP/app/src/main/java" -name '*.kt')
if javac --release 8 -Xlint:all -Werror -d "$W/stubs" $(find "$APP/hosttest/stubs" -name '*.java') &&
   javac --release 8 -Xlint:all,-options -Werror -d "$W/classes" -cp "$W/stubs" $java_srcs $(find "$W/gen" -name '*.java'); then
  ok "javac: MobileMoE.java, TokenCallback.java, R.java"
else
  bad "javac of the app's Java sources"
fi
# kotlinc 1.3 (Debian) prints a JDK 13+ warning about -Xverify:none on every run; filter it.
if kotlinc -jvm-target 1.8 -Werror -cp "$W/stubs:$W/classes" -d "$W/classes" $kt_srcs 2> >(grep -v 'Xverify:none' >&2); then
  [[ -f "$W/classes/org/mobilemoe/app/MainActivity.class" ]] && ok "kotlinc: MainActivity.kt" || bad "kotlinc produced no MainActivity.class"
else
  bad "kotlinc: MainActivity.kt"
fi

# ---------------------------------------------------------------- 3. JNI crate + symbol names
step "cargo build --release -p mobilemoe-jni (host) + JNI symbol names vs javac -h"
# mobilemoe-runner too: its `mobilemoe` binary is the reference runner of step 4.
if (cd "$ROOT" && cargo build --release --quiet -p mobilemoe-jni -p mobilemoe-runner); then
  ok "cargo build mobilemoe-jni (host)"
else
  bad "cargo build mobilemoe-jni"
fi
SO="$CARGO_TARGET_DIR/release/libmobilemoe_jni.so"
javac -h "$W/hdr" -d "$W/hdr" "$APP/app/src/main/java/org/mobilemoe/MobileMoE.java" "$APP/app/src/main/java/org/mobilemoe/TokenCallback.java"
want=$(grep -ho 'JNICALL Java_[A-Za-z0-9_]*' "$W"/hdr/*.h | sed 's/JNICALL //' | sort -u)
have=$( { nm -D --defined-only "$SO" 2>/dev/null || true; } | awk '{print $3}' | grep '^Java_' | sort -u)
if [[ -n "$want" && "$want" == "$have" ]]; then
  ok "exported JNI symbols == javac -h ($(wc -l <<<"$want") methods)"
else
  bad "JNI symbols differ: javac -h: [$(echo $want)] .so: [$(echo $have)]"
fi

# native/build.rs's Android branch, run on a fake ExecuTorch prefix (no NDK here to link with):
# kernel-registration archive whole, the rest grouped, liblog + libc++_shared, and
# libc++_shared.so copied next to our library the way cargo-ndk expects.
bs=$(ls -t "$CARGO_TARGET_DIR"/release/build/mobilemoe-jni-*/build-script-build 2>/dev/null | head -1)
fake="$W/fake-android"
mkdir -p "$fake/prefix/lib" "$fake/sysroot" "$fake/jniLibs"
for l in executorch executorch_core optimized_native_cpu_ops_lib optimized_kernels portable_kernels extension_module_static; do
  : > "$fake/prefix/lib/lib$l.a"
done
echo fake > "$fake/sysroot/libc++_shared.so"
if [[ -n "$bs" ]] && CARGO_MANIFEST_DIR="$APP/native" CARGO_CFG_TARGET_OS=android EXECUTORCH_ANDROID_PREFIX="$fake/prefix" \
     CARGO_NDK_OUTPUT_PATH="$fake/jniLibs" CARGO_NDK_SYSROOT_LIBS_PATH="$fake/sysroot" "$bs" > "$fake/out.txt" &&
   grep -qx 'cargo:rustc-link-arg=-Wl,--whole-archive,-loptimized_native_cpu_ops_lib,--no-whole-archive' "$fake/out.txt" &&
   grep -qx 'cargo:rustc-link-arg=-lexecutorch_core' "$fake/out.txt" &&
   grep -qx 'cargo:rustc-link-lib=c++_shared' "$fake/out.txt" && grep -qx 'cargo:rustc-link-lib=log' "$fake/out.txt" &&
   [[ -f "$fake/jniLibs/arm64-v8a/libc++_shared.so" ]]; then
  ok "native/build.rs android branch (fake prefix): link lines + libc++_shared.so copy"
else
  bad "native/build.rs android branch"; cat "$fake/out.txt" 2>/dev/null || true
fi

# ---------------------------------------------------------------- 4. host JVM end to end
step "host JVM: HostTest through MobileMoE.java + libmobilemoe_jni.so on a real .pte"
javac --release 17 -Xlint:all -Werror -d "$W/host-classes" \
  "$APP/app/src/main/java/org/mobilemoe/MobileMoE.java" "$APP/app/src/main/java/org/mobilemoe/TokenCallback.java" \
  $(find "$APP/hosttest/src" -name '*.java')
# The embedded default model, exported as `make demo` does; cached per exporter version and
# checkpoint, shared with test_aarch64.sh (scripts/export_default_pte.sh).
MODEL=$("$ROOT/scripts/export_default_pte.sh")
TOKENIZER="$ROOT/python_export/mobilemoe_export/assets/tokenizer.json"
RUNNER="$CARGO_TARGET_DIR/release/mobilemoe"
# The reference: `mobilemoe generate` (greedy) on the same model, prompt and token budget. It
# prints prompt + generated text + "\n" on stdout, "generated tokens: N" on stderr, and writes the
# generated ids to runner.ids.
if "$RUNNER" generate "$MODEL" --tokenizer "$TOKENIZER" --prompt "$PROMPT" \
     --max-new-tokens "$MAX_NEW" --temperature 0 --ids-out "$W/runner.ids" > "$W/runner.out" 2> "$W/runner.err"; then
  ok "mobilemoe generate (reference)"
else
  cat "$W/runner.err"; bad "mobilemoe generate (reference)"
fi
# Strip the echoed prompt and the final newline, byte-exactly.
"$PY" - "$W/runner.out" "$PROMPT" "$W/runner.text" <<'PYEOF'
import sys
out, prompt, dst = open(sys.argv[1], "rb").read(), sys.argv[2].encode(), sys.argv[3]
assert out.startswith(prompt), "runner output does not start with the prompt"
body = out[len(prompt):]
body = body[:-1] if body.endswith(b"\n") else body
open(dst, "wb").write(body)
PYEOF
count=$(sed -n 's/.*generated tokens: \([0-9]*\).*/\1/p' "$W/runner.err" | head -1)
[[ -n "$count" ]] && ok "reference: $count greedy tokens" || { bad "no 'generated tokens:' in the runner's stderr"; count=-1; }
[[ -s "$W/runner.ids" && $(wc -w < "$W/runner.ids") == "$count" ]] &&
  ok "reference ids: $(cat "$W/runner.ids")" || bad "runner.ids does not hold $count ids: $(cat "$W/runner.ids" 2>/dev/null)"
if java -Xcheck:jni -Dmobilemoe.jni.library="$SO" -cp "$W/host-classes" org.mobilemoe.hosttest.HostTest \
     --model "$MODEL" --tokenizer "$TOKENIZER" --prompt "$PROMPT" --max-new-tokens "$MAX_NEW" \
     --expect-ids-file "$W/runner.ids" --expect-text-file "$W/runner.text" --expect-count "$count" \
     > "$W/hosttest.out" 2>&1; then
  ok "HostTest ($(tail -1 "$W/hosttest.out"))"
else
  bad "HostTest"
fi
# -Xcheck:jni reports misuse (unchecked exceptions, local-reference overflow) as warnings.
if grep -q 'WARNING in native method\|exceeds capacity' "$W/hosttest.out"; then
  bad "-Xcheck:jni warnings"; grep 'WARNING' "$W/hosttest.out" | head -5
else
  ok "no -Xcheck:jni warnings"
fi
sed 's/^/    /' "$W/hosttest.out"

echo
echo "test_android: $passed passed, $failed failed"
((failed == 0))
