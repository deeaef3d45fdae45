//! The checked-in generated code equals what the executorch wheel's flatc (24.3.25) generates.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn executorch_dir() -> Option<PathBuf> {
    let d = match std::env::var_os("EXECUTORCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => repo().join(".venv/lib/python3.11/site-packages/executorch"),
    };
    d.join("data/bin/flatc").is_file().then_some(d)
}

fn regen(args: &[&str], cwd: &Path, produced: &str, checked_in: &Path) {
    let Some(et) = executorch_dir() else {
        skip("flatc from the executorch wheel not found (run `make venv` or set EXECUTORCH_DIR)");
        return;
    };
    let out = std::env::temp_dir().join(format!("mmoe-regen-{}-{produced}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let st = Command::new(et.join("data/bin/flatc")).args(["--rust", "-o"]).arg(&out).args(args).current_dir(cwd).status().unwrap();
    assert!(st.success(), "flatc failed");
    let fresh = std::fs::read_to_string(out.join(produced)).unwrap();
    let kept = std::fs::read_to_string(checked_in).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    assert!(fresh == kept, "{} is stale: regenerate it with flatc {args:?}", checked_in.display());
}

#[test]
fn mobilemoe_fbs_generated_code_is_current() {
    let r = repo();
    regen(&["mobilemoe.fbs"], &r.join("schema"), "mobilemoe_generated.rs", &r.join("schema/src/generated/mobilemoe_generated.rs"));
}

#[test]
fn program_fbs_generated_code_is_current() {
    let r = repo();
    let Some(et) = executorch_dir() else {
        skip("executorch wheel not found (run `make venv` or set EXECUTORCH_DIR)");
        return;
    };
    regen(
        &["--gen-all", "program.fbs"],
        &et.join("exir/_serialize"),
        "program_generated.rs",
        &r.join("runner/src/generated/program_generated.rs"),
    );
}

/// A missing prerequisite: a visible skip, or (under `make test`, `MOBILEMOE_NO_SKIP=1`) a failure.
fn skip(msg: &str) {
    if std::env::var_os("MOBILEMOE_NO_SKIP").is_some_and(|v| v != "0") {
        panic!("MOBILEMOE_NO_SKIP is set, so this cannot be skipped: {msg}");
    }
    eprintln!("SKIPPED: {msg}");
}
