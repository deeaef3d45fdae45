//! Builds the C++ runner (`cpp/runner.cpp`, ExecuTorch's `Module`) with the same ExecuTorch
//! location and flags as the plugin (`../backend/build_executorch.rs`), and links the `mobilemoe`
//! binary and the tests against libexecutorch plus the standard aten kernels.
//!
//! Registration of the MobileMoE backend and kernels survives linking because it is never left to
//! a static initializer: `runtime::Program::load` calls the plugin crate's `register()`.

#[path = "../backend/build_executorch.rs"]
mod build_executorch;

use std::env;
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest.parent().unwrap().to_path_buf();
    let et = build_executorch::ExecuTorch::locate(&workspace);
    et.cxx_build("src/bridge.rs").file("cpp/runner.cpp").include(manifest.join("cpp")).compile("mobilemoe_runner_cpp");
    for f in ["cpp/runner.cpp", "cpp/runner.h", "src/bridge.rs", "../backend/build_executorch.rs"] {
        println!("cargo:rerun-if-changed={f}");
    }
    et.link(&workspace, &["bins", "tests"]);
}
