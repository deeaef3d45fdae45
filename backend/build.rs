//! Builds the C++ half (BackendInterface, custom-op kernels, runner) against the executorch wheel
//! and generates the kernels' argument layout from `schema/ops.txt`.
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
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The executorch wheel (or an `EXECUTORCH_DIR` laid out like it). `need_lib`: also require
/// `lib/libexecutorch.so` (host builds, which link it); a cross build only takes the headers.
fn find_executorch(workspace: &Path, need_lib: bool) -> PathBuf {
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
        "\n\nmobilemoe-backend: the executorch wheel ({what}) was not found.\n\
         Looked in: {candidates:?}\n\
         Run `make venv` at the repository root (creates .venv with torch 2.14.0 + executorch 1.5.1),\n\
         or set EXECUTORCH_DIR=<site-packages>/executorch.\n\n"
    );
}

/// Android: the ExecuTorch install prefix built with the NDK (docs/android.md, step 1).
fn find_android_prefix() -> PathBuf {
    println!("cargo:rerun-if-env-changed=EXECUTORCH_ANDROID_PREFIX");
    let prefix = env::var_os("EXECUTORCH_ANDROID_PREFIX").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "\n\nmobilemoe-backend: building for Android needs EXECUTORCH_ANDROID_PREFIX, ExecuTorch's \
             Android install prefix (e.g. executorch/cmake-out-android-arm64-v8a, with include/ and lib/*.a); \
             see docs/android.md.\n\n"
        )
    });
    assert!(
        prefix.join("include/executorch/runtime/backend/interface.h").is_file(),
        "mobilemoe-backend: {}/include has no executorch/runtime/backend/interface.h: not an ExecuTorch install prefix",
        prefix.display()
    );
    prefix
}

#[derive(Debug)]
struct Arg {
    ty: String,
    name: String,
}

/// Parses `name(Type a, Type b, ...) -> Tensor` lines of schema/ops.txt.
fn parse_ops(text: &str) -> Vec<(String, Vec<Arg>)> {
    let mut ops = vec![];
    for (ln, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let open = line.find('(').unwrap_or_else(|| panic!("ops.txt:{}: no '('", ln + 1));
        let close = line.rfind(')').unwrap_or_else(|| panic!("ops.txt:{}: no ')'", ln + 1));
        let name = line[..open].trim().to_string();
        let mut args = vec![];
        for a in line[open + 1..close].split(',') {
            let a = a.trim();
            if a.is_empty() || a == "*" {
                continue;
            }
            let (ty, nm) = a.rsplit_once(' ').unwrap_or_else(|| panic!("ops.txt:{}: bad argument {a:?}", ln + 1));
            let nm = nm.split('=').next().unwrap().trim();
            args.push(Arg { ty: ty.trim().to_string(), name: nm.to_string() });
        }
        ops.push((name, args));
    }
    ops
}

fn kind(ty: &str) -> &'static str {
    match ty {
        "Tensor" => "ArgKind::Tensor",
        "Tensor?" => "ArgKind::OptTensor",
        "int" | "SymInt" => "ArgKind::Int",
        "float" => "ArgKind::Double",
        "bool" => "ArgKind::Bool",
        "str" => "ArgKind::String",
        other => panic!("schema/ops.txt: argument type {other:?} is not supported by the kernel generator"),
    }
}

fn gen_header(ops: &[(String, Vec<Arg>)]) -> String {
    let mut s = String::new();
    s.push_str("// Generated by backend/build.rs from schema/ops.txt. Do not edit.\n#pragma once\n#include <cstddef>\n\n");
    s.push_str("namespace mobilemoe_gen {\nenum class ArgKind { Tensor, OptTensor, Int, Double, Bool, String };\n\n");
    for (name, args) in ops {
        writeln!(s, "namespace {name} {{").unwrap();
        writeln!(s, "constexpr const char* kOpName = \"mobilemoe::{name}.out\";").unwrap();
        for (i, a) in args.iter().enumerate() {
            writeln!(s, "constexpr size_t {} = {i};  // {}", a.name, a.ty).unwrap();
        }
        writeln!(s, "constexpr size_t out = {};  // Tensor(a!)", args.len()).unwrap();
        writeln!(s, "constexpr size_t kNumArgs = {};  // schema args + out", args.len() + 1).unwrap();
        let kinds: Vec<&str> = args.iter().map(|a| kind(&a.ty)).chain(["ArgKind::Tensor"]).collect();
        writeln!(s, "constexpr ArgKind kKinds[kNumArgs] = {{{}}};", kinds.join(", ")).unwrap();
        let names: Vec<String> = args.iter().map(|a| format!("\"{}\"", a.name)).chain(["\"out\"".to_string()]).collect();
        writeln!(s, "constexpr const char* kNames[kNumArgs] = {{{}}};", names.join(", ")).unwrap();
        writeln!(s, "}}  // namespace {name}\n").unwrap();
    }
    s.push_str("}  // namespace mobilemoe_gen\n");
    s
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest.parent().unwrap().to_path_buf();
    let target = env::var("TARGET").unwrap();
    let cross = target != env::var("HOST").unwrap();
    let android = env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("android");
    println!("cargo:rerun-if-env-changed=EXECUTORCH_LIB_DIR");
    // `et`: where the headers come from (`et/include`). `lib`: the directory of the libexecutorch.so
    // to link, if any (see the top of this file).
    let (et, lib) = if android {
        (find_android_prefix(), None)
    } else if !cross {
        let et = find_executorch(&workspace, true);
        let lib = et.join("lib");
        (et, Some(lib))
    } else {
        let lib = env::var_os("EXECUTORCH_LIB_DIR").map(PathBuf::from);
        if let Some(l) = &lib {
            assert!(l.join("libexecutorch.so").is_file(), "mobilemoe-backend: EXECUTORCH_LIB_DIR={} has no libexecutorch.so", l.display());
        }
        (find_executorch(&workspace, false), lib)
    };
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());

    let ops_txt = workspace.join("schema/ops.txt");
    println!("cargo:rerun-if-changed={}", ops_txt.display());
    let ops = parse_ops(&std::fs::read_to_string(&ops_txt).expect("read schema/ops.txt"));
    for required in ["moe_ffn", "int4_linear"] {
        assert!(ops.iter().any(|(n, _)| n == required), "schema/ops.txt has no {required} op");
    }
    std::fs::write(out.join("mobilemoe_ops_gen.h"), gen_header(&ops)).unwrap();

    let inc = et.join("include");
    let mut b = cxx_build::bridge("src/bridge.rs");
    if cross && !android && target.ends_with("-linux-gnu") {
        // Without an explicit CXX for the target, cc-rs would fall back to a plain `CXX` (the
        // host's compiler) if one is set: use the Debian cross compiler's name instead.
        let tu = target.replace('-', "_");
        let set = [format!("CXX_{target}"), format!("CXX_{tu}"), "TARGET_CXX".to_string()].iter().any(|v| env::var_os(v).is_some());
        if !set {
            let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap();
            b.compiler(format!("{arch}-linux-gnu-g++"));
        }
    }
    b.file("cpp/backend.cpp")
        .file("cpp/runner.cpp")
        .std("c++17")
        .include(&inc)
        .include(inc.join("executorch/runtime/core/portable_type/c10"))
        .include(manifest.join("cpp"))
        .include(&out)
        .define("C10_USING_CUSTOM_GENERATED_MACROS", None)
        .define("ET_EVENT_TRACER_ENABLED", None)
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .flag_if_supported("-Wno-missing-field-initializers")
        .flag_if_supported("-fvisibility=hidden");
    b.compile("mobilemoe_cpp");
    for f in ["cpp/backend.cpp", "cpp/runner.cpp", "cpp/mobilemoe.h", "src/bridge.rs"] {
        println!("cargo:rerun-if-changed={f}");
    }

    println!("cargo:rustc-env=MOBILEMOE_EXECUTORCH_DIR={}", et.display());
    let Some(lib) = lib else {
        if !android {
            println!(
                "cargo:warning=mobilemoe-backend: cross build for {target}: libexecutorch is not linked \
                 (set EXECUTORCH_LIB_DIR to that target's lib/ to link the cdylib, bins and tests)"
            );
        }
        return;
    };
    println!("cargo:rustc-link-search=native={}", lib.display());
    // The runner binary and the tests need the standard aten kernels, which are only reached
    // through registration: keep them with --no-as-needed. The plugin cdylib does not link them
    // (the host process - Python, an app - brings its own kernel set).
    for kind in ["bins", "tests"] {
        println!("cargo:rustc-link-arg-{kind}=-Wl,--push-state,--no-as-needed");
        println!("cargo:rustc-link-arg-{kind}=-lexecutorch_kernels_optimized");
        println!("cargo:rustc-link-arg-{kind}=-Wl,--pop-state");
    }
    println!("cargo:rustc-link-lib=dylib=executorch");
    // $ORIGIN-relative first (target/release/{lib,bin} and target/release/deps/{tests} -> the
    // repository's .venv), so that a built library keeps working when the checkout moves; the
    // absolute path last (other target dirs). LD_LIBRARY_PATH overrides neither need.
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(|p| p.to_path_buf());
    if let Some(rel) = repo.as_ref().and_then(|r| lib.strip_prefix(r).ok()) {
        println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../../{}", rel.display());
        println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../../../{}", rel.display());
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN");
}
