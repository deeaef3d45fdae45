//! Error codes end to end (backend/src/error.rs): a panic inside a guarded call (fault injection,
//! feature `fault-injection` of the plugin crate) comes out as `Internal` from the C ABI, from the
//! bridge and from the real ExecuTorch runtime, and the process goes on; a real `.pte` whose
//! delegate blob is patched fails method load with `InvalidProgram` / `NotSupported` (the runtime
//! part needs MOBILEMOE_LEAK_PTE, which `make test-robustness` sets).

use mobilemoe_executorch::error::fault::panic_next;
use mobilemoe_executorch::{bridge, capi, ErrorCode};
use mobilemoe_fuzz_harness::blob::make_blob;
use mobilemoe_ops::{ScaleType, ScoreFunc, WeightBits};
use mobilemoe_runner::runtime::{et_error, Program};

fn last_error() -> String {
    // SAFETY: a NUL-terminated thread-local string.
    unsafe { std::ffi::CStr::from_ptr(capi::mobilemoe_last_error()) }.to_string_lossy().into_owned()
}

fn blob() -> Vec<u8> {
    make_blob(32, 32, 4, 2, 32, ScoreFunc::Sigmoid, WeightBits::Int4, true, 16, true, ScaleType::F32, 3).to_bytes()
}

#[test]
fn a_panic_in_the_c_abi_or_the_bridge_is_internal() {
    panic_next("mobilemoe_set_num_threads");
    assert_eq!(capi::mobilemoe_set_num_threads(2), ErrorCode::Internal.as_i32());
    let msg = last_error();
    assert!(msg.contains("panic") && msg.contains("injected fault"), "{msg}");
    assert_eq!(capi::mobilemoe_set_num_threads(2), 0, "the next call works");

    let b: &'static [u8] = Box::leak(blob().into_boxed_slice());
    let mut st = bridge::ffi::Status { code: -1, message: String::new() };
    panic_next("delegate_init");
    // SAFETY: the blob lives for the rest of the process.
    let d = unsafe { bridge::delegate_init(b.as_ptr(), b.len(), &mut st) };
    assert!(d.is_null());
    assert_eq!(ErrorCode::from_i32(st.code), Some(ErrorCode::Internal), "{}", st.message);
    assert_eq!(bridge::executorch_error(ErrorCode::Internal), et_error::INTERNAL);
    // SAFETY: as above.
    let d = unsafe { bridge::delegate_init(b.as_ptr(), b.len(), &mut st) };
    assert!(!d.is_null() && st.code == 0, "{}", st.message);
    // SAFETY: a live delegate.
    let dr = unsafe { &*d };
    let mut shapes = bridge::ffi::Shapes { dims: vec![], ranks: vec![] };
    panic_next("delegate_output_shapes");
    let st = bridge::delegate_output_shapes(dr, &[1, 32], &[2], &mut shapes);
    assert_eq!(ErrorCode::from_i32(st.code), Some(ErrorCode::Internal), "{}", st.message);
    let st = bridge::delegate_output_shapes(dr, &[1, 32], &[2], &mut shapes);
    assert_eq!(st.code, 0, "{}", st.message);
    // SAFETY: from delegate_init, freed once.
    unsafe { bridge::delegate_free(d) };
}

/// A missing prerequisite: a visible skip, or (under `make test`, `MOBILEMOE_NO_SKIP=1`) a failure.
fn skip(msg: &str) {
    if std::env::var_os("MOBILEMOE_NO_SKIP").is_some_and(|v| v != "0") {
        panic!("MOBILEMOE_NO_SKIP is set, so this cannot be skipped: {msg}");
    }
    eprintln!("SKIPPED: {msg}");
}

fn leak_pte() -> Option<std::path::PathBuf> {
    let p = std::env::var_os("MOBILEMOE_LEAK_PTE").map(std::path::PathBuf::from);
    if p.is_none() {
        skip("set MOBILEMOE_LEAK_PTE to a MobileMoE delegate .pte (tests/backend/make_pte.py; `make test-robustness` does)");
    }
    p
}

#[test]
fn a_panic_in_execute_reaches_executorch_as_internal() {
    let Some(pte) = leak_pte() else { return };
    let mut prog = Program::load(&pte).unwrap();
    let mut m = prog.method("forward").unwrap();
    let dims = m.meta().inputs[0].dims.clone();
    let x: Vec<f32> = (0..dims.iter().product::<i64>()).map(|i| (i as f32 * 0.3).sin()).collect();
    m.set_input_f32(0, &x, &dims).unwrap();
    // ExecuTorch calls the backend's execute on this thread.
    panic_next("delegate_execute");
    let e = m.execute().unwrap_err();
    assert_eq!(e.executorch_error(), Some(et_error::INTERNAL), "{e}");
    assert!(e.to_string().contains("Internal"), "{e}");
    m.set_input_f32(0, &x, &dims).unwrap();
    m.execute().expect("the program runs again after the caught panic");
}

/// The .pte with its (first) MobileMoE blob edited at `offset` (from the blob's magic).
fn patched(pte: &std::path::Path, offset: usize, bytes: &[u8], name: &str) -> std::path::PathBuf {
    let mut b = std::fs::read(pte).unwrap();
    let at = b.windows(4).position(|w| w == b"MMOE").expect("no MMOE blob in the .pte");
    b[at + offset..at + offset + bytes.len()].copy_from_slice(bytes);
    let out = std::env::temp_dir().join(format!("mmoe-codes-{}-{name}.pte", std::process::id()));
    std::fs::write(&out, b).unwrap();
    out
}

#[test]
fn a_bad_or_newer_blob_fails_method_load_with_its_code() {
    let Some(pte) = leak_pte() else { return };
    let cases = [
        ("newer_version", 4, 99u32.to_le_bytes().to_vec(), et_error::NOT_SUPPORTED, "NotSupported"),
        ("bad_flatbuffer_offset", 8, 7u64.to_le_bytes().to_vec(), et_error::INVALID_PROGRAM, "InvalidProgram"),
    ];
    for (name, offset, bytes, code, text) in cases {
        let p = patched(&pte, offset, &bytes, name);
        let mut prog = Program::load(&p).unwrap();
        let e = prog.method("forward").err().unwrap_or_else(|| panic!("{name}: method loaded"));
        assert_eq!(e.executorch_error(), Some(code), "{name}: {e}");
        assert!(e.to_string().contains(text), "{name}: {e}");
        let _ = std::fs::remove_file(&p);
    }
}
