//! The cxx bridge between the C++ half (BackendInterface, kernels) and Rust. The runner's bridge
//! (ExecuTorch's `Module`) lives in the `mobilemoe-runner` crate.
//! Every fallible Rust function here returns a [`ffi::Status`]: an [`ErrorCode`] as a number and
//! the message. Panics are caught (`Internal`). The C++ side maps the code to an
//! `executorch::runtime::Error` in one place (`to_et_error`, cpp/backend.cpp) and logs the message;
//! no exception is used for these errors.

use crate::delegate::{Delegate, Input};
use crate::error::{catch, Error, ErrorCode, Result};
use crate::logging::runtime_log;

#[cxx::bridge(namespace = "mobilemoe")]
pub mod ffi {
    /// Output shapes: dims of all outputs, concatenated; `ranks[i]` dims belong to output i.
    struct Shapes {
        dims: Vec<i64>,
        ranks: Vec<u32>,
    }

    /// A span (MoE phase, layer) of one delegate execution, for ExecuTorch's EventTracer
    /// (profiling, src/profiling/phases.rs); times in ns since the execution started.
    struct PhaseRecord {
        name: String,
        layer: i64,
        start_ns: u64,
        end_ns: u64,
    }

    /// The outcome of a bridge call: `code` 0 = ok, else an `ErrorCode` (src/error.rs: 1 invalid
    /// argument, 2 internal, 3 invalid program, 4 not supported, 5 out of memory) and its message.
    struct Status {
        code: i32,
        message: String,
    }

    extern "Rust" {
        /// ExecuTorch's PAL log hook (backend.cpp) forwards every runtime log line here.
        fn runtime_log(level: u8, file: &str, line: usize, msg: &[u8]);
        type Delegate;
        /// A new delegate (free it with `delegate_free`), or null with `status` set.
        unsafe fn delegate_init(data: *const u8, len: usize, status: &mut Status) -> *mut Delegate;
        unsafe fn delegate_free(d: *mut Delegate);
        fn delegate_num_inputs(d: &Delegate) -> usize;
        fn delegate_num_outputs(d: &Delegate) -> usize;
        fn delegate_output_shapes(d: &Delegate, in_dims: &[i64], in_ranks: &[u32], out: &mut Shapes) -> Status;
        unsafe fn delegate_execute(
            d: &Delegate,
            in_ptrs: &[usize],
            in_dtypes: &[i32],
            in_dims: &[i64],
            in_ranks: &[u32],
            out_ptrs: &[usize],
            out_numels: &[usize],
        ) -> Status;
        /// `delegate_execute` that also returns its spans (only called with an EventTracer).
        unsafe fn delegate_execute_profiled(
            d: &Delegate,
            in_ptrs: &[usize],
            in_dtypes: &[i32],
            in_dims: &[i64],
            in_ranks: &[u32],
            out_ptrs: &[usize],
            out_numels: &[usize],
            events: &mut Vec<PhaseRecord>,
        ) -> Status;
    }

    unsafe extern "C++" {
        include!("mobilemoe.h");

        fn register_all() -> i32;
        /// Routes ExecuTorch's log lines to `logging::runtime_log` (the Rust runner calls it).
        fn install_runtime_log_hook();
        fn is_backend_registered(name: &str) -> bool;
        fn registered_backends() -> Vec<String>;
        fn is_operator_registered(name: &str) -> bool;
        /// The `executorch::runtime::Error` (as its number) that the backend and the kernels return
        /// for an `ErrorCode` number (0 = Ok; unknown numbers are Internal): the one mapping.
        fn executorch_error_of(code: i32) -> u32;
    }
}

fn status(r: Result<()>) -> ffi::Status {
    match r {
        Ok(()) => ffi::Status { code: 0, message: String::new() },
        Err(e) => ffi::Status { code: e.code.as_i32(), message: e.message },
    }
}

/// The ExecuTorch error number for `code` (the C++ mapping; `ErrorCode` numbers otherwise never
/// need it on the Rust side).
pub fn executorch_error(code: ErrorCode) -> u32 {
    ffi::executorch_error_of(code.as_i32())
}

/// # Safety
/// `data..data+len` stays valid and unchanged until the returned delegate is freed.
pub unsafe fn delegate_init(data: *const u8, len: usize, st: &mut ffi::Status) -> *mut Delegate {
    let r = catch("delegate_init", || {
        if data.is_null() {
            return Err(Error::invalid_argument("null blob"));
        }
        // SAFETY: per the contract above.
        let blob: &'static [u8] = unsafe { std::slice::from_raw_parts(data, len) };
        unsafe { Delegate::from_static(blob) }
    });
    match r {
        Ok(d) => {
            *st = status(Ok(()));
            Box::into_raw(Box::new(d))
        }
        Err(e) => {
            *st = status(Err(e));
            std::ptr::null_mut()
        }
    }
}

/// # Safety
/// `d` is null or came from `delegate_init` and is not used afterwards.
pub unsafe fn delegate_free(d: *mut Delegate) {
    if !d.is_null() {
        // A panic in a destructor must not unwind into C++ either.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(unsafe { Box::from_raw(d) })));
    }
}

pub fn delegate_num_inputs(d: &Delegate) -> usize {
    d.graph().inputs.len()
}

pub fn delegate_num_outputs(d: &Delegate) -> usize {
    d.graph().outputs.len()
}

fn split_shapes<'a>(dims: &'a [i64], ranks: &[u32]) -> std::result::Result<Vec<&'a [i64]>, String> {
    let mut out = Vec::with_capacity(ranks.len());
    let mut off = 0usize;
    for &r in ranks {
        let end = off.checked_add(r as usize).filter(|&e| e <= dims.len()).ok_or("input ranks do not match dims")?;
        out.push(&dims[off..end]);
        off = end;
    }
    if off != dims.len() {
        return Err("input ranks do not match dims".into());
    }
    Ok(out)
}

pub fn delegate_output_shapes(d: &Delegate, in_dims: &[i64], in_ranks: &[u32], out: &mut ffi::Shapes) -> ffi::Status {
    status(catch("delegate_output_shapes", || {
        let shapes = split_shapes(in_dims, in_ranks)?;
        let outs = d.output_shapes(&shapes)?;
        out.dims.clear();
        out.ranks.clear();
        for o in outs {
            out.ranks.push(o.len() as u32);
            out.dims.extend_from_slice(&o);
        }
        Ok(())
    }))
}

/// ExecuTorch `ScalarType` codes of the inputs the delegate accepts.
const SCALAR_FLOAT: i32 = 6;
const SCALAR_LONG: i32 = 4;

/// # Safety
/// `in_ptrs[i]` points to the data of input i (f32 for `in_dtypes[i] == 6`, i64 for 4) with the
/// shape given by `in_dims`/`in_ranks`; `out_ptrs[j]` points to `out_numels[j]` writable f32;
/// none of them overlap.
pub unsafe fn delegate_execute(
    d: &Delegate,
    in_ptrs: &[usize],
    in_dtypes: &[i32],
    in_dims: &[i64],
    in_ranks: &[u32],
    out_ptrs: &[usize],
    out_numels: &[usize],
) -> ffi::Status {
    // SAFETY: caller contract.
    status(catch("delegate_execute", || unsafe { execute(d, in_ptrs, in_dtypes, in_dims, in_ranks, out_ptrs, out_numels) }))
}

/// # Safety
/// As [`delegate_execute`].
unsafe fn execute(
    d: &Delegate,
    in_ptrs: &[usize],
    in_dtypes: &[i32],
    in_dims: &[i64],
    in_ranks: &[u32],
    out_ptrs: &[usize],
    out_numels: &[usize],
) -> Result<()> {
    let shapes = split_shapes(in_dims, in_ranks)?;
    if in_ptrs.len() != shapes.len() || in_dtypes.len() != shapes.len() || out_ptrs.len() != out_numels.len() {
        return Err("pointer/shape counts differ".into());
    }
    let mut inputs = Vec::with_capacity(shapes.len());
    for ((&p, &dt), s) in in_ptrs.iter().zip(in_dtypes).zip(&shapes) {
        let n = crate::delegate::numel(s)?;
        if p == 0 && n > 0 {
            return Err("null input pointer".into());
        }
        // SAFETY (both arms): caller contract; the pointer is aligned for its dtype (ExecuTorch
        // tensor data), n elements are readable.
        let input = match dt {
            SCALAR_FLOAT => Input::F32(if n == 0 { &[] } else { unsafe { std::slice::from_raw_parts(p as *const f32, n) } }),
            SCALAR_LONG => Input::I64(if n == 0 { &[] } else { unsafe { std::slice::from_raw_parts(p as *const i64, n) } }),
            other => return Err(Error::not_supported(format!("input dtype {other} is not supported (float32 or int64)"))),
        };
        inputs.push((input, *s));
    }
    let mut outputs = Vec::with_capacity(out_ptrs.len());
    for (&p, &n) in out_ptrs.iter().zip(out_numels) {
        if p == 0 && n > 0 {
            return Err("null output pointer".into());
        }
        // SAFETY: caller contract.
        let sl: &mut [f32] = if n == 0 { &mut [] } else { unsafe { std::slice::from_raw_parts_mut(p as *mut f32, n) } };
        outputs.push(sl);
    }
    d.execute_typed(&inputs, &mut outputs)
}

/// # Safety
/// As [`delegate_execute`].
pub unsafe fn delegate_execute_profiled(
    d: &Delegate,
    in_ptrs: &[usize],
    in_dtypes: &[i32],
    in_dims: &[i64],
    in_ranks: &[u32],
    out_ptrs: &[usize],
    out_numels: &[usize],
    events: &mut Vec<ffi::PhaseRecord>,
) -> ffi::Status {
    let t0 = crate::profiling::now_ns();
    // SAFETY: caller contract (same as delegate_execute).
    let (st, spans) =
        crate::profiling::phases::capture(|| unsafe { delegate_execute(d, in_ptrs, in_dtypes, in_dims, in_ranks, out_ptrs, out_numels) });
    if st.code != 0 {
        return st;
    }
    events.clear();
    events.extend(spans.into_iter().map(|e| ffi::PhaseRecord {
        name: e.name.to_string(),
        layer: e.layer,
        start_ns: e.start_ns.saturating_sub(t0),
        end_ns: e.end_ns.saturating_sub(t0),
    }));
    st
}
