//! Where the ExecuTorch headers and libraries come from, and how C++ against them is compiled
//! and linked: shared by the build scripts of `mobilemoe-backend` (the plugin) and
//! `mobilemoe-runner` (included with `#[path]`), so both compile with the same flags.
//!
//! Target-aware:
//! * host (TARGET == HOST): headers + `lib/libexecutorch.so` of the wheel (`EXECUTORCH_DIR` or
//!   `.venv`), linked with an rpath to it.
//! * Android (`*-linux-android`): headers from `$EXECUTORCH_ANDROID_PREFIX/include`; nothing of
//!   ExecuTorch is linked here (no shared libexecutorch exists for Android: the static archives are
//!   linked into the JNI library by `android_app/native/build.rs`). The C++ compiler is the one
//!   cc-rs finds for the target (cargo-ndk sets `CXX_<target>` to the NDK's clang++).
//! * other cross targets (e.g. `aarch64-unknown-linux-gnu`): headers from `EXECUTORCH_DIR`
//!   (default: the host wheel's `include/`; the headers are arch-neutral), compiled with
//!   `CXX_<target>` / `TARGET_CXX` or else `<arch>-linux-gnu-g++`. libexecutorch is linked only when
//!   `EXECUTORCH_LIB_DIR` (a directory with that target's `libexecutorch.so`) is given; without
//!   it the Rust + C++ objects and the rlib build, but the cdylib/bins/tests do not resolve
//!   ExecuTorch's symbols.

use std::env;
use std::path::{Path, PathBuf};

/// What a build script needs to compile and link against ExecuTorch.
pub struct ExecuTorch {
    /// The package being built (for messages), e.g. `mobilemoe-backend`.
    pub package: String,
    /// The wheel or install prefix: headers under `include/`.
    pub root: PathBuf,
    /// The directory of the `libexecutorch.so` to link, if any (see the top of this file).
    pub lib: Option<PathBuf>,
    pub target: String,
    pub cross: bool,
    pub android: bool,
}

impl ExecuTorch {
    /// Finds ExecuTorch for the target being built; `workspace` is the repository root.
    pub fn locate(workspace: &Path) -> Self {
        let package = env::var("CARGO_PKG_NAME").unwrap_or_default();
        let target = env::var("TARGET").unwrap();
        let cross = target != env::var("HOST").unwrap();
        let android = env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("android");
        println!("cargo:rerun-if-env-changed=EXECUTORCH_LIB_DIR");
        let (root, lib) = if android {
            (find_android_prefix(&package), None)
        } else if !cross {
            let root = find_wheel(&package, workspace, true);
            let lib = root.join("lib");
            (root, Some(lib))
        } else {
            let lib = env::var_os("EXECUTORCH_LIB_DIR").map(PathBuf::from);
            if let Some(l) = &lib {
                assert!(l.join("libexecutorch.so").is_file(), "{package}: EXECUTORCH_LIB_DIR={} has no libexecutorch.so", l.display());
            }
            (find_wheel(&package, workspace, false), lib)
        };
        ExecuTorch { package, root, lib, target, cross, android }
    }

    /// A C++17 build of the cxx bridge `bridge_rs` with ExecuTorch's include dirs, defines and
    /// warning flags, and the target's C++ compiler.
    pub fn cxx_build(&self, bridge_rs: &str) -> cc::Build {
        let inc = self.root.join("include");
        let mut b = cxx_build::bridge(bridge_rs);
        if self.cross && !self.android && self.target.ends_with("-linux-gnu") {
            // Without an explicit CXX for the target, cc-rs would fall back to a plain `CXX` (the
            // host's compiler) if one is set: use the Debian cross compiler's name instead.
            let target = &self.target;
            let tu = target.replace('-', "_");
            let set = [format!("CXX_{target}"), format!("CXX_{tu}"), "TARGET_CXX".to_string()].iter().any(|v| env::var_os(v).is_some());
            if !set {
                let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap();
                b.compiler(format!("{arch}-linux-gnu-g++"));
            }
        }
        b.std("c++17")
            .include(&inc)
            .include(inc.join("executorch/runtime/core/portable_type/c10"))
            .define("C10_USING_CUSTOM_GENERATED_MACROS", None)
            .define("ET_EVENT_TRACER_ENABLED", None)
            .flag_if_supported("-Wno-unused-parameter")
            .flag_if_supported("-Wno-deprecated-declarations")
            .flag_if_supported("-Wno-missing-field-initializers")
            .flag_if_supported("-fvisibility=hidden");
        b
    }

    /// Links `libexecutorch.so` (host, or a cross target with `EXECUTORCH_LIB_DIR`) with an rpath
    /// to it, and for the targets `kinds` (`bins`, `tests`) also the wheel's standard aten kernels,
    /// which are only reached through registration: kept with --no-as-needed. Returns false when
    /// nothing is linked (Android, or a cross build without `EXECUTORCH_LIB_DIR`).
    pub fn link(&self, workspace: &Path, kinds: &[&str]) -> bool {
        println!("cargo:rustc-env=MOBILEMOE_EXECUTORCH_DIR={}", self.root.display());
        let Some(lib) = &self.lib else {
            if !self.android {
                println!(
                    "cargo:warning={}: cross build for {}: libexecutorch is not linked \
                     (set EXECUTORCH_LIB_DIR to that target's lib/ to link the cdylib, bins and tests)",
                    self.package, self.target
                );
            }
            return false;
        };
        println!("cargo:rustc-link-search=native={}", lib.display());
        for kind in kinds {
            println!("cargo:rustc-link-arg-{kind}=-Wl,--push-state,--no-as-needed");
            println!("cargo:rustc-link-arg-{kind}=-lexecutorch_kernels_optimized");
            println!("cargo:rustc-link-arg-{kind}=-Wl,--pop-state");
        }
        println!("cargo:rustc-link-lib=dylib=executorch");
        // $ORIGIN-relative first (target/release/{lib,bin} and target/release/deps/{tests} -> the
        // repository's .venv), so that a built library keeps working when the checkout moves; the
        // absolute path last (other target dirs). LD_LIBRARY_PATH overrides neither need.
        if let Ok(rel) = lib.strip_prefix(workspace) {
            println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../../{}", rel.display());
            println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../../../{}", rel.display());
        }
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN");
        true
    }
}

/// The executorch wheel (or an `EXECUTORCH_DIR` laid out like it). `need_lib`: also require
/// `lib/libexecutorch.so` (host builds, which link it); a cross build only takes the headers.
fn find_wheel(package: &str, workspace: &Path, need_lib: bool) -> PathBuf {
    println!("cargo:rerun-if-env-changed=EXECUTORCH_DIR");
    let candidates: Vec<PathBuf> = match env::var_os("EXECUTORCH_DIR") {
        Some(d) => vec![PathBuf::from(d)],
        None => {
            let mut v = vec![workspace.join(".venv/lib/python3.11/site-packages/executorch")];
            // Any python3.x venv layout.
            if let Ok(rd) = std::fs::read_dir(workspace.join(".venv/lib")) {
                for e in rd.flatten() {
                    v.push(e.path().join("site-packages/executorch"));
                }
            }
            v
        }
    };
    for c in &candidates {
        if c.join("include/executorch/runtime/backend/interface.h").is_file() && (!need_lib || c.join("lib/libexecutorch.so").is_file()) {
            return c.clone();
        }
    }
    let what = if need_lib { "headers + lib/libexecutorch.so" } else { "headers" };
    panic!(
        "\n\n{package}: the executorch wheel ({what}) was not found.\n\
         Looked in: {candidates:?}\n\
         Run `make venv` at the repository root (creates .venv with torch 2.14.0 + executorch 1.5.1),\n\
         or set EXECUTORCH_DIR=<site-packages>/executorch.\n\n"
    );
}

/// Android: the ExecuTorch install prefix built with the NDK (docs/android.md, step 1).
fn find_android_prefix(package: &str) -> PathBuf {
    println!("cargo:rerun-if-env-changed=EXECUTORCH_ANDROID_PREFIX");
    let prefix = env::var_os("EXECUTORCH_ANDROID_PREFIX").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "\n\n{package}: building for Android needs EXECUTORCH_ANDROID_PREFIX, ExecuTorch's \
             Android install prefix (e.g. executorch/cmake-out-android-arm64-v8a, with include/ and lib/*.a); \
             see docs/android.md.\n\n"
        )
    });
    assert!(
        prefix.join("include/executorch/runtime/backend/interface.h").is_file(),
        "{package}: {}/include has no executorch/runtime/backend/interface.h: not an ExecuTorch install prefix",
        prefix.display()
    );
    prefix
}
