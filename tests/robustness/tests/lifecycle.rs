//! Init / execute / destroy cycles, for leak checkers (scripts/sanitize.sh runs this file under
//! LeakSanitizer and under valgrind memcheck). LEAK_CYCLES (default 1000) cycles each:
//! - `delegate_cycles`: a blob -> `Delegate` (what the backend's init builds) -> execute -> drop;
//! - `runtime_program_cycles`: the real ExecuTorch path (C++ BackendInterface init/execute/destroy via
//!   `runtime::Program`) on the .pte in MOBILEMOE_LEAK_PTE (made by tests/backend/make_pte.py);
//!   skipped with a message when unset.

use mobilemoe_fuzz_harness::blob::make_blob;
use mobilemoe_fuzz_harness::delegate::Delegate;
use mobilemoe_ops::{ScaleType, ScoreFunc, WeightBits};

fn cycles() -> usize {
    std::env::var("LEAK_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

#[test]
fn delegate_cycles() {
    let blob = make_blob(32, 32, 4, 2, 32, ScoreFunc::Sigmoid, WeightBits::Int4, true, 16, true, ScaleType::F32, 21).to_bytes();
    let x: Vec<f32> = (0..5 * 32).map(|i| (i as f32 * 0.37).sin()).collect();
    let n = cycles();
    for i in 0..n {
        let d = Delegate::from_vec(blob.clone()).unwrap();
        let t = 1 + i % 5;
        let mut out = vec![0f32; t * 16];
        d.execute(&[(&x[..t * 32], &[t as i64, 32])], &mut [&mut out]).unwrap();
        // A failing execute must not leak either.
        assert!(d.execute(&[(&x[..3], &[1, 32])], &mut [&mut out]).is_err());
    }
    eprintln!("{n} delegate init/execute/destroy cycles");
}

#[test]
fn runtime_program_cycles() {
    let Some(pte) = std::env::var_os("MOBILEMOE_LEAK_PTE") else {
        skip("set MOBILEMOE_LEAK_PTE to a MobileMoE .pte (tests/backend/make_pte.py; `make test-robustness` does)");
        return;
    };
    use mobilemoe_runner::runtime::Program;
    let meta = Program::load(&pte).unwrap().method_meta("forward").unwrap();
    let dims = meta.inputs[0].dims.clone();
    let numel: i64 = dims.iter().product();
    let x: Vec<f32> = (0..numel).map(|i| (i as f32 * 0.11).cos()).collect();
    let n = cycles();
    for _ in 0..n {
        let mut prog = Program::load(&pte).unwrap();
        let mut m = prog.method("forward").unwrap();
        m.set_input_f32(0, &x, &dims).unwrap();
        m.execute().unwrap();
        let _ = m.output(0).unwrap();
    }
    eprintln!("{n} program load / method init / execute / destroy cycles on {}", std::path::Path::new(&pte).display());
}

/// A missing prerequisite: a visible skip, or (under `make test`, `MOBILEMOE_NO_SKIP=1`) a failure.
fn skip(msg: &str) {
    if std::env::var_os("MOBILEMOE_NO_SKIP").is_some_and(|v| v != "0") {
        panic!("MOBILEMOE_NO_SKIP is set, so this cannot be skipped: {msg}");
    }
    eprintln!("SKIPPED: {msg}");
}
