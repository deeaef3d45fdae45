// Build script shared by the test crates outside the root workspace (tests/fuzz, tests/fuzz/harness,
// tests/robustness: `build = ".../build_rpath.rs"` in their Cargo.toml). The backend crate links the
// executorch wheel's libexecutorch.so; its rpath link-arg applies to the backend's own binaries only,
// so add the same rpath to ours (harmless when not found).
fn main() {
    // The repository root: the nearest ancestor of this package holding the `ops` crate.
    let manifest = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.ancestors().find(|d| d.join("ops/Cargo.toml").is_file()).expect("repository root above the package");
    let mut dirs = vec![];
    if let Some(d) = std::env::var_os("EXECUTORCH_DIR") {
        dirs.push(std::path::PathBuf::from(d).join("lib"));
    }
    if let Ok(rd) = std::fs::read_dir(root.join(".venv/lib")) {
        for e in rd.flatten() {
            dirs.push(e.path().join("site-packages/executorch/lib"));
        }
    }
    for d in dirs.into_iter().filter(|d| d.join("libexecutorch.so").is_file()) {
        let d = d.canonicalize().unwrap();
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", d.display());
    }
    println!("cargo:rerun-if-env-changed=EXECUTORCH_DIR");
}
