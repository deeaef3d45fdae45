//! Link setup of libmobilemoe_jni.so.
//!
//! The C++ halves (ExecuTorch Module runner: `mobilemoe-runner`; BackendInterface and kernels:
//! `mobilemoe-backend`) are compiled and bridged by those crates; this script adds what only the
//! final shared library needs:
//!
//! * host (Linux, for scripts/test_android.sh): the executorch wheel's standard aten kernels
//!   (`libexecutorch_kernels_optimized.so`, registered by its static initializers: kept with
//!   --no-as-needed) - a JVM, unlike Python, brings no kernels of its own.
//! * Android: ExecuTorch's static archives built with the NDK (docs/android.md), found under
//!   `$EXECUTORCH_ANDROID_PREFIX/lib`; the kernel-registration archives are linked whole (their
//!   static initializers are the registration), the rest as one group; plus liblog and
//!   libc++_shared, which is copied next to our library when built by cargo-ndk.
use std::env;
use std::path::{Path, PathBuf};

/// Archives whose static initializers register kernels: --whole-archive, or they are dropped.
const WHOLE_ARCHIVES: &[&str] = &["optimized_native_cpu_ops_lib", "quantized_ops_lib"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=EXECUTORCH_ANDROID_PREFIX");
    println!("cargo:rerun-if-env-changed=EXECUTORCH_DIR");
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "android" {
        android();
    } else {
        host();
    }
}

fn host() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let repo = manifest.join("../..").canonicalize().unwrap_or_else(|_| manifest.join("../.."));
    let mut candidates: Vec<PathBuf> = env::var_os("EXECUTORCH_DIR").map(PathBuf::from).into_iter().collect();
    if let Ok(rd) = std::fs::read_dir(repo.join(".venv/lib")) {
        for e in rd.flatten() {
            candidates.push(e.path().join("site-packages/executorch"));
        }
    }
    let Some(et) = candidates.iter().find(|c| c.join("lib/libexecutorch_kernels_optimized.so").is_file()) else {
        // mobilemoe-backend's and mobilemoe-runner's build scripts report the missing wheel with instructions.
        println!("cargo:warning=executorch wheel not found in {candidates:?}: the aten kernels are not linked");
        return;
    };
    let lib = et.join("lib");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed");
    println!("cargo:rustc-link-arg=-lexecutorch_kernels_optimized");
    println!("cargo:rustc-link-arg=-Wl,--pop-state");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

fn android() {
    let prefix = env::var_os("EXECUTORCH_ANDROID_PREFIX").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "\n\nmobilemoe-jni: set EXECUTORCH_ANDROID_PREFIX to ExecuTorch's Android install prefix \
             (e.g. executorch/cmake-out-android-arm64-v8a, with include/ and lib/*.a); see docs/android.md.\n\n"
        )
    });
    let lib = prefix.join("lib");
    let archives = list_archives(&lib);
    assert!(
        archives.iter().any(|a| a == "executorch_core"),
        "mobilemoe-jni: {} has no libexecutorch_core.a: not an ExecuTorch install prefix",
        lib.display()
    );
    println!("cargo:rustc-link-search=native={}", lib.display());
    for w in WHOLE_ARCHIVES {
        if archives.iter().any(|a| a == w) {
            println!("cargo:rustc-link-arg=-Wl,--whole-archive,-l{w},--no-whole-archive");
        }
    }
    // Everything else as one group: only what is referenced is pulled in, in any order.
    println!("cargo:rustc-link-arg=-Wl,--start-group");
    for a in archives.iter().filter(|a| !WHOLE_ARCHIVES.contains(&a.as_str())) {
        println!("cargo:rustc-link-arg=-l{a}");
    }
    println!("cargo:rustc-link-arg=-Wl,--end-group");
    println!("cargo:rustc-link-lib=log");
    println!("cargo:rustc-link-lib=c++_shared");
    // cargo-ndk: ship libc++_shared.so in the same jniLibs/<abi>/ folder as our library.
    if let (Some(out), Some(sysroot_libs)) = (env::var_os("CARGO_NDK_OUTPUT_PATH"), env::var_os("CARGO_NDK_SYSROOT_LIBS_PATH")) {
        let abi = env::var("CARGO_NDK_ANDROID_TARGET").unwrap_or_else(|_| "arm64-v8a".into());
        let dst = Path::new(&out).join(abi);
        std::fs::create_dir_all(&dst).expect("create jniLibs/<abi>");
        std::fs::copy(Path::new(&sysroot_libs).join("libc++_shared.so"), dst.join("libc++_shared.so")).expect("copy libc++_shared.so");
    }
}

/// `lib<name>.a` files of `dir`, as link names, sorted.
fn list_archives(dir: &Path) -> Vec<String> {
    let rd = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("mobilemoe-jni: cannot read {}: {e}", dir.display()));
    let mut v: Vec<String> = rd
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("lib").and_then(|s| s.strip_suffix(".a")).map(str::to_string)
        })
        .collect();
    v.sort();
    v
}
