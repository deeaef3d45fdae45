//! The C ABI of `libmobilemoe_executorch.so` (docs/DESIGN.md section 8). Every pointer comes with
//! its length in elements; every length is checked; no panic crosses the boundary. Every function
//! returns 0 or an [`ErrorCode`] (1 invalid argument, 2 internal = a caught panic, 3 invalid
//! program, 4 not supported, 5 out of memory) and leaves the message in `mobilemoe_last_error`.

use mobilemoe_ops::{
    linear, moe_ffn, quant, GroupLimit, GroupScore, Kernels, LinearScratch, MatrixSpec, MoeScratch, MoeSpec, MoeWeights, PackedRef,
    RouterConfig, ScoreFunc, SharedExpert, ThreadPool, WeightBits,
};
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::sync::OnceLock;

pub use crate::error::{panic_message, Error, ErrorCode};

fn pk<'a>(s: MatrixSpec, d: &'a [u8], sc: &'a [f32]) -> Result<PackedRef<'a>, Error> {
    Ok(PackedRef::new(s, d, sc)?)
}

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
    /// 0 softmax, 1 softmax_all, 2 sigmoid, 3 topk_sigmoid, 4 sparsemixer
    pub score_func: i32,
    pub renormalize: i32,
    pub route_scale: f32,
    pub exact: i32,
    pub out: *mut f32,
    pub out_len: u64,
    /// Group-limited routing (1 = none); appended in format version 4 so the fields above keep
    /// their offsets.
    pub num_groups: i64,
    pub top_groups: i64,
    /// 0 max, 1 top2_sum
    pub group_score: i32,
    pub weight_input: i32,
    pub jitter_eps: f32,
    pub renorm_eps: f32,
    pub renorm_min: f32,
    /// Routed experts' scales grouped along the output dimension (`MoeSpec::scales_out`);
    /// appended in format version 5.
    pub scales_out: i32,
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

/// Runs `f`: 0 on success, else the error's [`ErrorCode`] (a panic is `Internal`) with the message
/// in `mobilemoe_last_error`.
pub(crate) fn ffi_guard(what: &str, f: impl FnOnce() -> Result<(), Error>) -> i32 {
    match crate::error::catch(what, f) {
        Ok(()) => 0,
        Err(e) => {
            set_error(&format!("{what}: {}", e.message));
            e.code.as_i32()
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
            return Err(format!("n = {n} must be >= 1").into());
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
            3 => ScoreFunc::TopkSigmoid,
            4 => ScoreFunc::SparseMixer,
            o => return Err(format!("score_func = {o} (0 softmax, 1 softmax_all, 2 sigmoid, 3 topk_sigmoid, 4 sparsemixer)").into()),
        };
        let group_score = match a.group_score {
            0 => GroupScore::Max,
            1 => GroupScore::TopTwoSum,
            o => return Err(format!("group_score = {o} (0 max, 1 top2_sum)").into()),
        };
        if a.shared_hidden_dim < 0 {
            return Err(format!("shared_hidden_dim = {} must be >= 0", a.shared_hidden_dim).into());
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
                group_limit: GroupLimit {
                    groups: pos("num_groups", a.num_groups)?,
                    top_groups: pos("top_groups", a.top_groups)?,
                    score: group_score,
                },
                weight_input: a.weight_input != 0,
                jitter_eps: a.jitter_eps,
                renorm_eps: a.renorm_eps,
                renorm_min: a.renorm_min,
            },
            exact: a.exact != 0,
            scales_out: a.scales_out != 0,
        };
        spec.validate().map_err(Error::from)?;
        let t = len_of("tokens", a.tokens)?;
        unsafe {
            let x = slice("x", a.x, a.x_len)?;
            let out = slice_mut("out", a.out, a.out_len)?;
            let shared = if spec.shared_hidden > 0 {
                Some(SharedExpert {
                    w13: PackedRef::new(
                        spec.shared_w13_spec().map_err(Error::from)?,
                        slice("shared_w13", a.shared_w13, a.shared_w13_len)?,
                        slice("shared_w13_scales", a.shared_w13_scales, a.shared_w13_scales_len)?,
                    )
                    .map_err(Error::from)?,
                    w2: PackedRef::new(
                        spec.shared_w2_spec().map_err(Error::from)?,
                        slice("shared_w2", a.shared_w2, a.shared_w2_len)?,
                        slice("shared_w2_scales", a.shared_w2_scales, a.shared_w2_scales_len)?,
                    )
                    .map_err(Error::from)?,
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
                w13_scales: slice("w13_scales", a.w13_scales, a.w13_scales_len)?.into(),
                w2: slice("w2", a.w2, a.w2_len)?,
                w2_scales: slice("w2_scales", a.w2_scales, a.w2_scales_len)?.into(),
                shared,
            };
            let pool = ThreadPool::global();
            MOE_SCRATCH.with(|s| {
                let mut s = s.try_borrow_mut().map_err(|_| Error::invalid_argument("re-entrant call"))?;
                moe_ffn(&spec, &w, x, t, out, &mut s, &pool, kernels()).map_err(Error::from)
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
        let spec = MatrixSpec::new(
            pos("out_features", a.out_features)?,
            pos("in_features", a.in_features)?,
            pos("group_size", a.group_size)?,
            bits(a.weight_bits)?,
        )
        .map_err(Error::from)?;
        let rows = len_of("rows", a.rows)?;
        unsafe {
            let w = PackedRef::new(spec, slice("weight", a.weight, a.weight_len)?, slice("scales", a.scales, a.scales_len)?)
                .map_err(Error::from)?;
            let bias = opt_slice("bias", a.bias, a.bias_len)?;
            let x = slice("x", a.x, a.x_len)?;
            let out = slice_mut("out", a.out, a.out_len)?;
            let pool = ThreadPool::global();
            LIN_SCRATCH.with(|s| {
                let mut s = s.try_borrow_mut().map_err(|_| Error::invalid_argument("re-entrant call"))?;
                linear(&w, bias, x, rows, out, a.exact != 0, &mut s, &pool, kernels()).map_err(Error::from)
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
        let spec = MatrixSpec::new(pos("n", n)?, pos("k", k)?, pos("group_size", group_size)?, bits(weight_bits)?).map_err(Error::from)?;
        unsafe {
            let q = slice("q", q, q_len)?;
            let s = slice("scales", scales, scales_len)?;
            let d = slice_mut("data_out", data_out, data_len)?;
            let so = slice_mut("scales_out", scales_out, scales_out_len)?;
            if d.len() != spec.data_bytes() {
                return Err(format!("data_out: expected {} bytes, got {}", spec.data_bytes(), d.len()).into());
            }
            if so.len() != spec.scale_count() {
                return Err(format!("scales_out: expected {} floats, got {}", spec.scale_count(), so.len()).into());
            }
            let p = quant::pack(q, s, spec).map_err(Error::from)?;
            d.copy_from_slice(&p.data);
            so.copy_from_slice(&p.scales);
            Ok(())
        }
    })
}

// ------------------------------------------------------------------------------------------------
// Whole-decoder ops for Python's eager kernels (the delegate runs the same ops/ functions).

/// One buffer argument of [`mobilemoe_decoder_op`]: a pointer and its length in elements.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MobileMoeBuf {
    pub ptr: *const std::ffi::c_void,
    pub len: u64,
}

/// Op codes of [`mobilemoe_decoder_op`].
pub const DECODER_RMS_NORM: i32 = 1;
pub const DECODER_EMBEDDING: i32 = 2;
pub const DECODER_ATTENTION: i32 = 3;
pub const DECODER_SWIGLU_FFN: i32 = 4;
pub const DECODER_LM_HEAD: i32 = 5;

thread_local! {
    static ATTN_SCRATCH: RefCell<mobilemoe_ops::decoder::AttentionScratch> = RefCell::new(Default::default());
    static DENSE_SCRATCH: RefCell<mobilemoe_ops::decoder::DenseScratch> = RefCell::new(Default::default());
}

/// Runs one whole-decoder op (the positional arguments per op are listed in docs/DESIGN.md
/// section 9) into `out[out_len]`.
/// - 1 rms_norm: bufs x f32, weight f32; floats eps.
/// - 2 embedding: bufs tokens i64, weight u8, scales f32; ints vocab, dim, group, bits.
/// - 3 attention: bufs x f32, input_pos i64, wqkv u8, wqkv_scales f32, wo u8, wo_scales f32,
///   cos f32, sin f32, k_cache, v_cache (f16 or f32, written in place); ints dim, n_heads,
///   n_kv_heads, head_dim, max_seq_len, interleaved, kv_f16, group, bits, exact, qk_norm, window;
///   floats qk_norm_eps. The caches hold `AttentionSpec::cache_rows` slots per KV head.
/// - 4 swiglu_ffn: bufs x f32, w13 u8, w13_scales f32, w2 u8, w2_scales f32; ints dim, hidden,
///   group, bits, exact.
/// - 5 lm_head: bufs x f32, norm_weight f32, weight u8, scales f32; ints vocab, dim, group, bits,
///   exact; floats eps.
///
/// # Safety
/// `bufs[..n_bufs]`, `ints[..n_ints]`, `floats[..n_floats]` and `out[..out_len]` are valid; every
/// buffer covers its length in elements of the type the op expects; the KV-cache buffers of op 3
/// are writable and not used concurrently.
#[no_mangle]
pub unsafe extern "C" fn mobilemoe_decoder_op(
    op: i32,
    bufs: *const MobileMoeBuf,
    n_bufs: u64,
    ints: *const i64,
    n_ints: u64,
    floats: *const f64,
    n_floats: u64,
    out: *mut f32,
    out_len: u64,
) -> i32 {
    use mobilemoe_ops::decoder::{self as dec, AttentionSpec, KvSlice, RopeStyle};
    ffi_guard("mobilemoe_decoder_op", || {
        // SAFETY: caller contract (arrays of the given lengths).
        let bufs = unsafe { slice("bufs", bufs, n_bufs)? };
        let ints = unsafe { slice("ints", ints, n_ints)? };
        let floats = unsafe { slice("floats", floats, n_floats)? };
        let out = unsafe { slice_mut("out", out, out_len)? };
        let want = |nb: usize, ni: usize, nf: usize| -> Result<(), Error> {
            if bufs.len() != nb || ints.len() != ni || floats.len() != nf {
                return Err(format!("op {op}: expected {nb} buffers, {ni} ints, {nf} floats").into());
            }
            Ok(())
        };
        // SAFETY (buf helpers): each buffer covers `len` elements of the type the op documents.
        let f = |i: usize, what: &str| -> Result<&[f32], String> { unsafe { slice(what, bufs[i].ptr as *const f32, bufs[i].len) } };
        let u = |i: usize, what: &str| -> Result<&[u8], String> { unsafe { slice(what, bufs[i].ptr as *const u8, bufs[i].len) } };
        let l = |i: usize, what: &str| -> Result<&[i64], String> { unsafe { slice(what, bufs[i].ptr as *const i64, bufs[i].len) } };
        let spec = |n: i64, k: i64, g: i64, b: i64| -> Result<MatrixSpec, Error> {
            MatrixSpec::new(pos("rows", n)?, pos("columns", k)?, pos("group_size", g)?, bits(b)?).map_err(Error::from)
        };
        let pool = ThreadPool::global();
        match op {
            DECODER_RMS_NORM => {
                want(2, 0, 1)?;
                let (x, w) = (f(0, "x")?, f(1, "weight")?);
                if w.is_empty() || x.len() % w.len() != 0 {
                    return Err(format!("rms_norm: x has {} values, not a multiple of dim {}", x.len(), w.len()).into());
                }
                dec::rms_norm(x, x.len() / w.len(), w, floats[0] as f32, out).map_err(Error::from)
            }
            DECODER_EMBEDDING => {
                want(3, 4, 0)?;
                let s = spec(ints[0], ints[1], ints[2], ints[3])?;
                dec::embedding(&pk(s, u(1, "weight")?, f(2, "scales")?)?, l(0, "tokens")?, out).map_err(Error::from)
            }
            DECODER_ATTENTION => {
                // ints[10] / floats[0]: QK-norm flag and epsilon, ints[11]: sliding window (format
                // version 5)
                want(10, 12, 1)?;
                let sp = AttentionSpec {
                    dim: pos("dim", ints[0])?,
                    n_heads: pos("n_heads", ints[1])?,
                    n_kv_heads: pos("n_kv_heads", ints[2])?,
                    head_dim: pos("head_dim", ints[3])?,
                    max_seq_len: pos("max_seq_len", ints[4])?,
                    rope: if ints[5] != 0 { RopeStyle::Interleaved } else { RopeStyle::HalfSplit },
                    exact: ints[9] != 0,
                    qk_norm: (ints[10] != 0).then_some(floats[0] as f32),
                    window: usize::try_from(ints[11]).map_err(|_| format!("window = {} must be >= 0", ints[11]))?,
                };
                sp.validate().map_err(Error::from)?;
                let qkv_n = i64::try_from(sp.qkv_width()).map_err(|e| Error::invalid_argument(e.to_string()))?;
                let q_w = i64::try_from(sp.q_width()).map_err(|e| Error::invalid_argument(e.to_string()))?;
                let w = dec::AttentionWeights {
                    wqkv: pk(spec(qkv_n, ints[0], ints[7], ints[8])?, u(2, "wqkv")?, f(3, "wqkv_scales")?)?,
                    wo: pk(spec(ints[0], q_w, ints[7], ints[8])?, u(4, "wo")?, f(5, "wo_scales")?)?,
                    cos: f(6, "rope_cos")?,
                    sin: f(7, "rope_sin")?,
                };
                // SAFETY: the caller hands over the two caches for writing (contract above).
                let (mut kc, mut vc) = unsafe {
                    if ints[6] != 0 {
                        (
                            KvSlice::F16(slice_mut("k_cache", bufs[8].ptr as *mut half::f16, bufs[8].len)?),
                            KvSlice::F16(slice_mut("v_cache", bufs[9].ptr as *mut half::f16, bufs[9].len)?),
                        )
                    } else {
                        (
                            KvSlice::F32(slice_mut("k_cache", bufs[8].ptr as *mut f32, bufs[8].len)?),
                            KvSlice::F32(slice_mut("v_cache", bufs[9].ptr as *mut f32, bufs[9].len)?),
                        )
                    }
                };
                let x = f(0, "x")?;
                let p = l(1, "input_pos")?;
                ATTN_SCRATCH.with(|s| {
                    dec::attention(&sp, &w, x, p, &mut kc, &mut vc, out, &mut s.borrow_mut(), &pool, kernels()).map_err(Error::from)
                })
            }
            DECODER_SWIGLU_FFN => {
                want(5, 5, 0)?;
                let w13 = pk(spec(2 * ints[1], ints[0], ints[2], ints[3])?, u(1, "w13")?, f(2, "w13_scales")?)?;
                let w2 = pk(spec(ints[0], ints[1], ints[2], ints[3])?, u(3, "w2")?, f(4, "w2_scales")?)?;
                let x = f(0, "x")?;
                let rows = x.len() / w13.spec.k;
                DENSE_SCRATCH.with(|s| {
                    dec::swiglu_ffn(&w13, &w2, x, rows, ints[4] != 0, out, &mut s.borrow_mut(), &pool, kernels()).map_err(Error::from)
                })
            }
            DECODER_LM_HEAD => {
                want(4, 5, 1)?;
                let w = pk(spec(ints[0], ints[1], ints[2], ints[3])?, u(2, "weight")?, f(3, "scales")?)?;
                let x = f(0, "x")?;
                let rows = x.len() / w.spec.k;
                DENSE_SCRATCH.with(|s| {
                    dec::lm_head_last(
                        x,
                        rows,
                        f(1, "norm_weight")?,
                        floats[0] as f32,
                        &w,
                        ints[4] != 0,
                        out,
                        &mut s.borrow_mut(),
                        &pool,
                        kernels(),
                    )
                    .map_err(Error::from)
                })
            }
            other => Err(format!("unknown decoder op {other}").into()),
        }
    })
}

// ------------------------------------------------------------------------------------------------
// Layout of the C ABI structs. They are copied by hand into C++ (backend/cpp/mobilemoe.h, held by
// static_asserts with the same numbers as below) and Python (mobilemoe_export/operators/_lib.py and
// decoder_ops.py, held by python_export/tests/test_abi_layout.py against `mobilemoe_abi_layout`).

/// `[size, offset of each field in declaration order]` and the field names, per struct.
macro_rules! abi_layout {
    ($t:ty; $($f:ident),+ $(,)?) => {
        (vec![std::mem::size_of::<$t>() as u64, $(std::mem::offset_of!($t, $f) as u64),+], concat!($(stringify!($f), ","),+))
    };
}

fn abi_layout(which: i32) -> Option<(Vec<u64>, &'static str)> {
    Some(match which {
        1 => abi_layout!(MobileMoeFfnArgs; x, x_len, tokens, router_weight, router_weight_len, expert_bias,
            expert_bias_len, w13, w13_len, w13_scales, w13_scales_len, w2, w2_len, w2_scales, w2_scales_len,
            shared_w13, shared_w13_len, shared_w13_scales, shared_w13_scales_len, shared_w2, shared_w2_len,
            shared_w2_scales, shared_w2_scales_len, shared_gate, shared_gate_len, num_experts, top_k, dim,
            hidden_dim, shared_hidden_dim, group_size, weight_bits, score_func, renormalize, route_scale,
            exact, out, out_len, num_groups, top_groups, group_score, weight_input, jitter_eps, renorm_eps, renorm_min, scales_out),
        2 => abi_layout!(MobileMoeLinearArgs; x, x_len, rows, weight, weight_len, scales, scales_len, bias,
            bias_len, in_features, out_features, group_size, weight_bits, exact, out, out_len),
        3 => abi_layout!(MobileMoeBuf; ptr, len),
        _ => return None,
    })
}

/// Layout of C ABI struct `which` (1 `MobileMoeFfnArgs`, 2 `MobileMoeLinearArgs`, 3 `MobileMoeBuf`):
/// writes `[size, offset of field 0, field 1, ...]` (declaration order) into `out[..cap]` and returns
/// how many values there are (0 for an unknown struct). `names`, if not null, receives a static
/// NUL-terminated list of the field names, each followed by a comma. For bindings' tests.
///
/// # Safety
/// `out` is valid for `cap` writes (or null with `cap` 0); `names` is null or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn mobilemoe_abi_layout(which: i32, out: *mut u64, cap: u64, names: *mut *const c_char) -> u64 {
    static NAMES: OnceLock<Vec<CString>> = OnceLock::new();
    let Some((vals, _)) = abi_layout(which) else { return 0 };
    for (i, &v) in vals.iter().enumerate().take(cap as usize) {
        // SAFETY: i < cap and the caller guarantees `out` holds `cap` values.
        unsafe { *out.add(i) = v };
    }
    if !names.is_null() {
        let all = NAMES.get_or_init(|| (1..=3).map(|w| CString::new(abi_layout(w).unwrap().1).unwrap()).collect());
        // SAFETY: non-null, valid for one write (caller); the strings live for the process.
        unsafe { *names = all[which as usize - 1].as_ptr() };
    }
    vals.len() as u64
}

// The same numbers as the static_asserts of backend/cpp/mobilemoe.h (64-bit targets: x86-64, aarch64).
#[cfg(target_pointer_width = "64")]
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<MobileMoeFfnArgs>() == 328);
    assert!(offset_of!(MobileMoeFfnArgs, tokens) == 16);
    assert!(offset_of!(MobileMoeFfnArgs, shared_gate_len) == 192);
    assert!(offset_of!(MobileMoeFfnArgs, num_experts) == 200);
    assert!(offset_of!(MobileMoeFfnArgs, weight_bits) == 248);
    assert!(offset_of!(MobileMoeFfnArgs, score_func) == 256);
    assert!(offset_of!(MobileMoeFfnArgs, renormalize) == 260);
    assert!(offset_of!(MobileMoeFfnArgs, route_scale) == 264);
    assert!(offset_of!(MobileMoeFfnArgs, exact) == 268);
    assert!(offset_of!(MobileMoeFfnArgs, out) == 272);
    assert!(offset_of!(MobileMoeFfnArgs, out_len) == 280);
    assert!(offset_of!(MobileMoeFfnArgs, num_groups) == 288);
    assert!(offset_of!(MobileMoeFfnArgs, top_groups) == 296);
    assert!(offset_of!(MobileMoeFfnArgs, group_score) == 304);
    assert!(offset_of!(MobileMoeFfnArgs, weight_input) == 308);
    assert!(offset_of!(MobileMoeFfnArgs, jitter_eps) == 312);
    assert!(offset_of!(MobileMoeFfnArgs, renorm_eps) == 316);
    assert!(offset_of!(MobileMoeFfnArgs, renorm_min) == 320);
    assert!(offset_of!(MobileMoeFfnArgs, scales_out) == 324);
    assert!(size_of::<MobileMoeLinearArgs>() == 128);
    assert!(offset_of!(MobileMoeLinearArgs, in_features) == 72);
    assert!(offset_of!(MobileMoeLinearArgs, weight_bits) == 96);
    assert!(offset_of!(MobileMoeLinearArgs, exact) == 104);
    assert!(offset_of!(MobileMoeLinearArgs, out) == 112);
    assert!(offset_of!(MobileMoeLinearArgs, out_len) == 120);
    assert!(size_of::<MobileMoeBuf>() == 16 && offset_of!(MobileMoeBuf, len) == 8);
};

#[cfg(test)]
mod abi_tests {
    use super::*;

    /// The numbers in the C++ header's `static_assert`s (`sizeof(T) == n`, `offsetof(T, f) == n`)
    /// are the Rust layout: the two sides cannot drift apart with each still compiling.
    #[test]
    fn cpp_header_asserts_the_rust_layout() {
        let header = include_str!("../cpp/mobilemoe.h");
        let layouts = [("MobileMoeFfnArgs", 1), ("MobileMoeLinearArgs", 2)];
        let mut checked = 0;
        for (ty, which) in layouts {
            let (vals, names) = abi_layout(which).unwrap();
            let names: Vec<&str> = names.trim_end_matches(',').split(',').collect();
            let mut rest = header;
            while let Some(i) = rest.find(&format!("sizeof({ty}) == ")) {
                let n: u64 = rest[i..].split("== ").nth(1).unwrap().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
                assert_eq!(n, vals[0], "header sizeof({ty})");
                checked += 1;
                rest = &rest[i + 1..];
            }
            let mut rest = header;
            let pat = format!("offsetof({ty}, ");
            while let Some(i) = rest.find(&pat) {
                let tail = &rest[i + pat.len()..];
                let field = tail.split(')').next().unwrap().trim();
                let n: u64 = tail.split("== ").nth(1).unwrap().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
                let idx = names.iter().position(|&f| f == field).unwrap_or_else(|| panic!("header asserts unknown field {ty}.{field}"));
                assert_eq!(n, vals[1 + idx], "header offsetof({ty}, {field})");
                checked += 1;
                rest = &rest[i + 1..];
            }
        }
        assert!(checked >= 20, "only {checked} header asserts found");
    }

    #[test]
    fn abi_layout_reports_every_field() {
        for (which, fields) in [(1, 46), (2, 16), (3, 2)] {
            let mut out = vec![u64::MAX; 64];
            let mut names: *const c_char = std::ptr::null();
            // SAFETY: `out` holds 64 values; `names` is a valid out-pointer.
            let n = unsafe { mobilemoe_abi_layout(which, out.as_mut_ptr(), out.len() as u64, &mut names) } as usize;
            assert_eq!(n, 1 + fields);
            // SAFETY: the function stored a static NUL-terminated string.
            let names = unsafe { std::ffi::CStr::from_ptr(names) }.to_str().unwrap();
            assert_eq!(names.matches(',').count(), fields);
            let offs = &out[1..n];
            assert!(offs.windows(2).all(|w| w[0] < w[1]) && offs[fields - 1] < out[0], "{which}: {out:?}");
        }
        // SAFETY: null `out` with cap 0 is allowed.
        assert_eq!(unsafe { mobilemoe_abi_layout(9, std::ptr::null_mut(), 0, std::ptr::null_mut()) }, 0);
    }
}
