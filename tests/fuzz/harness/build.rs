// The backend crate links the executorch wheel's libexecutorch.so; its rpath link-arg applies to
// the backend's own binaries only, so add the same rpath to ours (harmless when not found).
fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..");
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
