//! The cxx bridge between the C++ half (BackendInterface, kernels) and Rust. The runner's bridge
//! (ExecuTorch's `Module`) lives in the `mobilemoe-runner` crate.
//! Every Rust function here catches panics and returns `Err` (a C++ exception the C++ callers
//! catch and map to an `executorch::runtime::Error`).

use crate::delegate::{Delegate, Input};
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

    extern "Rust" {
        /// ExecuTorch's PAL log hook (backend.cpp) forwards every runtime log line here.
        fn runtime_log(level: u8, file: &str, line: usize, msg: &[u8]);
        type Delegate;
        unsafe fn delegate_init(data: *const u8, len: usize) -> Result<Box<Delegate>>;
        fn delegate_num_inputs(d: &Delegate) -> usize;
        fn delegate_num_outputs(d: &Delegate) -> usize;
        fn delegate_output_shapes(d: &Delegate, in_dims: &[i64], in_ranks: &[u32]) -> Result<Shapes>;
        unsafe fn delegate_execute(
            d: &Delegate,
            in_ptrs: &[usize],
            in_dtypes: &[i32],
            in_dims: &[i64],
            in_ranks: &[u32],
            out_ptrs: &[usize],
            out_numels: &[usize],
        ) -> Result<()>;
        /// `delegate_execute` that also returns its spans (only called with an EventTracer).
        unsafe fn delegate_execute_profiled(
            d: &Delegate,
            in_ptrs: &[usize],
            in_dtypes: &[i32],
            in_dims: &[i64],
            in_ranks: &[u32],
            out_ptrs: &[usize],
            out_numels: &[usize],
        ) -> Result<Vec<PhaseRecord>>;
    }

    unsafe extern "C++" {
        include!("mobilemoe.h");

        fn register_all() -> i32;
        /// Routes ExecuTorch's log lines to `logging::runtime_log` (the Rust runner calls it).
        fn install_runtime_log_hook();
        fn is_backend_registered(name: &str) -> bool;
        fn registered_backends() -> Vec<String>;
        fn is_operator_registered(name: &str) -> bool;
    }
}

fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(format!("internal error (panic) in {what}: {}", crate::capi::panic_message(p.as_ref()))),
    }
}

/// # Safety
/// `data..data+len` stays valid and unchanged until the returned delegate is dropped.
unsafe fn delegate_init(data: *const u8, len: usize) -> Result<Box<Delegate>, String> {
    guard("delegate_init", || {
        if data.is_null() {
            return Err("null blob".into());
        }
        // SAFETY: per the contract above.
        let blob: &'static [u8] = unsafe { std::slice::from_raw_parts(data, len) };
        unsafe { Delegate::from_static(blob) }.map(Box::new)
    })
}

fn delegate_num_inputs(d: &Delegate) -> usize {
    d.graph().inputs.len()
}

fn delegate_num_outputs(d: &Delegate) -> usize {
    d.graph().outputs.len()
}

fn split_shapes<'a>(dims: &'a [i64], ranks: &[u32]) -> Result<Vec<&'a [i64]>, String> {
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

fn delegate_output_shapes(d: &Delegate, in_dims: &[i64], in_ranks: &[u32]) -> Result<ffi::Shapes, String> {
    guard("delegate_output_shapes", || {
        let shapes = split_shapes(in_dims, in_ranks)?;
        let outs = d.output_shapes(&shapes)?;
        let mut s = ffi::Shapes { dims: vec![], ranks: vec![] };
        for o in outs {
            s.ranks.push(o.len() as u32);
            s.dims.extend_from_slice(&o);
        }
        Ok(s)
    })
}

/// ExecuTorch `ScalarType` codes of the inputs the delegate accepts.
const SCALAR_FLOAT: i32 = 6;
const SCALAR_LONG: i32 = 4;

/// # Safety
/// `in_ptrs[i]` points to the data of input i (f32 for `in_dtypes[i] == 6`, i64 for 4) with the
/// shape given by `in_dims`/`in_ranks`; `out_ptrs[j]` points to `out_numels[j]` writable f32;
/// none of them overlap.
unsafe fn delegate_execute(
    d: &Delegate,
    in_ptrs: &[usize],
    in_dtypes: &[i32],
    in_dims: &[i64],
    in_ranks: &[u32],
    out_ptrs: &[usize],
    out_numels: &[usize],
) -> Result<(), String> {
    guard("delegate_execute", || {
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
                other => return Err(format!("input dtype {other} is not supported (float32 or int64)")),
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
    })
}

/// # Safety
/// As [`delegate_execute`].
unsafe fn delegate_execute_profiled(
    d: &Delegate,
    in_ptrs: &[usize],
    in_dtypes: &[i32],
    in_dims: &[i64],
    in_ranks: &[u32],
    out_ptrs: &[usize],
    out_numels: &[usize],
) -> Result<Vec<ffi::PhaseRecord>, String> {
    let t0 = crate::profiling::now_ns();
    // SAFETY: caller contract (same as delegate_execute).
    let (r, events) =
        crate::profiling::phases::capture(|| unsafe { delegate_execute(d, in_ptrs, in_dtypes, in_dims, in_ranks, out_ptrs, out_numels) });
    r?;
    Ok(events
        .into_iter()
        .map(|e| ffi::PhaseRecord {
            name: e.name.to_string(),
            layer: e.layer,
            start_ns: e.start_ns.saturating_sub(t0),
            end_ns: e.end_ns.saturating_sub(t0),
        })
        .collect())
}
