//! AArch64 kernels with the int8 matrix-multiply extension (ARMv8.6 `i8mm`: Cortex-A510/A710/X2
//! and later). `vmmlaq_s32` is unstable, so `smmla` is emitted with stable `asm!` inside
//! `#[target_feature(enable = "neon,dotprod,i8mm")]` functions. `supported()` requires both
//! i8mm and dotprod (every i8mm core has dotprod; the odd-token tail below uses `sdot`).
//!
//! `smmla vd.4s, vn.16b, vm.16b` computes a 2x2 block `vd[2r + c] += sum_k vn[r][k] * vm[c][k]`
//! with `vn`, `vm` each two 8-byte rows. T16K4 gives only 4 consecutive k per row, so the kernel
//! pairs registers as follows (per 8-k step, i.e. two consecutive chunks `c`, `c+1`):
//! - weights (`vn`): for each row quad `q` (rows 4q..4q+3, `aarch64_neon::load_chunk`) of the two
//!   chunks, `zip1 .4s` / `zip2 .4s` give `[row 4q: k0..7 | row 4q+1: k0..7]` and
//!   `[row 4q+2 | row 4q+3]`: 8 registers hold the 16 rows x 8 k as 8 row pairs `p = 0..7`
//!   (rows 2p, 2p+1).
//! - activations (`vm`): two tokens `t0`, `t1`; their 16-byte loads for a 16-k window are zipped
//!   as 64-bit halves: `zip1 .2d` = `[t0 k0..7 | t1 k0..7]` (first chunk pair of the window),
//!   `zip2 .2d` = `[t0 k8..15 | t1 k8..15]` (second chunk pair).
//! - accumulator of row pair `p`, token pair: `[r2p.t0, r2p.t1, r2p+1.t0, r2p+1.t1]` (i32).
//!   A block is 2 token pairs (4 tokens): 16 accumulators + 8 weight + 2-4 activation registers.
//!   Each 16-k window costs 16 `smmla` per token pair (vs 16 `sdot` per single token).
//! - INT4 offset (`q + 8`): accumulators start at `[-8 gsum(t0), -8 gsum(t1), ...]` per group
//!   (`gsum = sum (qa - zp)`).
//! - zero point: the first token block of a tile also runs the row quads through `sdot` with
//!   all-ones activations (the weight row sums `W`, kept per group in the per-thread buffer for the
//!   tile's next blocks, in the row order the `sdot` kernel uses too).
//! - group end: `uzp1 .4s` of accumulators (2q, 2q+1) = rows 4q..4q+3 of t0, `uzp2` = of t1;
//!   `isum = that - zp * W` (`mls`, exact); then the shared exact fold (`scvtf`, `fmla` with the
//!   scales).
//! An odd last token goes through the `sdot` block (a pair with a dummy token would waste half of
//! every `smmla`). Integer sums are exact, the fp32 fold is the scalar order: bit-exact results.
//! The fp32 path is the shared NEON one.

use super::aarch64_dotprod;
use super::aarch64_neon::{fold_group, load_chunk, store_rows, with_wsum, wsum_group, Geo, ScalePtr, W_COMPUTE, W_LOAD, W_STORE};
use super::OutPtr;
use crate::act::QuantActsRef;
use crate::quant::{PackedRef, TILE_ROWS};
use core::arch::aarch64::*;
use core::arch::asm;
use std::ops::Range;

pub use super::aarch64_neon::gemm_f32;

pub fn supported() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
        && std::arch::is_aarch64_feature_detected!("dotprod")
        && std::arch::is_aarch64_feature_detected!("i8mm")
}

/// `acc.4s += w.16b (2x8) * a.16b (2x8)^T` (signed).
macro_rules! smmla {
    ($acc:expr, $w:expr, $a:expr) => {
        asm!(
            "smmla {acc:v}.4s, {w:v}.16b, {a:v}.16b",
            acc = inout(vreg) $acc,
            w = in(vreg) $w,
            a = in(vreg) $a,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
}

/// `acc.4s += w.16b . a.4b[0]` (signed), for the weight row sums with all-ones `a`.
macro_rules! sdot_lane0 {
    ($acc:expr, $w:expr, $a:expr) => {
        asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[0]",
            acc = inout(vreg) $acc,
            w = in(vreg) $w,
            a = in(vreg) $a,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
}

/// `smmla` of two consecutive chunks at `p` (one 8-k step, see module docs) for NP token pairs
/// whose zipped activations are `av`. Row quad by row quad, to keep register pressure low. With
/// `W`, also the weight row sums into `w32`.
#[inline]
#[target_feature(enable = "neon,dotprod,i8mm")]
unsafe fn smmla_step<const I4: bool, const NP: usize, const W: bool>(
    acc: &mut [[int32x4_t; 8]; NP],
    w32: &mut [int32x4_t; 4],
    p: *const u8,
    cb: usize,
    av: &[int8x16_t; NP],
) {
    let a = load_chunk(p, I4);
    let b = load_chunk(p.add(cb), I4);
    let ones = vdupq_n_s8(1);
    for q in 0..4 {
        if W {
            sdot_lane0!(w32[q], a[q], ones);
            sdot_lane0!(w32[q], b[q], ones);
        }
        let (x, y) = (vreinterpretq_s32_s8(a[q]), vreinterpretq_s32_s8(b[q]));
        let w0 = vreinterpretq_s8_s32(vzip1q_s32(x, y));
        let w1 = vreinterpretq_s8_s32(vzip2q_s32(x, y));
        for pp in 0..NP {
            smmla!(acc[pp][2 * q], w0, av[pp]);
            smmla!(acc[pp][2 * q + 1], w1, av[pp]);
        }
    }
}

/// NP token pairs (rows `i0 .. i0 + 2*NP` of `a`) x one tile (`WM`, `wbuf`: see
/// `aarch64_neon::wsum_group`).
#[inline]
#[target_feature(enable = "neon,dotprod,i8mm")]
#[allow(clippy::too_many_arguments)]
unsafe fn q8_block_pairs<const I4: bool, const NP: usize, const WM: u8>(
    geo: &Geo,
    wt: *const u8,
    st: ScalePtr,
    a: &QuantActsRef<'_>,
    i0: usize,
    out: &OutPtr,
    n0: usize,
    nvalid: usize,
    wbuf: *mut i32,
) {
    let zf = vdupq_n_f32(0.0);
    let zi = vdupq_n_s32(0);
    // accf[pair][token]: fp32 accumulators of one token (4 row quads).
    let mut accf = [[[zf; 4]; 2]; NP];
    let cpg = geo.g_sz / 4;
    for g in 0..geo.ng {
        // INT4 weights carry +8: start every row at -8 * gsum of its token (lanes t0, t1, t0, t1).
        let mut acc = [[zi; 8]; NP];
        for p in 0..NP {
            let c0 = -geo.corr::<I4>(a, i0 + 2 * p, g);
            let c1 = -geo.corr::<I4>(a, i0 + 2 * p + 1, g);
            let init = [c0, c1, c0, c1];
            acc[p] = [vld1q_s32(init.as_ptr()); 8];
        }
        let mut w32 = [zi; 4];
        let gp = wt.add(g * cpg * geo.cb);
        for win in 0..geo.g_sz / 16 {
            let kk = g * geo.g_sz + win * 16;
            let mut alo = [vdupq_n_s8(0); NP];
            let mut ahi = [vdupq_n_s8(0); NP];
            for p in 0..NP {
                let t0 = vreinterpretq_s64_s8(vld1q_s8(a.q.as_ptr().add((i0 + 2 * p) * geo.k + kk)));
                let t1 = vreinterpretq_s64_s8(vld1q_s8(a.q.as_ptr().add((i0 + 2 * p + 1) * geo.k + kk)));
                alo[p] = vreinterpretq_s8_s64(vzip1q_s64(t0, t1));
                ahi[p] = vreinterpretq_s8_s64(vzip2q_s64(t0, t1));
            }
            let wp = gp.add(win * 4 * geo.cb);
            if WM == W_LOAD {
                smmla_step::<I4, NP, false>(&mut acc, &mut w32, wp, geo.cb, &alo);
                smmla_step::<I4, NP, false>(&mut acc, &mut w32, wp.add(2 * geo.cb), geo.cb, &ahi);
            } else {
                smmla_step::<I4, NP, true>(&mut acc, &mut w32, wp, geo.cb, &alo);
                smmla_step::<I4, NP, true>(&mut acc, &mut w32, wp.add(2 * geo.cb), geo.cb, &ahi);
            }
        }
        let wrow = wsum_group::<WM>(w32, wbuf, g);
        let sc = st.add(g * TILE_ROWS);
        for p in 0..NP {
            let z0 = vdupq_n_s32(*a.zp.get_unchecked(i0 + 2 * p));
            let z1 = vdupq_n_s32(*a.zp.get_unchecked(i0 + 2 * p + 1));
            let mut s0 = [zi; 4];
            let mut s1 = [zi; 4];
            for q in 0..4 {
                s0[q] = vmlsq_s32(vuzp1q_s32(acc[p][2 * q], acc[p][2 * q + 1]), wrow[q], z0);
                s1[q] = vmlsq_s32(vuzp2q_s32(acc[p][2 * q], acc[p][2 * q + 1]), wrow[q], z1);
            }
            fold_group(&mut accf[p][0], &s0, sc);
            fold_group(&mut accf[p][1], &s1, sc);
        }
    }
    for p in 0..NP {
        for h in 0..2 {
            let i = i0 + 2 * p + h;
            store_rows(out, i, n0, nvalid, &accf[p][h], *a.scale.get_unchecked(i));
        }
    }
}

#[target_feature(enable = "neon,dotprod,i8mm")]
unsafe fn q8_tiles<const I4: bool>(geo: &Geo, w: &PackedRef<'_>, tiles: Range<usize>, a: &QuantActsRef<'_>, out: OutPtr) {
    let m = a.m;
    let tile = |t: usize| {
        let n0 = t * TILE_ROWS;
        (n0, (geo.n - n0).min(TILE_ROWS), w.data.as_ptr().add(t * geo.tile_bytes), ScalePtr::of(&w.scales).add(t * geo.ng * TILE_ROWS))
    };
    let null = std::ptr::null_mut();
    if m == 1 || m == 2 || m == 4 {
        // One token block per tile (decode): W computed in the same pass.
        for t in tiles {
            let (n0, nvalid, wt, st) = tile(t);
            match m {
                4 => q8_block_pairs::<I4, 2, W_COMPUTE>(geo, wt, st, a, 0, &out, n0, nvalid, null),
                2 => q8_block_pairs::<I4, 1, W_COMPUTE>(geo, wt, st, a, 0, &out, n0, nvalid, null),
                _ => aarch64_dotprod::q8_block::<I4, 1, W_COMPUTE>(geo, wt, st, a, 0, &out, n0, nvalid, null),
            }
        }
        return;
    }
    if m == 0 {
        return;
    }
    with_wsum(geo, |wb| {
        for t in tiles {
            let (n0, nvalid, wt, st) = tile(t);
            let mut i = if m >= 4 {
                q8_block_pairs::<I4, 2, W_STORE>(geo, wt, st, a, 0, &out, n0, nvalid, wb);
                4
            } else {
                q8_block_pairs::<I4, 1, W_STORE>(geo, wt, st, a, 0, &out, n0, nvalid, wb);
                2
            };
            while i + 4 <= m {
                q8_block_pairs::<I4, 2, W_LOAD>(geo, wt, st, a, i, &out, n0, nvalid, wb);
                i += 4;
            }
            if i + 2 <= m {
                q8_block_pairs::<I4, 1, W_LOAD>(geo, wt, st, a, i, &out, n0, nvalid, wb);
                i += 2;
            }
            if i < m {
                aarch64_dotprod::q8_block::<I4, 1, W_LOAD>(geo, wt, st, a, i, &out, n0, nvalid, wb);
            }
        }
    })
}

/// Q8 GEMM with `smmla`. # Safety: see `GemmQ8Fn` (the CPU must have i8mm and dotprod).
pub unsafe fn gemm_q8(w: &PackedRef<'_>, tiles: Range<usize>, a: &QuantActsRef<'_>, out: OutPtr) {
    let geo = Geo::new(w);
    if geo.int4 {
        q8_tiles::<true>(&geo, w, tiles, a, out)
    } else {
        q8_tiles::<false>(&geo, w, tiles, a, out)
    }
}
