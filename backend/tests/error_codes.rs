//! Every failure reaches ExecuTorch with the error that names its cause: the code travels as a
//! number through the bridge (`Status`) and the C ABI (return value), and the C++ side maps it in
//! one place (`to_et_error`, checked here through `executorch_error_of`). The panic path
//! (fault injection) and the whole ExecuTorch runtime path are in tests/robustness/tests/error_codes.rs.

#[path = "../../schema/tests/common/mod.rs"]
mod common;
use common::*;
use mobilemoe_executorch::bridge::{self, ffi};
use mobilemoe_executorch::capi::*;
use mobilemoe_executorch::ErrorCode;

/// `executorch::runtime::Error` numbers (runtime/core/error.h of the wheel).
const ET_OK: u32 = 0x00;
const ET_INTERNAL: u32 = 0x01;
const ET_NOT_SUPPORTED: u32 = 0x10;
const ET_INVALID_ARGUMENT: u32 = 0x12;
const ET_MEMORY_ALLOCATION_FAILED: u32 = 0x21;
const ET_INVALID_PROGRAM: u32 = 0x23;

fn status() -> ffi::Status {
    ffi::Status { code: -1, message: String::new() }
}

/// `delegate_init` on `blob` (kept alive for the delegate's life by leaking it: a test).
fn init(blob: Vec<u8>) -> (*mut mobilemoe_executorch::delegate::Delegate, ffi::Status) {
    let blob: &'static [u8] = Box::leak(blob.into_boxed_slice());
    let mut st = status();
    // SAFETY: the blob lives for the rest of the process.
    let d = unsafe { bridge::delegate_init(blob.as_ptr(), blob.len(), &mut st) };
    (d, st)
}

fn code_of(st: &ffi::Status) -> Option<ErrorCode> {
    ErrorCode::from_i32(st.code)
}

#[test]
fn the_cpp_mapping_of_every_code() {
    let want = [
        (ErrorCode::InvalidArgument, ET_INVALID_ARGUMENT),
        (ErrorCode::Internal, ET_INTERNAL),
        (ErrorCode::InvalidProgram, ET_INVALID_PROGRAM),
        (ErrorCode::NotSupported, ET_NOT_SUPPORTED),
        (ErrorCode::OutOfMemory, ET_MEMORY_ALLOCATION_FAILED),
    ];
    for (code, et) in want {
        assert_eq!(bridge::executorch_error(code), et, "{code:?}");
    }
    assert_eq!(ffi::executorch_error_of(0), ET_OK);
    // A number no Rust code returns: a bug, so Internal (not a guess at a bad input).
    for unknown in [-1, 6, 99, i32::MAX] {
        assert_eq!(ffi::executorch_error_of(unknown), ET_INTERNAL, "{unknown}");
    }
}

#[test]
fn a_malformed_blob_is_invalid_program_and_a_newer_version_not_supported() {
    let good = builder(&layer(3)).finish();
    let (d, st) = init(good.clone());
    assert!(!d.is_null() && st.code == 0, "{}", st.message);
    // SAFETY: from delegate_init, freed once.
    unsafe { bridge::delegate_free(d) };
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    let mut bad_offset = good.clone();
    bad_offset[12..16].copy_from_slice(&u32::MAX.to_le_bytes()); // the flatbuffer offset (high half)
    for (what, blob) in [("truncated", good[..100].to_vec()), ("bad magic", bad_magic), ("bad offset", bad_offset)] {
        let (d, st) = init(blob);
        assert!(d.is_null(), "{what}: accepted");
        assert_eq!(code_of(&st), Some(ErrorCode::InvalidProgram), "{what}: {}", st.message);
        assert!(!st.message.is_empty());
    }
    let mut newer = good.clone();
    newer[4..8].copy_from_slice(&(mobilemoe_schema::FORMAT_VERSION + 1).to_le_bytes());
    let (d, st) = init(newer);
    assert!(d.is_null());
    assert_eq!(code_of(&st), Some(ErrorCode::NotSupported), "{}", st.message);
    assert!(st.message.contains("format version"), "{}", st.message);
    // A null blob is a bad argument of the call, not a bad program.
    let mut st = status();
    // SAFETY: null is allowed (and refused).
    assert!(unsafe { bridge::delegate_init(std::ptr::null(), 0, &mut st) }.is_null());
    assert_eq!(code_of(&st), Some(ErrorCode::InvalidArgument), "{}", st.message);
}

#[test]
fn bad_inputs_are_invalid_argument_and_an_unknown_dtype_not_supported() {
    let (d, st) = init(builder(&layer(4)).finish());
    assert_eq!(st.code, 0, "{}", st.message);
    // SAFETY: a live delegate from delegate_init.
    let dref = unsafe { &*d };
    let mut shapes = ffi::Shapes { dims: vec![], ranks: vec![] };
    // x [1, 2, 64] -> [1, 2, 48]
    let st = bridge::delegate_output_shapes(dref, &[1, 2, 64], &[3], &mut shapes);
    assert_eq!((st.code, shapes.dims.as_slice(), shapes.ranks.as_slice()), (0, &[1i64, 2, 48][..], &[3u32][..]), "{}", st.message);
    // a wrong last dimension, ranks that do not add up
    let st = bridge::delegate_output_shapes(dref, &[1, 2, 63], &[3], &mut shapes);
    assert_eq!(code_of(&st), Some(ErrorCode::InvalidArgument), "{}", st.message);
    assert!(st.message.contains("shape"), "{}", st.message);
    let st = bridge::delegate_output_shapes(dref, &[1, 2, 64], &[4], &mut shapes);
    assert_eq!(code_of(&st), Some(ErrorCode::InvalidArgument), "{}", st.message);
    let x = vec![0.5f32; 2 * 64];
    let mut y = vec![0f32; 2 * 48];
    let run = |dtype: i32, dims: &[i64], y: &mut [f32]| {
        // SAFETY: x holds 128 f32 (read as the given dtype only for 4 = i64: 64 values, within
        // the buffer), y is writable for its length.
        unsafe {
            bridge::delegate_execute(
                dref,
                &[x.as_ptr() as usize],
                &[dtype],
                dims,
                &[dims.len() as u32],
                &[y.as_mut_ptr() as usize],
                &[y.len()],
            )
        }
    };
    assert_eq!(run(6, &[1, 2, 64], &mut y).code, 0);
    assert!(y.iter().any(|&v| v != 0.0));
    // an output buffer of the wrong size
    let st = run(6, &[1, 2, 64], &mut y[..95]);
    assert_eq!(code_of(&st), Some(ErrorCode::InvalidArgument), "{}", st.message);
    // int64 data where the graph takes float32: a bad argument
    let st = run(4, &[1, 1, 64], &mut y[..48]);
    assert_eq!(code_of(&st), Some(ErrorCode::InvalidArgument), "{}", st.message);
    // a dtype the delegate does not take at all (int32)
    let st = run(3, &[1, 2, 64], &mut y);
    assert_eq!(code_of(&st), Some(ErrorCode::NotSupported), "{}", st.message);
    // SAFETY: from delegate_init, freed once.
    unsafe { bridge::delegate_free(d) };
}

/// The C ABI returns the code itself: an op input with a wrong shape is InvalidArgument (1).
#[test]
fn c_abi_returns_the_code() {
    let l = layer(5);
    let x = vec![0.25f32; 3 * 64];
    let mut y = vec![0f32; 3 * 48];
    let mut a = MobileMoeLinearArgs {
        x: x.as_ptr(),
        x_len: x.len() as u64,
        rows: 3,
        weight: l.lin.data.as_ptr(),
        weight_len: l.lin.data.len() as u64,
        scales: l.lin.scales.as_ptr(),
        scales_len: l.lin.scales.len() as u64,
        bias: std::ptr::null(),
        bias_len: 0,
        in_features: 64,
        out_features: 48,
        group_size: 32,
        weight_bits: 4,
        exact: 0,
        out: y.as_mut_ptr(),
        out_len: y.len() as u64,
    };
    // SAFETY (all calls): every pointer covers its length.
    assert_eq!(unsafe { mobilemoe_int4_linear(&a) }, 0);
    a.x_len -= 64; // x is [2, 64] while rows says 3
    assert_eq!(unsafe { mobilemoe_int4_linear(&a) }, ErrorCode::InvalidArgument.as_i32());
    let msg = unsafe { std::ffi::CStr::from_ptr(mobilemoe_last_error()) }.to_string_lossy().into_owned();
    assert!(msg.starts_with("mobilemoe_int4_linear: ") && msg.contains("linear input"), "{msg}");
    a.x_len += 64;
    a.weight_bits = 3;
    assert_eq!(unsafe { mobilemoe_int4_linear(&a) }, ErrorCode::InvalidArgument.as_i32());
}
