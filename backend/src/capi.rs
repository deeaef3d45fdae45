//! The C ABI of `libmobilemoe_executorch.so` (docs/DESIGN.md section 8). Every pointer comes with
//! its length in elements; every length is checked; no panic crosses the boundary (a panic
//! becomes return code 2 and a `mobilemoe_last_error` message).

use mobilemoe_ops::{
    linear, moe_ffn, quant, Kernels, LinearScratch, MatrixSpec, MoeScratch, MoeSpec, MoeWeights, PackedRef, RouterConfig, ScoreFunc,
    SharedExpert, ThreadPool, WeightBits,
};
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::sync::OnceLock;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MobileMoeFfnArgs {
    pub x: *const f32,
    pub x_len: u64,
    pub tokens: u64,
    pub router_weight: *const f32,
    pub router_weight_len: u64,
    pub expert_bias: *const f32,
    pub expert_bias_len: u64,
    pub w13: *const u8,
    pub w13_len: u64,
    pub w13_scales: *const f32,
    pub w13_scales_len: u64,
    pub w2: *const u8,
    pub w2_len: u64,
    pub w2_scales: *const f32,
    pub w2_scales_len: u64,
    pub shared_w13: *const u8,
    pub shared_w13_len: u64,
    pub shared_w13_scales: *const f32,
    pub shared_w13_scales_len: u64,
    pub shared_w2: *const u8,
    pub shared_w2_len: u64,
    pub shared_w2_scales: *const f32,
    pub shared_w2_scales_len: u64,
    pub shared_gate: *const f32,
    pub shared_gate_len: u64,
    pub num_experts: i64,
    pub top_k: i64,
    pub dim: i64,
    pub hidden_dim: i64,
    pub shared_hidden_dim: i64,
    pub group_size: i64,
    pub weight_bits: i64,
    /// 0 softmax, 1 softmax_all, 2 sigmoid
    pub score_func: i32,
    pub renormalize: i32,
    pub route_scale: f32,
    pub exact: i32,
    pub out: *mut f32,
    pub out_len: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MobileMoeLinearArgs {
    pub x: *const f32,
    pub x_len: u64,
    pub rows: u64,
    pub weight: *const u8,
    pub weight_len: u64,
    pub scales: *const f32,
    pub scales_len: u64,
    pub bias: *const f32,
    pub bias_len: u64,
    pub in_features: i64,
    pub out_features: i64,
    pub group_size: i64,
    pub weight_bits: i64,
    pub exact: i32,
    pub out: *mut f32,
    pub out_len: u64,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    static MOE_SCRATCH: RefCell<MoeScratch> = RefCell::new(MoeScratch::default());
    static LIN_SCRATCH: RefCell<LinearScratch> = RefCell::new(LinearScratch::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(Kernels::best)
}

/// Runs `f`, mapping `Err` to 1 and a panic to 2 (message in `mobilemoe_last_error`).
pub(crate) fn ffi_guard(what: &str, f: impl FnOnce() -> Result<(), String>) -> i32 {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            set_error(&format!("{what}: {e}"));
            1
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_error(&format!("{what}: internal error (panic): {msg}"));
            2
        }
    }
}

fn len_of(what: &str, n: u64) -> Result<usize, String> {
    usize::try_from(n).map_err(|_| format!("{what}: length {n} does not fit in usize"))
}

/// # Safety
/// `p` points to `len` readable elements (or `len == 0`).
unsafe fn slice<'a, T>(what: &str, p: *const T, len: u64) -> Result<&'a [T], String> {
    let n = len_of(what, len)?;
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(format!("{what}: null pointer with length {n}"));
    }
    if (p as usize) % std::mem::align_of::<T>() != 0 {
        return Err(format!("{what}: pointer is not aligned to {} bytes", std::mem::align_of::<T>()));
    }
    Ok(std::slice::from_raw_parts(p, n))
}

/// # Safety
/// As `slice`, writable.
unsafe fn slice_mut<'a, T>(what: &str, p: *mut T, len: u64) -> Result<&'a mut [T], String> {
    let n = len_of(what, len)?;
    if n == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(format!("{what}: null pointer with length {n}"));
    }
    if (p as usize) % std::mem::align_of::<T>() != 0 {
        return Err(format!("{what}: pointer is not aligned to {} bytes", std::mem::align_of::<T>()));
    }
    Ok(std::slice::from_raw_parts_mut(p, n))
}

/// # Safety
/// As `slice`; a null pointer with length 0 means "absent".
unsafe fn opt_slice<'a, T>(what: &str, p: *const T, len: u64) -> Result<Option<&'a [T]>, String> {
    if p.is_null() && len == 0 {
        Ok(None)
    } else {
        slice(what, p, len).map(Some)
    }
}

fn pos(what: &str, v: i64) -> Result<usize, String> {
    if v > 0 {
        usize::try_from(v).map_err(|_| format!("{what} = {v} too large"))
    } else {
        Err(format!("{what} = {v} must be > 0"))
    }
}

fn bits(v: i64) -> Result<WeightBits, String> {
    WeightBits::from_bits(if v == 4 || v == 8 { v as usize } else { 0 }).map_err(|_| format!("weight_bits = {v} must be 4 or 8"))
}

/// Thread-local message of the last failure on this thread ("" if none). Valid until the next
/// failing call on this thread.
#[no_mangle]
pub extern "C" fn mobilemoe_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Blob format version this library reads.
#[no_mangle]
pub extern "C" fn mobilemoe_version() -> i32 {
    mobilemoe_schema::FORMAT_VERSION as i32
}

/// Sets the size of the process-wide kernel thread pool (>= 1).
#[no_mangle]
pub extern "C" fn mobilemoe_set_num_threads(n: i32) -> i32 {
    ffi_guard("mobilemoe_set_num_threads", || {
        if n < 1 {
            return Err(format!("n = {n} must be >= 1"));
        }
        ThreadPool::set_global_threads(n as usize);
        Ok(())
    })
}

/// The fused MoE FFN on `tokens` rows of `x[tokens, dim]` into `out[tokens, dim]`.
///
/// # Safety
/// `args` points to a valid `MobileMoeFfnArgs` whose pointers cover their lengths.
#[no_mangle]
pub unsafe extern "C" fn mobilemoe_moe_ffn(args: *const MobileMoeFfnArgs) -> i32 {
    ffi_guard("mobilemoe_moe_ffn", || {
        let a = unsafe { args.as_ref() }.ok_or("null args")?;
        let score_func = match a.score_func {
            0 => ScoreFunc::Softmax,
            1 => ScoreFunc::SoftmaxAll,
            2 => ScoreFunc::Sigmoid,
            o => return Err(format!("score_func = {o} (0 softmax, 1 softmax_all, 2 sigmoid)")),
        };
        if a.shared_hidden_dim < 0 {
            return Err(format!("shared_hidden_dim = {} must be >= 0", a.shared_hidden_dim));
        }
        let spec = MoeSpec {
            dim: pos("dim", a.dim)?,
            hidden: pos("hidden_dim", a.hidden_dim)?,
            shared_hidden: a.shared_hidden_dim as usize,
            group: pos("group_size", a.group_size)?,
            bits: bits(a.weight_bits)?,
            router: RouterConfig {
                num_experts: pos("num_experts", a.num_experts)?,
                top_k: pos("top_k", a.top_k)?,
                score_func,
                renormalize: a.renormalize != 0,
                route_scale: a.route_scale,
            },
            exact: a.exact != 0,
        };
        spec.validate().map_err(|e| e.to_string())?;
        let t = len_of("tokens", a.tokens)?;
        unsafe {
            let x = slice("x", a.x, a.x_len)?;
            let out = slice_mut("out", a.out, a.out_len)?;
            let shared = if spec.shared_hidden > 0 {
                Some(SharedExpert {
                    w13: PackedRef::new(
                        spec.shared_w13_spec().map_err(|e| e.to_string())?,
                        slice("shared_w13", a.shared_w13, a.shared_w13_len)?,
                        slice("shared_w13_scales", a.shared_w13_scales, a.shared_w13_scales_len)?,
                    )
                    .map_err(|e| e.to_string())?,
                    w2: PackedRef::new(
                        spec.shared_w2_spec().map_err(|e| e.to_string())?,
                        slice("shared_w2", a.shared_w2, a.shared_w2_len)?,
                        slice("shared_w2_scales", a.shared_w2_scales, a.shared_w2_scales_len)?,
                    )
                    .map_err(|e| e.to_string())?,
                    gate: opt_slice("shared_gate", a.shared_gate, a.shared_gate_len)?,
                })
            } else {
                if !a.shared_w13.is_null() || !a.shared_w2.is_null() || a.shared_w13_len != 0 || a.shared_w2_len != 0 {
                    return Err("shared expert weights given but shared_hidden_dim = 0".into());
                }
                None
            };
            let w = MoeWeights {
                router_w: slice("router_weight", a.router_weight, a.router_weight_len)?,
                expert_bias: opt_slice("expert_bias", a.expert_bias, a.expert_bias_len)?,
                w13: slice("w13", a.w13, a.w13_len)?,
                w13_scales: slice("w13_scales", a.w13_scales, a.w13_scales_len)?,
                w2: slice("w2", a.w2, a.w2_len)?,
                w2_scales: slice("w2_scales", a.w2_scales, a.w2_scales_len)?,
                shared,
            };
            let pool = ThreadPool::global();
            MOE_SCRATCH.with(|s| {
                let mut s = s.try_borrow_mut().map_err(|_| "re-entrant call".to_string())?;
                moe_ffn(&spec, &w, x, t, out, &mut s, &pool, kernels()).map_err(|e| e.to_string())
            })
        }
    })
}

/// `out[rows, out_features] = x[rows, in_features] @ W^T (+ bias)`.
///
/// # Safety
/// `args` points to a valid `MobileMoeLinearArgs` whose pointers cover their lengths.
#[no_mangle]
pub unsafe extern "C" fn mobilemoe_int4_linear(args: *const MobileMoeLinearArgs) -> i32 {
    ffi_guard("mobilemoe_int4_linear", || {
        let a = unsafe { args.as_ref() }.ok_or("null args")?;
        let spec = MatrixSpec::new(pos("out_features", a.out_features)?, pos("in_features", a.in_features)?, pos("group_size", a.group_size)?, bits(a.weight_bits)?)
            .map_err(|e| e.to_string())?;
        let rows = len_of("rows", a.rows)?;
        unsafe {
            let w = PackedRef::new(spec, slice("weight", a.weight, a.weight_len)?, slice("scales", a.scales, a.scales_len)?)
                .map_err(|e| e.to_string())?;
            let bias = opt_slice("bias", a.bias, a.bias_len)?;
            let x = slice("x", a.x, a.x_len)?;
            let out = slice_mut("out", a.out, a.out_len)?;
            let pool = ThreadPool::global();
            LIN_SCRATCH.with(|s| {
                let mut s = s.try_borrow_mut().map_err(|_| "re-entrant call".to_string())?;
                linear(&w, bias, x, rows, out, a.exact != 0, &mut s, &pool, kernels()).map_err(|e| e.to_string())
            })
        }
    })
}

/// Pack integer weights `q[n, k]` + scales `[n, k/G]` into T16K4 (`data_out`, `scales_out`).
///
/// # Safety
/// Every pointer covers its length.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn mobilemoe_pack_weights(
    q: *const i8,
    q_len: u64,
    scales: *const f32,
    scales_len: u64,
    n: i64,
    k: i64,
    group_size: i64,
    weight_bits: i64,
    data_out: *mut u8,
    data_len: u64,
    scales_out: *mut f32,
    scales_out_len: u64,
) -> i32 {
    ffi_guard("mobilemoe_pack_weights", || {
        let spec = MatrixSpec::new(pos("n", n)?, pos("k", k)?, pos("group_size", group_size)?, bits(weight_bits)?).map_err(|e| e.to_string())?;
        unsafe {
            let q = slice("q", q, q_len)?;
            let s = slice("scales", scales, scales_len)?;
            let d = slice_mut("data_out", data_out, data_len)?;
            let so = slice_mut("scales_out", scales_out, scales_out_len)?;
            if d.len() != spec.data_bytes() {
                return Err(format!("data_out: expected {} bytes, got {}", spec.data_bytes(), d.len()));
            }
            if so.len() != spec.scale_count() {
                return Err(format!("scales_out: expected {} floats, got {}", spec.scale_count(), so.len()));
            }
            let p = quant::pack(q, s, spec).map_err(|e| e.to_string())?;
            d.copy_from_slice(&p.data);
            so.copy_from_slice(&p.scales);
            Ok(())
        }
    })
}
