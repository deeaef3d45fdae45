//! End to end: tests/backend/make_pte.py exports small programs with mobilemoe_export (and checks
//! them in Python's executorch.runtime with this library loaded by ctypes); here they run through
//! the Rust runner API and the `mobilemoe` CLI and must reproduce the eager outputs (the ops crate
//! through the C ABI). Skipped with a message when the venv is missing.

use mobilemoe_runner::runtime::{Program, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn npy_f32(p: &Path) -> (Vec<i64>, Vec<f32>) {
    let b = std::fs::read(p).unwrap();
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    let h = std::str::from_utf8(&b[10..10 + hl]).unwrap();
    assert!(h.contains("'<f4'"));
    let shape = h.split('(').nth(1).unwrap().split(')').next().unwrap();
    let dims = shape.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    (dims, b[10 + hl..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
}

/// Directory with the exported programs, or None (skip).
/// A missing prerequisite: a visible skip, or (under `make test`, `MOBILEMOE_NO_SKIP=1`) a failure.
fn skip(msg: &str) {
    if std::env::var_os("MOBILEMOE_NO_SKIP").is_some_and(|v| v != "0") {
        panic!("MOBILEMOE_NO_SKIP is set, so this cannot be skipped: {msg}");
    }
    eprintln!("SKIPPED: {msg}");
}

fn programs() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let py = repo().join(".venv/bin/python");
        let lib = std::env::current_exe().unwrap().parent()?.parent()?.join("libmobilemoe_executorch.so");
        if !py.exists() || !lib.exists() {
            skip(&format!("needs {} and {}", py.display(), lib.display()));
            return None;
        }
        let out = std::env::temp_dir().join(format!("mmoe-e2e-{}", std::process::id()));
        let o = Command::new(&py).arg(repo().join("tests/backend/make_pte.py")).arg(&out).arg("--lib").arg(&lib).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        if o.status.code() == Some(3) {
            skip(&format!("mobilemoe_export not importable:\n{text}"));
            return None;
        }
        assert!(o.status.success(), "make_pte.py failed:\n{text}");
        for l in text.lines().filter(|l| l.starts_with("python executorch.runtime")) {
            eprintln!("{l}");
        }
        Some(out)
    })
    .as_deref()
}

#[test]
fn rust_runner_reproduces_eager_outputs() {
    let Some(dir) = programs() else { return };
    for name in ["delegate.pte", "kernels.pte"] {
        let mut prog = Program::load(dir.join(name)).unwrap();
        assert_eq!(prog.method_names().unwrap(), vec!["forward".to_string()]);
        let mut m = prog.method("forward").unwrap();
        for t in [1, 5] {
            let (xd, x) = npy_f32(&dir.join(format!("input_{t}.npy")));
            let (yd, want) = npy_f32(&dir.join(format!("expected_{t}.npy")));
            m.set_input_f32(0, &x, &xd).unwrap();
            assert_eq!(m.execute().unwrap(), 1);
            match m.output(0).unwrap() {
                Value::F32 { dims, data } => {
                    assert_eq!(dims, yd);
                    let err = data.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    eprintln!("rust runner {name} T={t}: max|diff| = {err}");
                    assert!(err <= 1e-5, "{name} T={t}: max diff {err}");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn method_load_unload_many_times_without_growth() {
    let Some(dir) = programs() else { return };
    let (xd, x) = npy_f32(&dir.join("input_1.npy"));
    let cycle = || {
        let mut prog = Program::load(dir.join("delegate.pte")).unwrap();
        let mut m = prog.method("forward").unwrap();
        m.set_input_f32(0, &x, &xd).unwrap();
        m.execute().unwrap();
    };
    for _ in 0..50 {
        cycle();
    }
    let rss = || -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    // The other tests of this binary run in parallel threads of the same process: "after" is the
    // smallest RSS seen after each of the last three of six batches, so a neighbour's transient
    // allocation cannot fail this test, while a leak (which only grows) still does.
    let before = rss();
    let mut samples = vec![];
    for _ in 0..6 {
        for _ in 0..50 {
            cycle();
        }
        samples.push(rss());
    }
    let after = *samples[3..].iter().min().unwrap();
    eprintln!("RSS before {before} KiB, after 150-300 program+method load/execute/destroy {samples:?} KiB");
    assert!(after <= before + 4096, "RSS grew from {before} to {after} KiB ({samples:?})");
}

#[test]
fn unregistered_backend_missing_file_and_non_pte_are_clear_errors() {
    let missing = Program::load("/nonexistent/model.pte").err().unwrap().to_string();
    assert!(missing.contains("no such file"), "{missing}");
    let not_pte = Program::load(repo().join("Cargo.toml")).err().unwrap().to_string();
    assert!(not_pte.contains("not an ExecuTorch program"), "{not_pte}");
    let Some(dir) = programs() else { return };
    let mut b = std::fs::read(dir.join("delegate.pte")).unwrap();
    let pat = b"MobileMoEBackend";
    let mut n = 0;
    for i in 0..b.len() - pat.len() {
        if &b[i..i + pat.len()] == pat {
            b[i + pat.len() - 1] = b'X';
            n += 1;
        }
    }
    assert!(n > 0);
    let p = dir.join("foreign_backend.pte");
    std::fs::write(&p, b).unwrap();
    let e = Program::load(&p).err().unwrap().to_string();
    assert!(e.contains("MobileMoEBackenX") && e.contains("not registered"), "{e}");
}

#[test]
fn cli_inspect_run_bench() {
    let exe = env!("CARGO_BIN_EXE_mobilemoe");
    let help = Command::new(exe).arg("--help").output().unwrap();
    assert!(help.status.success());
    for sub in ["inspect", "run", "bench"] {
        assert!(Command::new(exe).args([sub, "--help"]).output().unwrap().status.success());
    }
    let o = Command::new(exe).args(["run", "/nonexistent.pte"]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no such file"));
    let Some(dir) = programs() else { return };
    let o = Command::new(exe).arg("inspect").arg(dir.join("delegate.pte")).output().unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && s.contains("MobileMoEBackend") && s.contains("MMOE format v5"), "{s}");
    let out = dir.join("cli_out.npy");
    let o = Command::new(exe)
        .arg("run")
        .arg(dir.join("delegate.pte"))
        .arg("--input")
        .arg(dir.join("input_5.npy"))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (d1, a) = npy_f32(&out);
    let (d2, b) = npy_f32(&dir.join("expected_5.npy"));
    assert_eq!(d1, d2);
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-5));
    let o = Command::new(exe).arg("bench").arg(dir.join("kernels.pte")).args(["--tokens", "1,4", "--iters", "3"]).output().unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && s.contains("median ms") && s.contains("peak RSS"), "{s}");
}
