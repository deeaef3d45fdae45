//! The rest of a decoder layer around the MoE FFN: RMSNorm, RoPE (half-split and interleaved),
//! a KV cache (fp16 or fp32) updated in place, causal grouped-query attention over the *filled*
//! positions only, INT4 embedding rows read from the (tied) packed LM-head matrix, the LM head on
//! the last token, and the dense SwiGLU FFN on the fused `w13` matrix.
//!
//! Numerics (docs/DESIGN.md section 9): reductions (dot products, sums of squares, softmax sums)
//! use 16 fixed lanes combined in a fixed order, and no implicit FMA contraction, so the generic
//! code gives the same bits whichever ISA the wrappers below compile it for (AVX-512, AVX2,
//! NEON, scalar). `exp` is the crate's deterministic [`exp_f32`].

use crate::error::{check_len, mul_dims, try_vec, OpsError, Result};
use crate::kernels::Kernels;
use crate::linear::{linear, LinearScratch};
use crate::moe::{exp_f32, swiglu_rows};
use crate::quant::{packed_q, packed_scale, PackedRef};
use crate::threadpool::ThreadPool;
use half::f16;
use std::cell::RefCell;
use tracing::debug_span;

const LANES: usize = 16;

/// Sum of `a[i] * b[i]` in 16 fixed lanes (lane `i % 16`), lanes combined pairwise in a fixed
/// tree, then the tail in order. Same bits on every ISA.
#[inline(always)]
pub fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0.0f32; LANES];
    let full = n / LANES * LANES;
    for (ca, cb) in a[..full].chunks_exact(LANES).zip(b[..full].chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += ca[l] * cb[l];
        }
    }
    let mut s = reduce_lanes(acc);
    for i in full..n {
        s += a[i] * b[i];
    }
    s
}

#[inline(always)]
fn reduce_lanes(mut acc: [f32; LANES]) -> f32 {
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    acc[0]
}

/// Sum of `a[i]` in 16 fixed lanes (see [`dot_lanes`]).
#[inline(always)]
pub(crate) fn sum_lanes(a: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let full = a.len() / LANES * LANES;
    for c in a[..full].chunks_exact(LANES) {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    let mut s = reduce_lanes(acc);
    for &v in &a[full..] {
        s += v;
    }
    s
}

// ------------------------------------------------------------------------------------------------
// RMSNorm

/// `out[r] = x[r] * (1 / sqrt(mean(x[r]^2) + eps)) * weight` for `rows` rows of `weight.len()`.
pub fn rms_norm(x: &[f32], rows: usize, weight: &[f32], eps: f32, out: &mut [f32]) -> Result<()> {
    let d = weight.len();
    if d == 0 {
        return Err(OpsError::ZeroDim { what: "rms_norm weight" });
    }
    check_len("rms_norm input", mul_dims("rms_norm input", &[rows, d])?, x.len())?;
    check_len("rms_norm output", x.len(), out.len())?;
    let _span = debug_span!("rms_norm", rows, d).entered();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        rms_norm_row(xr, weight, eps, or);
    }
    Ok(())
}

#[inline]
fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss = dot_lanes(x, x);
    let r = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = (v * r) * g;
    }
}

/// Weightless RMS norm of one head in place: `v * (1 / sqrt(mean(v^2) + eps))` (the same
/// reduction and order as [`rms_norm`], so the same bits on every ISA).
#[inline]
pub fn qk_norm_head(v: &mut [f32], eps: f32) {
    let ss = dot_lanes(v, v);
    let r = 1.0 / (ss / v.len() as f32 + eps).sqrt();
    for x in v.iter_mut() {
        *x *= r;
    }
}

// ------------------------------------------------------------------------------------------------
// RoPE

/// How a head's dimensions pair up for the rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Hugging Face `rotate_half`: dimension `i` pairs with `i + head_dim/2`.
    HalfSplit,
    /// Meta / GPT-J: dimension `2i` pairs with `2i + 1`.
    Interleaved,
}

/// Rotates one head `v` (length `2 * cos.len()`) with the angle tables of its position.
#[inline(always)]
pub fn rope_head(v: &mut [f32], cos: &[f32], sin: &[f32], style: RopeStyle) {
    let half = cos.len();
    match style {
        RopeStyle::HalfSplit => {
            let (a, b) = v.split_at_mut(half);
            for i in 0..half {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * cos[i] - x2 * sin[i];
                b[i] = x2 * cos[i] + x1 * sin[i];
            }
        }
        RopeStyle::Interleaved => {
            for i in 0..half {
                let (x1, x2) = (v[2 * i], v[2 * i + 1]);
                v[2 * i] = x1 * cos[i] - x2 * sin[i];
                v[2 * i + 1] = x2 * cos[i] + x1 * sin[i];
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// KV cache

/// Element type of a KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDType {
    F16,
    F32,
}

impl KvDType {
    pub fn bytes(self) -> usize {
        match self {
            KvDType::F16 => 2,
            KvDType::F32 => 4,
        }
    }
}

/// One layer's K or V cache, `[n_kv_heads, max_seq_len, head_dim]`, borrowed mutably.
pub enum KvSlice<'a> {
    F16(&'a mut [f16]),
    F32(&'a mut [f32]),
}

impl KvSlice<'_> {
    fn len(&self) -> usize {
        match self {
            KvSlice::F16(s) => s.len(),
            KvSlice::F32(s) => s.len(),
        }
    }
    /// `out.len()` values from `at`, widened to f32.
    #[inline(always)]
    fn read_f32(&self, at: usize, out: &mut [f32]) {
        match self {
            KvSlice::F16(s) => {
                let n = out.len();
                for (o, h) in out.iter_mut().zip(&s[at..at + n]) {
                    *o = f16_bits_to_f32(h.to_bits());
                }
            }
            KvSlice::F32(s) => out.copy_from_slice(&s[at..at + out.len()]),
        }
    }
    #[inline(always)]
    fn write(&mut self, at: usize, v: &[f32]) {
        match self {
            KvSlice::F16(s) => {
                for (d, &x) in s[at..at + v.len()].iter_mut().zip(v) {
                    *d = f16::from_f32(x);
                }
            }
            KvSlice::F32(s) => s[at..at + v.len()].copy_from_slice(v),
        }
    }
}

/// A layer's K and V caches owned in one allocation per tensor (what a delegate keeps per layer).
pub struct KvCache {
    pub dtype: KvDType,
    pub n_kv_heads: usize,
    pub max_seq_len: usize,
    pub head_dim: usize,
    k16: Vec<f16>,
    v16: Vec<f16>,
    k32: Vec<f32>,
    v32: Vec<f32>,
}

impl KvCache {
    pub fn new(dtype: KvDType, n_kv_heads: usize, max_seq_len: usize, head_dim: usize) -> Result<Self> {
        let n = mul_dims("kv cache", &[n_kv_heads, max_seq_len, head_dim])?;
        let (mut k16, mut v16, mut k32, mut v32) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        match dtype {
            KvDType::F16 => {
                k16 = try_vec("kv cache", n, f16::ZERO)?;
                v16 = try_vec("kv cache", n, f16::ZERO)?;
            }
            KvDType::F32 => {
                k32 = try_vec("kv cache", n, 0.0)?;
                v32 = try_vec("kv cache", n, 0.0)?;
            }
        }
        Ok(Self { dtype, n_kv_heads, max_seq_len, head_dim, k16, v16, k32, v32 })
    }
    /// Bytes held (K + V).
    pub fn bytes(&self) -> usize {
        2 * self.n_kv_heads * self.max_seq_len * self.head_dim * self.dtype.bytes()
    }
    pub fn views(&mut self) -> (KvSlice<'_>, KvSlice<'_>) {
        match self.dtype {
            KvDType::F16 => (KvSlice::F16(&mut self.k16), KvSlice::F16(&mut self.v16)),
            KvDType::F32 => (KvSlice::F32(&mut self.k32), KvSlice::F32(&mut self.v32)),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Attention

/// Shape and options of one attention layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionSpec {
    pub dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub max_seq_len: usize,
    pub rope: RopeStyle,
    /// Q8 (int8 activations) projections unless set.
    pub exact: bool,
    /// Weightless RMS norm of every q and k head after RoPE with this epsilon (MobileMoE's
    /// QK-norm): `v * (1 / sqrt(mean(v^2) + eps))`.
    pub qk_norm: Option<f32>,
    /// Sliding-window (local) attention: query at position `p` sees slots `p - window + 1 ..= p`;
    /// 0 = global. A local layer's KV cache is a ring of [`AttentionSpec::cache_rows`] slots.
    pub window: usize,
}

impl AttentionSpec {
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("attention dim", self.dim),
            ("attention n_heads", self.n_heads),
            ("attention n_kv_heads", self.n_kv_heads),
            ("attention head_dim", self.head_dim),
            ("attention max_seq_len", self.max_seq_len),
        ] {
            if v == 0 {
                return Err(OpsError::ZeroDim { what });
            }
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return Err(OpsError::Invalid(format!(
                "attention: n_heads {} is not a multiple of n_kv_heads {}",
                self.n_heads, self.n_kv_heads
            )));
        }
        if self.head_dim % 2 != 0 {
            return Err(OpsError::Invalid(format!("attention: head_dim {} must be even (RoPE)", self.head_dim)));
        }
        let heads = self
            .n_kv_heads
            .checked_mul(2)
            .and_then(|v| v.checked_add(self.n_heads))
            .ok_or(OpsError::Overflow { what: "attention head count" })?;
        mul_dims("attention qkv width", &[heads, self.head_dim])?;
        mul_dims("attention kv cache", &[self.n_kv_heads, self.max_seq_len, self.head_dim])?;
        self.window.checked_add(WINDOW_BLOCK).ok_or(OpsError::Overflow { what: "attention window" })?;
        Ok(())
    }
    /// Rows of the fused q/k/v projection: `(n_heads + 2 n_kv_heads) * head_dim`.
    pub fn qkv_width(&self) -> usize {
        (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
    }
    pub fn q_width(&self) -> usize {
        self.n_heads * self.head_dim
    }
    /// Whether the window bounds the context below `max_seq_len`.
    pub fn is_local(&self) -> bool {
        self.window > 0 && self.window < self.max_seq_len
    }
    /// Slots of this layer's K (and V) cache per KV head: `max_seq_len`, or for a local layer the
    /// window plus one token block (position `p` lives in slot `p % cache_rows`; a block's writes
    /// never overwrite a slot one of its queries still reads).
    pub fn cache_rows(&self) -> usize {
        if self.is_local() {
            (self.window + WINDOW_BLOCK).min(self.max_seq_len)
        } else {
            self.max_seq_len
        }
    }
}

/// Weights of one attention layer: fused `wqkv` (`[q; k; v]` rows) and `wo`, both packed, and the
/// RoPE angle tables `cos`/`sin` `[max_seq_len, head_dim/2]` (shared by all layers).
pub struct AttentionWeights<'a> {
    pub wqkv: PackedRef<'a>,
    pub wo: PackedRef<'a>,
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

/// Reusable buffers of [`attention`] (grow only).
#[derive(Default)]
pub struct AttentionScratch {
    lin: LinearScratch,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
}

thread_local! {
    /// Per-thread attention scores `[rep, ctx]` and K/V row conversions (grow only).
    static ATTN_TLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A `*mut f32` shared by threads that write disjoint ranges.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: used only to write disjoint (token, head) ranges from different pool threads while the
// owner keeps the buffer alive and untouched until `pool.run` returns.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// One causal GQA attention layer with its KV cache:
/// `out = wo · softmax((rope(q) · rope(k)^T) / sqrt(hd)) · v` where query `s` (at absolute position
/// `positions[s]`) sees cache slots `0..=positions[s]`. The `t` tokens' K/V are written into the
/// cache at their positions first. Costs in proportion to the positions, not to `max_seq_len`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    spec: &AttentionSpec,
    w: &AttentionWeights<'_>,
    x: &[f32],
    positions: &[i64],
    k_cache: &mut KvSlice<'_>,
    v_cache: &mut KvSlice<'_>,
    out: &mut [f32],
    scratch: &mut AttentionScratch,
    pool: &ThreadPool,
    kernels: &Kernels,
) -> Result<()> {
    spec.validate()?;
    let t = positions.len();
    let (d, hd, hq, hkv) = (spec.dim, spec.head_dim, spec.n_heads, spec.n_kv_heads);
    let _span = debug_span!("attention", tokens = t).entered();
    check_len("attention input", mul_dims("attention input", &[t, d])?, x.len())?;
    check_len("attention output", t * d, out.len())?;
    let cache_len = hkv * spec.cache_rows() * hd;
    check_len("attention k cache", cache_len, k_cache.len())?;
    check_len("attention v cache", cache_len, v_cache.len())?;
    let half = hd / 2;
    check_len("rope cos table", spec.max_seq_len * half, w.cos.len())?;
    check_len("rope sin table", spec.max_seq_len * half, w.sin.len())?;
    let qkv_w = spec.qkv_width();
    if w.wqkv.spec.n != qkv_w || w.wqkv.spec.k != d {
        return Err(OpsError::Invalid(format!("attention: wqkv is {}x{}, expected {qkv_w}x{d}", w.wqkv.spec.n, w.wqkv.spec.k)));
    }
    if w.wo.spec.n != d || w.wo.spec.k != spec.q_width() {
        return Err(OpsError::Invalid(format!("attention: wo is {}x{}, expected {d}x{}", w.wo.spec.n, w.wo.spec.k, spec.q_width())));
    }
    let mut max_pos = 0usize;
    for &p in positions {
        if p < 0 || p as usize >= spec.max_seq_len {
            return Err(OpsError::Invalid(format!("attention: position {p} outside the KV cache (0..{})", spec.max_seq_len)));
        }
        max_pos = max_pos.max(p as usize);
    }
    if t == 0 {
        return Ok(());
    }
    // 1. fused q/k/v projection
    scratch.qkv.resize(t * qkv_w, 0.0);
    linear(&w.wqkv, None, x, t, &mut scratch.qkv, spec.exact, &mut scratch.lin, pool, kernels)?;
    // 2. RoPE on q and k, then K/V into the cache at their positions
    {
        let _g = debug_span!("rope_kv").entered();
        for (s, row) in scratch.qkv.chunks_exact_mut(qkv_w).enumerate() {
            let p = positions[s] as usize;
            let (cos, sin) = (&w.cos[p * half..(p + 1) * half], &w.sin[p * half..(p + 1) * half]);
            for head in row[..(hq + hkv) * hd].chunks_exact_mut(hd) {
                rope_head(head, cos, sin, spec.rope);
                if let Some(eps) = spec.qk_norm {
                    qk_norm_head(head, eps);
                }
            }
            if spec.is_local() {
                continue; // written block by block in `local_sdpa`
            }
            let (kpart, vpart) = row[hq * hd..].split_at(hkv * hd);
            for g in 0..hkv {
                let at = (g * spec.max_seq_len + p) * hd;
                k_cache.write(at, &kpart[g * hd..(g + 1) * hd]);
                v_cache.write(at, &vpart[g * hd..(g + 1) * hd]);
            }
        }
    }
    if spec.is_local() {
        scratch.ctx.resize(t * hq * hd, 0.0);
        local_sdpa(spec, &scratch.qkv, positions, k_cache, v_cache, &mut scratch.ctx, pool, kernels)?;
        return linear(&w.wo, None, &scratch.ctx[..t * hq * hd], t, out, spec.exact, &mut scratch.lin, pool, kernels);
    }
    // 3. attention per (kv head, token block): the block's K/V rows are made f32 once (fp16
    //    caches) and serve every query head sharing the KV head and every token of the block.
    scratch.ctx.resize(t * hq * hd, 0.0);
    {
        let _g = debug_span!("sdpa", ctx = max_pos + 1).entered();
        let block = if t > 32 { 32 } else { t };
        let n_blocks = t.div_ceil(block);
        let items = hkv * n_blocks;
        let ctx_out = SharedMut(scratch.ctx.as_mut_ptr());
        let qkv = &scratch.qkv;
        let kc: &KvSlice<'_> = k_cache;
        let vc: &KvSlice<'_> = v_cache;
        let scale = 1.0 / (hd as f32).sqrt();
        let kind = kernels.kind;
        let max_seq = spec.max_seq_len;
        let rep = hq / hkv;
        let fixed = fixed_shape(kind, hd, rep);
        pool.run(items, &|item| {
            let (g, b) = (item % hkv, item / hkv);
            let s0 = b * block;
            let s1 = ((b + 1) * block).min(t);
            let _ = &ctx_out;
            let n_ctx = positions[s0..s1].iter().map(|&p| p as usize + 1).max().unwrap_or(0);
            ATTN_TLS.with(|tls| {
                let mut buf = tls.borrow_mut();
                let conv = if matches!(kc, KvSlice::F16(_)) && !fixed { 2 * n_ctx * hd } else { 0 };
                let need = conv + rep * n_ctx + rep * hd;
                if buf.len() < need {
                    buf.resize(need, 0.0);
                }
                let base = g * max_seq * hd;
                if fixed {
                    // AVX-512, AVX2 or NEON with a specialised shape: fp16 rows converted in registers.
                    for s in s0..s1 {
                        let p = positions[s] as usize;
                        let q = &qkv[s * qkv_w + g * rep * hd..s * qkv_w + (g + 1) * rep * hd];
                        let dst = (s * hq + g * rep) * hd;
                        // SAFETY: (s, g) ranges are disjoint between items; dst + rep*hd <= t*hq*hd.
                        let o = unsafe { std::slice::from_raw_parts_mut(ctx_out.0.add(dst), rep * hd) };
                        let sc = &mut buf[..rep * (p + 1)];
                        let r = match (kc, vc) {
                            (KvSlice::F32(k), KvSlice::F32(v)) => sdpa_fixed(
                                kind,
                                hd,
                                rep,
                                q,
                                &k[base..base + (p + 1) * hd],
                                &v[base..base + (p + 1) * hd],
                                p + 1,
                                scale,
                                sc,
                                o,
                            ),
                            (KvSlice::F16(k), KvSlice::F16(v)) => sdpa_fixed(
                                kind,
                                hd,
                                rep,
                                q,
                                &k[base..base + (p + 1) * hd],
                                &v[base..base + (p + 1) * hd],
                                p + 1,
                                scale,
                                sc,
                                o,
                            ),
                            _ => false,
                        };
                        debug_assert!(r);
                    }
                    return;
                }
                let (kv32, rest) = buf.split_at_mut(conv);
                let (k, v): (&[f32], &[f32]) = match (kc, vc) {
                    (KvSlice::F32(k), KvSlice::F32(v)) => (&k[base..base + n_ctx * hd], &v[base..base + n_ctx * hd]),
                    (KvSlice::F16(k), KvSlice::F16(v)) => {
                        let (k32, v32) = kv32.split_at_mut(n_ctx * hd);
                        f16_to_f32_dispatch(kind, &k[base..base + n_ctx * hd], k32);
                        f16_to_f32_dispatch(kind, &v[base..base + n_ctx * hd], v32);
                        (k32, v32)
                    }
                    _ => return, // K and V share a dtype by construction (KvCache::views)
                };
                for s in s0..s1 {
                    let p = positions[s] as usize;
                    let q = &qkv[s * qkv_w + g * rep * hd..s * qkv_w + (g + 1) * rep * hd];
                    let dst = (s * hq + g * rep) * hd;
                    // SAFETY: (s, g) ranges are disjoint between items; dst + rep*hd <= t*hq*hd.
                    let o = unsafe { std::slice::from_raw_parts_mut(ctx_out.0.add(dst), rep * hd) };
                    sdpa_dispatch(kind, q, k, v, p + 1, hd, rep, scale, rest, o);
                }
            });
        })
        .map_err(|_| OpsError::Panicked("attention"))?;
    }
    // 4. output projection
    linear(&w.wo, None, &scratch.ctx[..t * hq * hd], t, out, spec.exact, &mut scratch.lin, pool, kernels)
}

/// Token block of local (sliding-window) attention: its K/V are written, then its queries attend.
pub const WINDOW_BLOCK: usize = 32;

/// Sliding-window attention over a ring cache: per block of up to [`WINDOW_BLOCK`] tokens, their
/// K/V written at slot `p % cache_rows`, then per KV head the union of the block's windows
/// gathered once into contiguous f32 rows, and each query attends to its own window in it.
#[allow(clippy::too_many_arguments)]
fn local_sdpa(
    spec: &AttentionSpec,
    qkv: &[f32],
    positions: &[i64],
    k_cache: &mut KvSlice<'_>,
    v_cache: &mut KvSlice<'_>,
    ctx: &mut [f32],
    pool: &ThreadPool,
    kernels: &Kernels,
) -> Result<()> {
    let (hd, hq, hkv, win) = (spec.head_dim, spec.n_heads, spec.n_kv_heads, spec.window);
    let (rows, qkv_w, rep) = (spec.cache_rows(), spec.qkv_width(), hq / hkv);
    let _g = debug_span!("sdpa_local", window = win).entered();
    let scale = 1.0 / (hd as f32).sqrt();
    let kind = kernels.kind;
    for (b, block) in positions.chunks(WINDOW_BLOCK).enumerate() {
        let s0 = b * WINDOW_BLOCK;
        let (lo_b, hi_b) = (block.iter().min().copied().unwrap_or(0) as usize, block.iter().max().copied().unwrap_or(0) as usize);
        if hi_b - lo_b >= WINDOW_BLOCK {
            // a block's writes must not overwrite a slot its queries read: positions of one block
            // span fewer than WINDOW_BLOCK (true for the runners' consecutive positions)
            return Err(OpsError::Invalid(format!(
                "attention: local layer needs the positions of each {WINDOW_BLOCK}-token block within {WINDOW_BLOCK} of each other, got {lo_b}..={hi_b}"
            )));
        }
        for (j, &p) in block.iter().enumerate() {
            let row = &qkv[(s0 + j) * qkv_w..(s0 + j + 1) * qkv_w];
            let (kpart, vpart) = row[hq * hd..].split_at(hkv * hd);
            let slot = p as usize % rows;
            for g in 0..hkv {
                let at = (g * rows + slot) * hd;
                k_cache.write(at, &kpart[g * hd..(g + 1) * hd]);
                v_cache.write(at, &vpart[g * hd..(g + 1) * hd]);
            }
        }
        // rows first..=hi_b cover every window of the block
        let first = (lo_b + 1).saturating_sub(win);
        let n_rows = hi_b + 1 - first;
        let ctx_out = SharedMut(ctx.as_mut_ptr());
        let (kc, vc): (&KvSlice<'_>, &KvSlice<'_>) = (k_cache, v_cache);
        pool.run(hkv, &|g| {
            let _ = &ctx_out;
            ATTN_TLS.with(|tls| {
                let mut buf = tls.borrow_mut();
                let need = 2 * n_rows * hd + rep * win.min(n_rows) + rep * hd;
                if buf.len() < need {
                    buf.resize(need, 0.0);
                }
                let (kv32, rest) = buf.split_at_mut(2 * n_rows * hd);
                let (k32, v32) = kv32.split_at_mut(n_rows * hd);
                for (i, pos) in (first..=hi_b).enumerate() {
                    let at = (g * rows + pos % rows) * hd;
                    kc.read_f32(at, &mut k32[i * hd..(i + 1) * hd]);
                    vc.read_f32(at, &mut v32[i * hd..(i + 1) * hd]);
                }
                for (j, &p) in block.iter().enumerate() {
                    let s = s0 + j;
                    let p = p as usize;
                    let lo = (p + 1).saturating_sub(win);
                    let (off, n) = (lo - first, p + 1 - lo);
                    let q = &qkv[s * qkv_w + g * rep * hd..s * qkv_w + (g + 1) * rep * hd];
                    let dst = (s * hq + g * rep) * hd;
                    // SAFETY: (s, g) ranges are disjoint between items; dst + rep*hd <= t*hq*hd.
                    let o = unsafe { std::slice::from_raw_parts_mut(ctx_out.0.add(dst), rep * hd) };
                    let (kw, vw) = (&k32[off * hd..(off + n) * hd], &v32[off * hd..(off + n) * hd]);
                    if !sdpa_fixed(kind, hd, rep, q, kw, vw, n, scale, rest, o) {
                        sdpa_dispatch(kind, q, kw, vw, n, hd, rep, scale, rest, o);
                    }
                }
            });
        })
        .map_err(|_| OpsError::Panicked("attention"))?;
    }
    Ok(())
}

/// Whether a kernel specialised on (head_dim, heads per KV head) exists for this kernel set: AVX-512,
/// AVX2 (with F16C) and the three aarch64 sets (one NEON kernel), head_dim 32 / 64 / 128, 1 to 8
/// query heads per KV head.
fn fixed_shape(kind: crate::KernelKind, hd: usize, rep: usize) -> bool {
    use crate::KernelKind::*;
    let isa = match kind {
        #[cfg(target_arch = "x86_64")]
        Avx512Vnni => true,
        #[cfg(target_arch = "x86_64")]
        Avx2 => std::arch::is_x86_feature_detected!("f16c"),
        // NEON (and `fcvtl` for fp16 rows) is baseline AArch64: every aarch64 set shares the kernel
        #[cfg(target_arch = "aarch64")]
        Neon | NeonDotprod | NeonI8mm => true,
        _ => false,
    };
    isa && matches!(hd, 32 | 64 | 128) && (1..=8).contains(&rep)
}

/// The kernel specialised on (head_dim, rep) for `kind` (AVX-512, AVX2 or NEON), reading K/V rows
/// of either element type; false if there is none for this shape (then nothing was written).
#[allow(clippy::too_many_arguments, unused_variables)]
fn sdpa_fixed<T: KvElem>(
    kind: crate::KernelKind,
    hd: usize,
    rep: usize,
    q: &[f32],
    k: &[T],
    v: &[T],
    n_ctx: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) -> bool {
    #[allow(unused_macros)]
    macro_rules! arms {
        ($f:ident) => {
            match (hd, rep) {
                (32, 1) => $f::<2, 1, T>(q, k, v, n_ctx, scale, scores, out),
                (32, 2) => $f::<2, 2, T>(q, k, v, n_ctx, scale, scores, out),
                (32, 3) => $f::<2, 3, T>(q, k, v, n_ctx, scale, scores, out),
                (32, 4) => $f::<2, 4, T>(q, k, v, n_ctx, scale, scores, out),
                (32, 5) => $f::<2, 5, T>(q, k, v, n_ctx, scale, scores, out),
                (32, 6) => $f::<2, 6, T>(q, k, v, n_ctx, scale, scores, out),
                (32, 7) => $f::<2, 7, T>(q, k, v, n_ctx, scale, scores, out),
                (32, 8) => $f::<2, 8, T>(q, k, v, n_ctx, scale, scores, out),
                (64, 1) => $f::<4, 1, T>(q, k, v, n_ctx, scale, scores, out),
                (64, 2) => $f::<4, 2, T>(q, k, v, n_ctx, scale, scores, out),
                (64, 3) => $f::<4, 3, T>(q, k, v, n_ctx, scale, scores, out),
                (64, 4) => $f::<4, 4, T>(q, k, v, n_ctx, scale, scores, out),
                (64, 5) => $f::<4, 5, T>(q, k, v, n_ctx, scale, scores, out),
                (64, 6) => $f::<4, 6, T>(q, k, v, n_ctx, scale, scores, out),
                (64, 7) => $f::<4, 7, T>(q, k, v, n_ctx, scale, scores, out),
                (64, 8) => $f::<4, 8, T>(q, k, v, n_ctx, scale, scores, out),
                (128, 1) => $f::<8, 1, T>(q, k, v, n_ctx, scale, scores, out),
                (128, 2) => $f::<8, 2, T>(q, k, v, n_ctx, scale, scores, out),
                (128, 3) => $f::<8, 3, T>(q, k, v, n_ctx, scale, scores, out),
                (128, 4) => $f::<8, 4, T>(q, k, v, n_ctx, scale, scores, out),
                (128, 5) => $f::<8, 5, T>(q, k, v, n_ctx, scale, scores, out),
                (128, 6) => $f::<8, 6, T>(q, k, v, n_ctx, scale, scores, out),
                (128, 7) => $f::<8, 7, T>(q, k, v, n_ctx, scale, scores, out),
                (128, 8) => $f::<8, 8, T>(q, k, v, n_ctx, scale, scores, out),
                _ => return false,
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::attn_dot::{sdpa_avx2_fixed, sdpa_avx512_fixed};
        if !fixed_shape(kind, hd, rep) {
            return false;
        }
        // SAFETY (all arms): `fixed_shape` checked the ISA of `kind` (Kernels selects
        // Avx512Vnni / Avx2 only on CPUs that have them; F16C checked for AVX2); the slices cover
        // the const shapes (the caller's slicing: q rep*hd, k/v n_ctx*hd, scores rep*n_ctx, out rep*hd).
        unsafe {
            if kind == crate::KernelKind::Avx512Vnni {
                arms!(sdpa_avx512_fixed)
            } else {
                arms!(sdpa_avx2_fixed)
            }
        }
        return true;
    }
    #[cfg(target_arch = "aarch64")]
    {
        use crate::kernels::attn_neon::sdpa_neon_fixed;
        if !fixed_shape(kind, hd, rep) {
            return false;
        }
        // SAFETY: NEON is baseline on aarch64; the slices cover the const shapes (as above).
        unsafe { arms!(sdpa_neon_fixed) }
        return true;
    }
    #[allow(unreachable_code)]
    false
}

#[cfg(target_arch = "x86_64")]
use crate::kernels::attn_dot::KvLoad as KvElem;
#[cfg(target_arch = "aarch64")]
use crate::kernels::attn_neon::KvLoadNeon as KvElem;
/// Placeholder bound elsewhere (the specialised kernels are AVX-512 / AVX2 / NEON only).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub trait KvElem: Copy {}
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
impl KvElem for f32 {}
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
impl KvElem for f16 {}

/// Exact fp16 -> fp32 of one value from its bits, branch-free so that loops vectorise:
/// normals and subnormals by one exact multiply by 2^112, inf/NaN by forcing the exponent.
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let em = (h & 0x7fff) << 13;
    let v = f32::from_bits(em) * f32::from_bits(0x7780_0000); // * 2^112
    let v = if (h & 0x7c00) == 0x7c00 { f32::from_bits(em | 0x7f80_0000) } else { v };
    f32::from_bits(v.to_bits() | ((h & 0x8000) << 16))
}

#[inline(always)]
fn f16_to_f32_generic(src: &[f16], dst: &mut [f32]) {
    for (d, h) in dst.iter_mut().zip(src) {
        *d = f16_bits_to_f32(h.to_bits());
    }
}

fn f16_to_f32_dispatch(kind: crate::KernelKind, src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if kind == crate::KernelKind::Avx512Vnni {
            // SAFETY: Kernels only selects Avx512Vnni on CPUs with AVX-512 F/BW/VL + FMA.
            unsafe { f16_to_f32_avx512(src, dst) };
            return;
        }
        if kind == crate::KernelKind::Avx2 {
            // SAFETY: Kernels only selects Avx2 on CPUs with AVX2 + FMA.
            unsafe { f16_to_f32_avx2(src, dst) };
            return;
        }
    }
    let _ = kind;
    f16_to_f32_generic(src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn f16_to_f32_avx512(src: &[f16], dst: &mut [f32]) {
    f16_to_f32_generic(src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn f16_to_f32_avx2(src: &[f16], dst: &mut [f32]) {
    f16_to_f32_generic(src, dst)
}

#[allow(clippy::too_many_arguments)]
fn sdpa_dispatch(
    kind: crate::KernelKind,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n_ctx: usize,
    hd: usize,
    rep: usize,
    scale: f32,
    buf: &mut [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::KernelKind::*;
        if kind == Avx512Vnni {
            // SAFETY: Kernels only selects Avx512Vnni on CPUs with AVX-512 F/BW/VL + FMA.
            unsafe { sdpa_avx512(q, k, v, n_ctx, hd, rep, scale, buf, out) };
            return;
        }
        if kind == Avx2 {
            // SAFETY: Kernels only selects Avx2 on CPUs with AVX2 + FMA.
            unsafe { sdpa_avx2(q, k, v, n_ctx, hd, rep, scale, buf, out) };
            return;
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if hd % 16 == 0 {
            // SAFETY: NEON is baseline on aarch64; rows are hd long, a multiple of 16.
            sdpa_with(q, k, v, n_ctx, hd, rep, scale, buf, out, |a, b| unsafe { crate::kernels::attn_dot::dot_neon(a, b) });
            return;
        }
    }
    let _ = kind;
    sdpa_generic(q, k, v, n_ctx, hd, rep, scale, buf, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn sdpa_avx512(q: &[f32], k: &[f32], v: &[f32], n_ctx: usize, hd: usize, rep: usize, scale: f32, buf: &mut [f32], out: &mut [f32]) {
    if hd % 16 == 0 {
        // SAFETY: AVX-512F (caller); rows are hd long, a multiple of 16.
        sdpa_with(q, k, v, n_ctx, hd, rep, scale, buf, out, |a, b| unsafe { crate::kernels::attn_dot::dot_avx512(a, b) })
    } else {
        sdpa_generic(q, k, v, n_ctx, hd, rep, scale, buf, out)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn sdpa_avx2(q: &[f32], k: &[f32], v: &[f32], n_ctx: usize, hd: usize, rep: usize, scale: f32, buf: &mut [f32], out: &mut [f32]) {
    if hd % 16 == 0 {
        // SAFETY: AVX2 (caller); rows are hd long, a multiple of 16.
        sdpa_with(q, k, v, n_ctx, hd, rep, scale, buf, out, |a, b| unsafe { crate::kernels::attn_dot::dot_avx2(a, b) })
    } else {
        sdpa_generic(q, k, v, n_ctx, hd, rep, scale, buf, out)
    }
}

/// Attention of `rep` query heads (`q`, `[rep, hd]`) sharing one KV head whose f32 rows `k`, `v`
/// (`[>= n_ctx, hd]`) are read for slots `0..n_ctx`. `buf` holds `rep * n_ctx + rep * hd` floats.
/// Writes `out` `[rep, hd]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn sdpa_generic(q: &[f32], k: &[f32], v: &[f32], n_ctx: usize, hd: usize, rep: usize, scale: f32, buf: &mut [f32], out: &mut [f32]) {
    sdpa_with(q, k, v, n_ctx, hd, rep, scale, buf, out, dot_lanes)
}

/// [`sdpa_generic`] with the dot product `dot` (an ISA's version of [`dot_lanes`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn sdpa_with(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n_ctx: usize,
    hd: usize,
    rep: usize,
    scale: f32,
    buf: &mut [f32],
    out: &mut [f32],
    dot: impl Fn(&[f32], &[f32]) -> f32,
) {
    let (scores, acc) = buf.split_at_mut(rep * n_ctx);
    let acc = &mut acc[..rep * hd];
    // scores[r][t] = q_r . k_t * scale
    for (tpos, krow) in k.chunks_exact(hd).take(n_ctx).enumerate() {
        for r in 0..rep {
            scores[r * n_ctx + tpos] = dot(&q[r * hd..(r + 1) * hd], krow) * scale;
        }
    }
    // softmax per head (max-subtracted, deterministic exp, 16-lane sum); out = acc / sum
    acc.fill(0.0);
    for r in 0..rep {
        let row = &mut scores[r * n_ctx..(r + 1) * n_ctx];
        // max (NaN if any score is NaN: then every weight is NaN, as in PyTorch)
        let mut m = f32::NEG_INFINITY;
        let mut nan = false;
        for &x in row.iter() {
            m = if x > m { x } else { m };
            nan |= x.is_nan();
        }
        if nan {
            m = f32::NAN;
        }
        for x in row.iter_mut() {
            *x = exp_f32(*x - m);
        }
    }
    // acc[r] = sum_t p[r][t] * v_t, in slot order
    for (tpos, vrow) in v.chunks_exact(hd).take(n_ctx).enumerate() {
        for r in 0..rep {
            let p = scores[r * n_ctx + tpos];
            for (a, &vv) in acc[r * hd..(r + 1) * hd].iter_mut().zip(vrow) {
                *a += p * vv;
            }
        }
    }
    for r in 0..rep {
        let inv = 1.0 / sum_lanes(&scores[r * n_ctx..(r + 1) * n_ctx]);
        for (o, &a) in out[r * hd..(r + 1) * hd].iter_mut().zip(&acc[r * hd..(r + 1) * hd]) {
            *o = a * inv;
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Embedding, LM head, dense FFN

/// `out[s] = dequantized row tokens[s] of w` (`q * scale`, the tied LM-head matrix `[V, D]`).
pub fn embedding(w: &PackedRef<'_>, tokens: &[i64], out: &mut [f32]) -> Result<()> {
    let (v, d) = (w.spec.n, w.spec.k);
    let _span = debug_span!("embedding", tokens = tokens.len()).entered();
    check_len("embedding weight data", w.spec.data_bytes(), w.data.len())?;
    check_len("embedding weight scales", w.spec.scale_count(), w.scales.len())?;
    check_len("embedding output", mul_dims("embedding output", &[tokens.len(), d])?, out.len())?;
    for (&tok, row) in tokens.iter().zip(out.chunks_exact_mut(d)) {
        if tok < 0 || tok as usize >= v {
            return Err(OpsError::Invalid(format!("embedding: token id {tok} outside the vocabulary (0..{v})")));
        }
        let n = tok as usize;
        let g = w.spec.group;
        for (gi, chunk) in row.chunks_exact_mut(g).enumerate() {
            let s = packed_scale(w, n, gi);
            for (j, o) in chunk.iter_mut().enumerate() {
                *o = packed_q(w, n, gi * g + j) as f32 * s;
            }
        }
    }
    Ok(())
}

/// Reusable buffers of [`lm_head_last`] and [`swiglu_ffn`].
#[derive(Default)]
pub struct DenseScratch {
    lin: LinearScratch,
    a: Vec<f32>,
    b: Vec<f32>,
}

/// Logits of the last of `rows` rows: `out[V] = W · rms_norm(x[rows-1])` (the final norm is
/// applied to that row only; prefill does not pay for `rows x V`).
#[allow(clippy::too_many_arguments)]
pub fn lm_head_last(
    x: &[f32],
    rows: usize,
    norm_weight: &[f32],
    eps: f32,
    w: &PackedRef<'_>,
    exact: bool,
    out: &mut [f32],
    scratch: &mut DenseScratch,
    pool: &ThreadPool,
    kernels: &Kernels,
) -> Result<()> {
    let d = w.spec.k;
    let _span = debug_span!("lm_head", rows).entered();
    check_len("lm_head norm weight", d, norm_weight.len())?;
    check_len("lm_head input", mul_dims("lm_head input", &[rows, d])?, x.len())?;
    check_len("lm_head output", w.spec.n, out.len())?;
    if rows == 0 {
        return Err(OpsError::ZeroDim { what: "lm_head rows" });
    }
    scratch.a.resize(d, 0.0);
    rms_norm_row(&x[(rows - 1) * d..], norm_weight, eps, &mut scratch.a[..d]);
    linear(w, None, &scratch.a[..d], 1, out, exact, &mut scratch.lin, pool, kernels)
}

/// Dense SwiGLU FFN on the fused matrix `w13` (`[w1; w3]`, `2F x D`) and `w2` (`D x F`):
/// `out = w2 · (silu(w1 x) * (w3 x))`, one GEMM for gate+up.
#[allow(clippy::too_many_arguments)]
pub fn swiglu_ffn(
    w13: &PackedRef<'_>,
    w2: &PackedRef<'_>,
    x: &[f32],
    rows: usize,
    exact: bool,
    out: &mut [f32],
    scratch: &mut DenseScratch,
    pool: &ThreadPool,
    kernels: &Kernels,
) -> Result<()> {
    let (d, f) = (w13.spec.k, w2.spec.k);
    let _span = debug_span!("swiglu_ffn", rows).entered();
    if w13.spec.n != 2 * f || w2.spec.n != d {
        return Err(OpsError::Invalid(format!(
            "swiglu_ffn: w13 is {}x{}, w2 is {}x{}: expected 2Fx D and D x F",
            w13.spec.n, w13.spec.k, w2.spec.n, w2.spec.k
        )));
    }
    check_len("swiglu_ffn input", mul_dims("swiglu_ffn input", &[rows, d])?, x.len())?;
    check_len("swiglu_ffn output", rows * d, out.len())?;
    scratch.a.resize(rows * 2 * f, 0.0);
    scratch.b.resize(rows * f, 0.0);
    linear(w13, None, x, rows, &mut scratch.a[..rows * 2 * f], exact, &mut scratch.lin, pool, kernels)?;
    {
        let _g = debug_span!("act").entered();
        swiglu_rows(&scratch.a[..rows * 2 * f], f, &mut scratch.b[..rows * f]);
    }
    linear(w2, None, &scratch.b[..rows * f], rows, out, exact, &mut scratch.lin, pool, kernels)
}

/// `out = a + b` elementwise (residual connections).
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) -> Result<()> {
    check_len("add rhs", a.len(), b.len())?;
    check_len("add output", a.len(), out.len())?;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Rng;

    /// Each kernel set's specialised attention against `sdpa_generic` bit for bit, directly on the
    /// attention output (the op tests see it through the output projection, whose Q8 rounding can
    /// hide a last-bit difference): every specialised shape, context lengths around the kernels'
    /// 2-, 4- and 16-slot steps, fp16 and fp32 rows, signed zeros (all-zero score lanes), large
    /// scores (exp underflow to 0) and a fully masked-like row of equal scores.
    #[test]
    fn specialised_attention_equals_the_generic_bits() {
        let mut r = Rng(0x5eed_a77e_0000_0001);
        let kinds: Vec<_> = Kernels::available().into_iter().filter(|k| fixed_shape(k.kind, 64, 3)).collect();
        for ks in &kinds {
            for hd in [32usize, 64, 128] {
                for rep in 1..=8usize {
                    for n in [1usize, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 33, 66] {
                        for case in 0..3 {
                            let mut q = r.vec(rep * hd, 1.0);
                            let mut k = r.vec(n * hd, 1.0);
                            let v = r.vec(n * hd, 1.0);
                            match case {
                                // -0.0 products in whole lanes: q zero on lanes 0..4 of each chunk
                                1 => {
                                    for (i, x) in q.iter_mut().enumerate() {
                                        if i % 16 < 4 {
                                            *x = 0.0;
                                        }
                                    }
                                    for (i, x) in k.iter_mut().enumerate() {
                                        if i % 16 < 4 {
                                            *x = -x.abs();
                                        }
                                    }
                                    k[..hd].iter_mut().for_each(|x| *x = -0.0);
                                }
                                // scores spread over +-hundreds: exp underflows for most slots
                                2 => q.iter_mut().for_each(|x| *x *= 64.0),
                                _ => {}
                            }
                            let scale = 1.0 / (hd as f32).sqrt();
                            let mut want = vec![0f32; rep * hd];
                            let mut buf = vec![0f32; rep * n + rep * hd];
                            let k16: Vec<f16> = k.iter().map(|&x| f16::from_f32(x)).collect();
                            let v16: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
                            let (k16f, v16f): (Vec<f32>, Vec<f32>) =
                                (k16.iter().map(|h| h.to_f32()).collect(), v16.iter().map(|h| h.to_f32()).collect());
                            for fp16 in [false, true] {
                                let (kr, vr) = if fp16 { (&k16f, &v16f) } else { (&k, &v) };
                                sdpa_generic(&q, kr, vr, n, hd, rep, scale, &mut buf, &mut want);
                                let mut got = vec![f32::NAN; rep * hd];
                                let mut sc = vec![0f32; rep * n];
                                let done = if fp16 {
                                    sdpa_fixed(ks.kind, hd, rep, &q, &k16, &v16, n, scale, &mut sc, &mut got)
                                } else {
                                    sdpa_fixed(ks.kind, hd, rep, &q, &k, &v, n, scale, &mut sc, &mut got)
                                };
                                assert!(done, "{:?} has no kernel for head_dim {hd}, {rep} heads", ks.kind);
                                let same = want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
                                assert!(same, "{:?}: head_dim {hd}, {rep} heads, {n} slots, case {case}, fp16 {fp16}", ks.kind);
                            }
                        }
                    }
                }
            }
        }
    }
}
