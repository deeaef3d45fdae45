//! Dynamic per-token symmetric INT8 activation quantization (the Q8 path's left operand).

use crate::error::{check_len, Result};

/// Quantized activations of `m` rows of length `k`, with per-group sums for the offset trick.
#[derive(Clone, Debug, Default)]
pub struct QuantActs {
    pub m: usize,
    pub k: usize,
    pub group: usize,
    /// `[m, k]` int8 values in [-127, 127].
    pub q: Vec<i8>,
    /// `[m]` scales.
    pub scale: Vec<f32>,
    /// `[m, k / group]` sums of `q` over each group.
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
        self.gsum.resize(m * (k / group), 0);
    }
    pub fn as_ref(&self) -> QuantActsRef<'_> {
        QuantActsRef {
            m: self.m,
            k: self.k,
            group: self.group,
            q: &self.q[..self.m * self.k],
            scale: &self.scale[..self.m],
            gsum: &self.gsum[..self.m * (self.k / self.group)],
        }
    }
    /// Quantize `x[m, k]` (row-major) into `self`.
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize, group: usize) -> Result<()> {
        check_len("activations", m * k, x.len())?;
        self.reset(m, k, group);
        for i in 0..m {
            quantize_row(
                &x[i * k..(i + 1) * k],
                group,
                &mut self.q[i * k..(i + 1) * k],
                &mut self.scale[i],
                &mut self.gsum[i * (k / group)..(i + 1) * (k / group)],
            );
        }
        Ok(())
    }
    /// Quantize one row in place at row index `i` (buffers must be `reset` first).
    pub fn quantize_row_at(&mut self, i: usize, x: &[f32]) {
        let (k, g) = (self.k, self.group);
        let ng = k / g;
        quantize_row(x, g, &mut self.q[i * k..(i + 1) * k], &mut self.scale[i], &mut self.gsum[i * ng..(i + 1) * ng]);
    }
    /// Copy row `src` of `other` into row `dst` of `self` (gather for the grouped GEMM).
    pub fn copy_row_from(&mut self, dst: usize, other: &QuantActs, src: usize) {
        let (k, ng) = (self.k, self.k / self.group);
        self.q[dst * k..(dst + 1) * k].copy_from_slice(&other.q[src * k..(src + 1) * k]);
        self.scale[dst] = other.scale[src];
        self.gsum[dst * ng..(dst + 1) * ng].copy_from_slice(&other.gsum[src * ng..(src + 1) * ng]);
    }
}

/// Quantize one row (vectorised build where the CPU allows; same bits: only division, rounding
/// by `round_clamp_127` and integer ops). Non-finite inputs: NaN maps to 0, +-inf saturates (scale from finite values);
/// the row's fp32 result is then finite, which keeps one bad token from poisoning the batch.
pub fn quantize_row(x: &[f32], group: usize, q: &mut [i8], scale: &mut f32, gsum: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") {
            // SAFETY: the CPU has the enabled features (checked above).
            unsafe { quantize_row_avx512(x, group, q, scale, gsum) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            unsafe { quantize_row_avx2(x, group, q, scale, gsum) };
            return;
        }
    }
    quantize_row_generic(x, group, q, scale, gsum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
unsafe fn quantize_row_avx512(x: &[f32], group: usize, q: &mut [i8], scale: &mut f32, gsum: &mut [i32]) {
    quantize_row_generic(x, group, q, scale, gsum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2(x: &[f32], group: usize, q: &mut [i8], scale: &mut f32, gsum: &mut [i32]) {
    quantize_row_generic(x, group, q, scale, gsum)
}

#[inline(always)]
fn quantize_row_generic(x: &[f32], group: usize, q: &mut [i8], scale: &mut f32, gsum: &mut [i32]) {
    // max |v| over finite v: 16 lane-wise maxima, then their maximum (max is exact and
    // order-independent without NaN, so this equals the sequential fold).
    let mut lanes = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..16 {
            let a = c[l].abs();
            lanes[l] = if c[l].is_finite() && a > lanes[l] { a } else { lanes[l] };
        }
    }
    let max_abs = rest
        .iter()
        .chain(lanes.iter())
        .fold(0f32, |m, &v| if v.is_finite() && v.abs() > m { v.abs() } else { m });
    let s = (max_abs / 127.0).max(f32::MIN_POSITIVE);
    *scale = s;
    for (qi, &v) in q.iter_mut().zip(x) {
        // Same as `round_clamp_127(v / s) as i8` (NaN -> 0, infinities saturate), with the
        // float -> int conversion done by the magic-number bits so that it vectorises.
        let r = round_clamp_127(v / s);
        let i = ((r + 12_582_912.0).to_bits() as i32).wrapping_sub(0x4B40_0000);
        *qi = if r.is_nan() { 0 } else { i as i8 };
    }
    for (g, out) in gsum.iter_mut().enumerate() {
        *out = q[g * group..(g + 1) * group].iter().map(|&v| v as i32).sum();
    }
}

/// `crate::quant::round_half_even(v).clamp(-127.0, 127.0)` as i8, bit for bit, without a libm `rintf` call (the crate
/// is built for baseline x86-64, where `round_ties_even` is not inlined), so the loop vectorises.
/// For |v| < 2^22, `(v + 1.5*2^23) - 1.5*2^23` rounds to the nearest integer, ties to even (IEEE
/// default rounding). Larger finite |v| may round differently but clamp to +-127 either way;
/// +-inf stays +-inf (clamped); NaN stays NaN (`as i8` maps it to 0). The only difference is the
/// sign of a zero result, which `as i8` erases.
#[inline(always)]
pub fn round_clamp_127(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    ((v + MAGIC) - MAGIC).clamp(-127.0, 127.0)
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
