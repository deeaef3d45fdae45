//! NEON decode attention specialised on (head_dim = `16 * C`, query heads per KV head `R`), for
//! every aarch64 kernel set (`neon`, `neon-dotprod`, `neon-i8mm`: the attention arithmetic is
//! fp32 and NEON is baseline on AArch64, so one kernel serves all three).
//!
//! The same arithmetic in the same order as `decoder::sdpa_generic` (and the x86 kernels of
//! `attn_dot.rs`), so the same bits:
//! - scores: `dot16(q, k) * scale`, 16 lanes `l = i % 16` (four 4-lane registers: lanes 0-3,
//!   4-7, 8-11, 12-15), separate multiply and add, lanes combined `l + 8`, `l + 4`, `l + 2`,
//!   `l + 1`. The last two levels are done for four heads at once (`zip1/zip2 .2d` + `fadd`, then
//!   `faddp`): the same additions of the same operands.
//! - softmax: the maximum in vectors (NaN if any score is NaN), `exp_f32(x - m)` four lanes at a
//!   time (`exp4`: the scalar function's operations, fused multiply-adds where it has them,
//!   nowhere else), the 16-lane sum.
//! - values: `acc += p * v` in slot order from zero, `out = acc * (1 / sum)`.
//!
//! K and V rows are read once per group of up to four query heads, in their stored type: fp16
//! rows are widened in registers with `fcvtl`/`fcvtl2` (exact, base ARMv8.0: no FP16 extension
//! needed; `vcvt_f32_f16` is not stable in Rust, hence `asm!`), so there is no f32 copy of the
//! cache. ARMv8.2's fp16 *arithmetic* is deliberately not used: products and sums rounded to fp16
//! would change the bits of every kernel set (and lose accuracy over a 1024-slot sum).
//!
//! One deviation from the literal reference, with no effect on any output bit: a score's lane
//! accumulators start at the first chunk's product instead of `0 + product`. The two differ only
//! when that product is `-0.0`, and a lane can only stay `-0.0` (against `+0.0`) if all its terms
//! are zeros, so at most the sign of a zero score changes; the maximum and `exp_f32(x - m)` do not
//! see the sign of a zero (`exp_f32(±0) = 1`, `x - (±0) = x`). The value accumulators, whose sign
//! of zero would reach the output, do start from zero.

use std::arch::aarch64::*;

/// A KV-cache element the NEON attention kernel reads 16 at a time as f32.
pub trait KvLoadNeon: Copy {
    /// Elements `p[0..16]` as f32, lanes 0-3, 4-7, 8-11, 12-15.
    ///
    /// # Safety
    /// 16 elements readable at `p`.
    unsafe fn load16(p: *const Self) -> [float32x4_t; 4];
}

impl KvLoadNeon for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> [float32x4_t; 4] {
        let x = vld1q_f32_x4(p);
        [x.0, x.1, x.2, x.3]
    }
}

impl KvLoadNeon for half::f16 {
    #[inline(always)]
    unsafe fn load16(p: *const half::f16) -> [float32x4_t; 4] {
        let h = vld1q_u16_x2(p as *const u16);
        [fcvtl_lo(h.0), fcvtl_hi(h.0), fcvtl_lo(h.1), fcvtl_hi(h.1)]
    }
}

/// Lanes 0-3 of eight fp16 values as f32 (exact).
#[inline(always)]
unsafe fn fcvtl_lo(h: uint16x8_t) -> float32x4_t {
    let r: float32x4_t;
    std::arch::asm!("fcvtl {0:v}.4s, {1:v}.4h", out(vreg) r, in(vreg) h, options(pure, nomem, nostack, preserves_flags));
    r
}

/// Lanes 4-7 of eight fp16 values as f32 (exact).
#[inline(always)]
unsafe fn fcvtl_hi(h: uint16x8_t) -> float32x4_t {
    let r: float32x4_t;
    std::arch::asm!("fcvtl2 {0:v}.4s, {1:v}.8h", out(vreg) r, in(vreg) h, options(pure, nomem, nostack, preserves_flags));
    r
}

/// Attention of `R` query heads sharing one KV head, head_dim = `16 * C`, over K/V rows
/// `0..n_ctx` (see the module docs for the arithmetic). Heads go in groups of at most four
/// (the value pass keeps a group's accumulators in registers); each group reads K and V once.
///
/// # Safety
/// `q.len() >= R*16*C`, `k.len(), v.len() >= n_ctx*16*C`, `scores.len() >= R*n_ctx`,
/// `out.len() >= R*16*C` (NEON is baseline on aarch64).
pub unsafe fn sdpa_neon_fixed<const C: usize, const R: usize, T: KvLoadNeon>(
    q: &[f32],
    k: &[T],
    v: &[T],
    n_ctx: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = 16 * C;
    debug_assert!(q.len() >= R * hd && k.len() >= n_ctx * hd && v.len() >= n_ctx * hd);
    debug_assert!(scores.len() >= R * n_ctx && out.len() >= R * hd);
    let (k, v) = (k.as_ptr(), v.as_ptr());
    let mut r0 = 0;
    while r0 < R {
        let g = (R - r0).min(4);
        // SAFETY: heads r0..r0 + g < R: their q rows, score rows and output rows are in bounds.
        let (qg, sg, og) = (q.as_ptr().add(r0 * hd), scores.as_mut_ptr().add(r0 * n_ctx), out.as_mut_ptr().add(r0 * hd));
        match g {
            1 => group::<C, 1, T>(qg, k, v, n_ctx, scale, sg, og),
            2 => group::<C, 2, T>(qg, k, v, n_ctx, scale, sg, og),
            3 => group::<C, 3, T>(qg, k, v, n_ctx, scale, sg, og),
            _ => group::<C, 4, T>(qg, k, v, n_ctx, scale, sg, og),
        }
        r0 += g;
    }
}

/// `G <= 4` heads: q rows `q[r * hd..]`, score rows `scores[r * n..]`, output rows `out[r * hd..]`.
#[inline(always)]
unsafe fn group<const C: usize, const G: usize, T: KvLoadNeon>(
    q: *const f32,
    k: *const T,
    v: *const T,
    n: usize,
    scale: f32,
    scores: *mut f32,
    out: *mut f32,
) {
    let hd = 16 * C;
    let zero = vdupq_n_f32(0.0);
    // 1. scores, one slot at a time: each 16-wide chunk of the K row is loaded (and widened) once
    //    and multiplied into the G heads' lane accumulators
    let sc = vdupq_n_f32(scale);
    for t in 0..n {
        let kr = k.add(t * hd);
        let mut acc = [[zero; 4]; G];
        for c in 0..C {
            let kc = T::load16(kr.add(16 * c));
            for (r, a) in acc.iter_mut().enumerate() {
                let qc = vld1q_f32_x4(q.add(r * hd + 16 * c));
                let qc = [qc.0, qc.1, qc.2, qc.3];
                for j in 0..4 {
                    let p = vmulq_f32(qc[j], kc[j]);
                    // first chunk: the product itself (see the module docs on `0 + product`)
                    a[j] = if c == 0 { p } else { vaddq_f32(a[j], p) };
                }
            }
        }
        // l + 8 and l + 4 per head: lanes 0..4 of (lanes 0..8 + lanes 8..16)
        let mut h = [zero; 4];
        for r in 0..G {
            h[r] = vaddq_f32(vaddq_f32(acc[r][0], acc[r][2]), vaddq_f32(acc[r][1], acc[r][3]));
        }
        // heads beyond G repeat the last one (computed, never stored)
        for r in G..4 {
            h[r] = h[G - 1];
        }
        let s = vmulq_f32(finish4(h), sc);
        let row = scores.add(t);
        *row = vgetq_lane_f32::<0>(s);
        if G > 1 {
            *row.add(n) = vgetq_lane_f32::<1>(s);
        }
        if G > 2 {
            *row.add(2 * n) = vgetq_lane_f32::<2>(s);
        }
        if G > 3 {
            *row.add(3 * n) = vgetq_lane_f32::<3>(s);
        }
    }
    // 2. softmax numerators in place, and 1 / sum per head
    let mut inv = [0.0f32; G];
    for (r, iv) in inv.iter_mut().enumerate() {
        let row = scores.add(r * n);
        let m = max_or_nan(row, n);
        let mv = vdupq_n_f32(m);
        let full = n / 4 * 4;
        let mut i = 0;
        while i < full {
            vst1q_f32(row.add(i), exp4(vsubq_f32(vld1q_f32(row.add(i)), mv)));
            i += 4;
        }
        for i in full..n {
            *row.add(i) = crate::moe::exp_f32(*row.add(i) - m);
        }
        *iv = 1.0 / sum16(row, n);
    }
    // 3. acc[r] = sum_t p[r][t] * v_t in slot order, one 16-wide chunk of the head at a time (the
    //    G heads' 4G accumulators stay in registers); four slots per step share one load of each
    //    head's weights, used by element (`fmul v, v, p.s[u]`: the same product as a broadcast)
    for c in 0..C {
        let mut acc = [[zero; 4]; G];
        let vc = v.add(16 * c);
        let full = n / 4 * 4;
        let mut t = 0;
        while t < full {
            let mut p = [zero; G];
            for (r, pr) in p.iter_mut().enumerate() {
                *pr = vld1q_f32(scores.add(r * n + t));
            }
            for u in 0..4 {
                let x = T::load16(vc.add((t + u) * hd));
                for r in 0..G {
                    for j in 0..4 {
                        acc[r][j] = vaddq_f32(acc[r][j], mul_lane(x[j], p[r], u));
                    }
                }
            }
            t += 4;
        }
        while t < n {
            let x = T::load16(vc.add(t * hd));
            for r in 0..G {
                let p = vdupq_n_f32(*scores.add(r * n + t));
                for j in 0..4 {
                    acc[r][j] = vaddq_f32(acc[r][j], vmulq_f32(x[j], p));
                }
            }
            t += 1;
        }
        for r in 0..G {
            let iv = vdupq_n_f32(inv[r]);
            let o = out.add(r * hd + 16 * c);
            let y = float32x4x4_t(vmulq_f32(acc[r][0], iv), vmulq_f32(acc[r][1], iv), vmulq_f32(acc[r][2], iv), vmulq_f32(acc[r][3], iv));
            vst1q_f32_x4(o, y);
        }
    }
}

/// `x * p[u]` (u a constant after unrolling).
#[inline(always)]
unsafe fn mul_lane(x: float32x4_t, p: float32x4_t, u: usize) -> float32x4_t {
    match u {
        0 => vmulq_laneq_f32::<0>(x, p),
        1 => vmulq_laneq_f32::<1>(x, p),
        2 => vmulq_laneq_f32::<2>(x, p),
        _ => vmulq_laneq_f32::<3>(x, p),
    }
}

/// The last two levels of the lane tree for four dot products at once: `h[i]` holds lanes 0..4
/// of product i after `l + 8` and `l + 4`; returns `[(h0[0] + h0[2]) + (h0[1] + h0[3]), ...]`.
#[inline(always)]
unsafe fn finish4(h: [float32x4_t; 4]) -> float32x4_t {
    // l + 2 for two products: [a0, a1, b0, b1] + [a2, a3, b2, b3]
    let pair = |a: float32x4_t, b: float32x4_t| {
        let (a, b) = (vreinterpretq_f64_f32(a), vreinterpretq_f64_f32(b));
        vaddq_f32(vreinterpretq_f32_f64(vzip1q_f64(a, b)), vreinterpretq_f32_f64(vzip2q_f64(a, b)))
    };
    // l + 1: adjacent pairs
    vpaddq_f32(pair(h[0], h[1]), pair(h[2], h[3]))
}

/// The maximum of `n` floats at `row`, NaN (`f32::NAN`) if any is NaN: the value of
/// `sdpa_generic`'s scalar loop (`fmax` lane by lane; only the sign of a zero maximum can depend
/// on the order, and `exp_f32(x - m)` does not see it).
#[inline(always)]
unsafe fn max_or_nan(row: *const f32, n: usize) -> f32 {
    let full = n / 4 * 4;
    let mut mv = vdupq_n_f32(f32::NEG_INFINITY);
    let mut i = 0;
    while i < full {
        mv = vmaxq_f32(mv, vld1q_f32(row.add(i))); // fmax: NaN if either is NaN
        i += 4;
    }
    let mut m = vmaxvq_f32(mv);
    let mut nan = m.is_nan();
    for i in full..n {
        let x = *row.add(i);
        m = if x > m { x } else { m };
        nan |= x.is_nan();
    }
    if nan {
        f32::NAN
    } else {
        m
    }
}

/// `sum_lanes` of `n` floats at `row`: lanes `i % 16` in four registers from zero, combined
/// `l + 8`, `l + 4`, `l + 2`, `l + 1`, then the tail in order.
#[inline(always)]
unsafe fn sum16(row: *const f32, n: usize) -> f32 {
    let full = n / 16 * 16;
    let mut a = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i < full {
        let x = vld1q_f32_x4(row.add(i));
        a[0] = vaddq_f32(a[0], x.0);
        a[1] = vaddq_f32(a[1], x.1);
        a[2] = vaddq_f32(a[2], x.2);
        a[3] = vaddq_f32(a[3], x.3);
        i += 16;
    }
    let c = vaddq_f32(vaddq_f32(a[0], a[2]), vaddq_f32(a[1], a[3]));
    let d = vadd_f32(vget_low_f32(c), vget_high_f32(c));
    let mut s = vget_lane_f32::<0>(d) + vget_lane_f32::<1>(d);
    for i in full..n {
        s += *row.add(i);
    }
    s
}

/// [`crate::moe::exp_f32`] on four lanes: the same operations (fused multiply-adds exactly where
/// it calls `mul_add`, with the same operands), so the same bits.
#[inline(always)]
unsafe fn exp4(x: float32x4_t) -> float32x4_t {
    use crate::moe::exp_consts::*;
    let d = vdupq_n_f32;
    // clamp: fmax/fmin keep a NaN (as `f32::clamp` does)
    let xc = vminq_f32(vmaxq_f32(x, d(LO)), d(HI));
    let tn = vaddq_f32(vmulq_f32(xc, d(LOG2E)), d(MAGIC));
    let nf = vsubq_f32(tn, d(MAGIC));
    let r = vfmaq_f32(xc, nf, d(-C1)); // nf.mul_add(-C1, xc)
    let r = vfmaq_f32(r, nf, d(-C2));
    let mut p = d(POLY[0]);
    for &c in &POLY[1..] {
        p = vfmaq_f32(d(c), p, r); // p.mul_add(r, c)
    }
    let p = vaddq_f32(vfmaq_f32(r, p, vmulq_f32(r, r)), d(1.0)); // p.mul_add(r * r, r) + 1
    let ni = vsubq_s32(vreinterpretq_s32_f32(tn), vdupq_n_s32(0x4B40_0000));
    let n1 = vshrq_n_s32::<1>(ni);
    let n2 = vsubq_s32(ni, n1);
    let s1 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n1, vdupq_n_s32(127))));
    let s2 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n2, vdupq_n_s32(127))));
    let y = vmulq_f32(vmulq_f32(p, s1), s2);
    let y = vbslq_f32(vcgtq_f32(x, d(HI)), d(f32::INFINITY), y);
    vbslq_f32(vcltq_f32(x, d(LO)), zero4(), y)
}

#[inline(always)]
unsafe fn zero4() -> float32x4_t {
    vdupq_n_f32(0.0)
}
