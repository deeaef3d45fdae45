//! Dynamic per-token asymmetric INT8 activation quantization (the Q8 path's left operand), with
//! exactly the numerics of torchao's 8da4w activation fake quantization
//! (`IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)`:
//! `choose_qparams_affine(ASYMMETRIC, eps = f32::EPSILON)` + `_fake_quantize_per_token`), which is
//! also what ExecuTorch's XNNPACK 8da4w kernels compute. Formulas: docs/DESIGN.md section 3.

use crate::error::{check_len, Result};

/// Quantized activations of `m` rows of length `k`: per row a scale and a zero point, per group
/// the sum of the zero-point-shifted values (for the weight offset corrections of the kernels).
#[derive(Clone, Debug, Default)]
pub struct QuantActs {
    pub m: usize,
    pub k: usize,
    pub group: usize,
    /// `[m, k]` int8 values in [-128, 127]; the value represented is `(q - zp) * scale`.
    pub q: Vec<i8>,
    /// `[m]` scales (NaN for a row that contained a NaN or an infinity).
    pub scale: Vec<f32>,
    /// `[m]` zero points in [-128, 127].
    pub zp: Vec<i32>,
    /// `[m, k / group]` sums of `q - zp` over each group.
    pub gsum: Vec<i32>,
}

/// Borrowed view of quantized activations (what kernels take).
#[derive(Clone, Copy, Debug)]
pub struct QuantActsRef<'a> {
    pub m: usize,
    pub k: usize,
    pub group: usize,
    pub q: &'a [i8],
    pub scale: &'a [f32],
    pub zp: &'a [i32],
    pub gsum: &'a [i32],
}

impl<'a> QuantActsRef<'a> {
    /// Rows `row0 .. row0 + rows` (panics if out of range: callers pass rows they computed).
    pub fn rows(&self, row0: usize, rows: usize) -> QuantActsRef<'a> {
        let ng = self.k / self.group;
        QuantActsRef {
            m: rows,
            k: self.k,
            group: self.group,
            q: &self.q[row0 * self.k..(row0 + rows) * self.k],
            scale: &self.scale[row0..row0 + rows],
            zp: &self.zp[row0..row0 + rows],
            gsum: &self.gsum[row0 * ng..(row0 + rows) * ng],
        }
    }
}

impl QuantActs {
    /// Resize buffers (grow only: no allocation once warmed up for the largest shape).
    pub fn reset(&mut self, m: usize, k: usize, group: usize) {
        self.m = m;
        self.k = k;
        self.group = group;
        self.q.resize(m * k, 0);
        self.scale.resize(m, 0.0);
        self.zp.resize(m, 0);
        self.gsum.resize(m * (k / group), 0);
    }
    pub fn as_ref(&self) -> QuantActsRef<'_> {
        QuantActsRef {
            m: self.m,
            k: self.k,
            group: self.group,
            q: &self.q[..self.m * self.k],
            scale: &self.scale[..self.m],
            zp: &self.zp[..self.m],
            // (a never-reset buffer has group 0: no groups, no rows)
            gsum: &self.gsum[..self.m * self.k.checked_div(self.group).unwrap_or(0)],
        }
    }
    /// Quantize `x[m, k]` (row-major) into `self`.
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize, group: usize) -> Result<()> {
        check_len("activations", crate::error::mul_dims("activations", &[m, k])?, x.len())?;
        if group == 0 || k % group != 0 {
            return Err(crate::error::OpsError::GroupDoesNotDivideK { k, group });
        }
        self.reset(m, k, group);
        for i in 0..m {
            self.quantize_row_at(i, &x[i * k..(i + 1) * k]);
        }
        Ok(())
    }
    /// Quantize one row in place at row index `i` (buffers must be `reset` first).
    pub fn quantize_row_at(&mut self, i: usize, x: &[f32]) {
        let (k, g) = (self.k, self.group);
        let ng = k / g;
        quantize_row(x, g, &mut self.q[i * k..(i + 1) * k], &mut self.scale[i], &mut self.zp[i], &mut self.gsum[i * ng..(i + 1) * ng]);
    }
    /// Copy row `src` of `other` into row `dst` of `self` (gather for the grouped GEMM).
    pub fn copy_row_from(&mut self, dst: usize, other: &QuantActs, src: usize) {
        let (k, ng) = (self.k, self.k / self.group);
        self.q[dst * k..(dst + 1) * k].copy_from_slice(&other.q[src * k..(src + 1) * k]);
        self.scale[dst] = other.scale[src];
        self.zp[dst] = other.zp[src];
        self.gsum[dst * ng..(dst + 1) * ng].copy_from_slice(&other.gsum[src * ng..(src + 1) * ng]);
    }
}

/// Quantize one row `x[k]` (docs/DESIGN.md section 3), torchao's per-token asymmetric int8:
///
/// ```text
/// lo = min(min_k x, 0), hi = max(max_k x, 0)
/// scale = max((hi - lo) / 255, f32::EPSILON)
/// zp    = clamp(-128 - round_half_even(lo / scale), -128, 127)
/// q     = clamp(round_half_even(x * (1 / scale)) + zp, -128, 127)      (x_hat = (q - zp) * scale)
/// ```
///
/// Non-finite input: a row containing a NaN or an infinity gets `q = 0`, `zp = 0`, `gsum = 0`
/// and `scale = NaN`, so every output of that row (token) is NaN, as torchao's fake quantization
/// gives (its scale or zero point becomes NaN/inf there); other rows are unaffected.
/// Vectorised builds of the same code where the CPU allows (only exact IEEE operations: the same
/// bits on every build and ISA).
pub fn quantize_row(x: &[f32], group: usize, q: &mut [i8], scale: &mut f32, zp: &mut i32, gsum: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") {
            // SAFETY: the CPU has the enabled features (checked above).
            unsafe { quantize_row_avx512(x, group, q, scale, zp, gsum) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            unsafe { quantize_row_avx2(x, group, q, scale, zp, gsum) };
            return;
        }
    }
    quantize_row_generic(x, group, q, scale, zp, gsum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
unsafe fn quantize_row_avx512(x: &[f32], group: usize, q: &mut [i8], scale: &mut f32, zp: &mut i32, gsum: &mut [i32]) {
    quantize_row_generic(x, group, q, scale, zp, gsum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2(x: &[f32], group: usize, q: &mut [i8], scale: &mut f32, zp: &mut i32, gsum: &mut [i32]) {
    quantize_row_generic(x, group, q, scale, zp, gsum)
}

/// 1.5 * 2^23: for |v| < 2^22, `(v + MAGIC) - MAGIC` is `v` rounded to the nearest integer, ties
/// to even (IEEE default rounding), and the low mantissa bits of `v + MAGIC` hold that integer.
const MAGIC: f32 = 12_582_912.0;

#[inline(always)]
fn quantize_row_generic(x: &[f32], group: usize, q: &mut [i8], scale: &mut f32, zp: &mut i32, gsum: &mut [i32]) {
    // min / max with 16 lane-wise accumulators (exact and order-independent without NaN, so equal
    // to the sequential fold), and a flag for non-finite values (exponent bits all ones).
    let mut lo = [0f32; 16];
    let mut hi = [0f32; 16];
    let mut bad = [0u32; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..16 {
            let v = c[l];
            lo[l] = if v < lo[l] { v } else { lo[l] };
            hi[l] = if v > hi[l] { v } else { hi[l] };
            bad[l] |= ((v.to_bits() & 0x7F80_0000) == 0x7F80_0000) as u32;
        }
    }
    for (l, &v) in rest.iter().enumerate() {
        lo[l] = if v < lo[l] { v } else { lo[l] };
        hi[l] = if v > hi[l] { v } else { hi[l] };
        bad[l] |= ((v.to_bits() & 0x7F80_0000) == 0x7F80_0000) as u32;
    }
    if bad.iter().any(|&b| b != 0) {
        q.fill(0);
        *scale = f32::NAN;
        *zp = 0;
        gsum.fill(0);
        return;
    }
    let mn = lo.iter().fold(0f32, |m, &v| if v < m { v } else { m });
    let mx = hi.iter().fold(0f32, |m, &v| if v > m { v } else { m });
    // torchao: scale = clamp((max_pos - min_neg) / (qmax - qmin), min = eps) in fp32.
    let s = ((mx - mn) / 255.0).max(f32::EPSILON);
    // zero_point = clamp(qmin - round(min_neg / scale), qmin, qmax) (|mn / s| <= 255: exact rounding).
    let z = (-128.0 - ((mn / s + MAGIC) - MAGIC)).clamp(-128.0, 127.0);
    *scale = s;
    *zp = z as i32;
    let inv = 1.0 / s;
    for (qi, &v) in q.iter_mut().zip(x) {
        // clamp(round(v * inv) + zp, -128, 127); |v * inv| <= 255 (or v * inv = 0 if s = inf), so
        // the magic-number rounding is exact, and so is the float -> int conversion by the bits.
        let r = (((v * inv + MAGIC) - MAGIC) + z).clamp(-128.0, 127.0);
        *qi = ((r + MAGIC).to_bits() as i32).wrapping_sub(0x4B40_0000) as i8;
    }
    let zi = z as i32;
    for (g, out) in gsum.iter_mut().enumerate() {
        *out = q[g * group..(g + 1) * group].iter().map(|&v| v as i32 - zi).sum();
    }
}

/// `round_half_even(v)` for |v| < 2^22 without a libm call (vectorises), as used by
/// `quantize_row`: `(v + 1.5 * 2^23) - 1.5 * 2^23` (IEEE round to nearest, ties to even).
#[inline(always)]
pub fn round_small(v: f32) -> f32 {
    (v + MAGIC) - MAGIC
}

/// `y[j] = fma(a, x[j], y[j])` (the same fused multiply-add as `f32::mul_add`, bit for bit), using
/// the FMA instruction when the CPU has it instead of a libm call per element.
pub fn fma_axpy(y: &mut [f32], a: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has FMA (checked above).
            unsafe { fma_axpy_fma(y, a, x) };
            return;
        }
    }
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv = a.mul_add(xv, *yv);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn fma_axpy_fma(y: &mut [f32], a: f32, x: &[f32]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv = a.mul_add(xv, *yv);
    }
}
