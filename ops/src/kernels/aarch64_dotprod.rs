//! AArch64 kernels with the dot-product extension (ARMv8.2 `dotprod`, mandatory from v8.4:
//! Cortex-A55/A75 and later). `vdotq_s32` is unstable, so `sdot` is emitted with stable `asm!`
//! inside `#[target_feature(enable = "neon,dotprod")]` functions, after
//! `is_aarch64_feature_detected!("dotprod")`.
//!
//! A T16K4 chunk (16 rows x 4 k) is exactly four `sdot vd.4s, vn.16b, vm.4b[lane]`: `vn` is a row
//! quad of the chunk (rows 4q..4q+3, 4 k each, see `aarch64_neon::load_chunk`), `vm` holds 16
//! activation bytes of a token (k .. k+16, i.e. 4 chunks) and `lane` picks the chunk's 4 bytes;
//! each i32 lane of `vd` gets the 4-product sum of one row. Per 16-k window: one 16-byte
//! activation load per token, four chunks unpacked once (INT4: `and`/`ushr`) and reused by the
//! 4 tokens of a block (16 accumulators + 4 activation + 4 weight registers). Zero point: the
//! first token block of a tile also runs each row quad through `sdot` with all-ones activations,
//! giving the weight row sums `W = sum (q + 8)` (INT4) / `sum q` (INT8), kept per group in the
//! per-thread buffer for the tile's next blocks; `isum = acc - zp * W` (`mls`, exact; the INT4
//! accumulators start at `-8 * gsum`, `gsum = sum (qa - zp)`). The group fold, store and fp32
//! path are shared with `aarch64_neon` (bit-exact per DESIGN.md section 3).

use super::aarch64_neon::{fold_group, load_chunk, store_rows, with_wsum, wsum_group, Geo, ScalePtr, W_COMPUTE, W_LOAD, W_STORE};
use super::OutPtr;
use crate::act::QuantActsRef;
use crate::quant::{PackedRef, TILE_ROWS};
use core::arch::aarch64::*;
use core::arch::asm;
use std::ops::Range;

pub use super::aarch64_neon::gemm_f32;

pub fn supported() -> bool {
    std::arch::is_aarch64_feature_detected!("neon") && std::arch::is_aarch64_feature_detected!("dotprod")
}

/// `acc.4s += w.16b . a.4b[lane]` (signed).
macro_rules! sdot_lane {
    ($acc:expr, $w:expr, $a:expr, $lane:literal) => {
        asm!(
            concat!("sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[", $lane, "]"),
            acc = inout(vreg) $acc,
            w = in(vreg) $w,
            a = in(vreg) $a,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
}

/// Integer sums of one 16-k window (4 chunks at `p`) for MB tokens whose activations are `av`;
/// with `W`, also the weight row sums into `w32`.
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn sdot_window<const I4: bool, const MB: usize, const W: bool>(
    acc: &mut [[int32x4_t; 4]; MB],
    w32: &mut [int32x4_t; 4],
    p: *const u8,
    cb: usize,
    av: &[int8x16_t; MB],
) {
    let ones = vdupq_n_s8(1);
    macro_rules! chunk {
        ($c:literal) => {
            let w = load_chunk(p.add($c * cb), I4);
            if W {
                for q in 0..4 {
                    sdot_lane!(w32[q], w[q], ones, 0);
                }
            }
            for j in 0..MB {
                for q in 0..4 {
                    sdot_lane!(acc[j][q], w[q], av[j], $c);
                }
            }
        };
    }
    chunk!(0);
    chunk!(1);
    chunk!(2);
    chunk!(3);
}

/// MB tokens (rows `i0..i0+MB` of `a`) x one tile, written to `out` (`WM`, `wbuf`: see
/// `aarch64_neon::wsum_group`).
#[inline]
#[target_feature(enable = "neon,dotprod")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn q8_block<const I4: bool, const MB: usize, const WM: u8>(
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
    let mut accf = [[zf; 4]; MB];
    let cpg = geo.g_sz / 4;
    for g in 0..geo.ng {
        // INT4 weights carry +8: start at -8 * gsum so the sums end at sum (qa - zp)*(q + 8) + zp*W.
        let mut acc = [[zi; 4]; MB];
        for j in 0..MB {
            acc[j] = [vdupq_n_s32(-geo.corr::<I4>(a, i0 + j, g)); 4];
        }
        let mut w32 = [zi; 4];
        let gp = wt.add(g * cpg * geo.cb);
        for win in 0..geo.g_sz / 16 {
            let kk = g * geo.g_sz + win * 16;
            let mut av = [vdupq_n_s8(0); MB];
            for j in 0..MB {
                av[j] = vld1q_s8(a.q.as_ptr().add((i0 + j) * geo.k + kk));
            }
            if WM == W_LOAD {
                sdot_window::<I4, MB, false>(&mut acc, &mut w32, gp.add(win * 4 * geo.cb), geo.cb, &av);
            } else {
                sdot_window::<I4, MB, true>(&mut acc, &mut w32, gp.add(win * 4 * geo.cb), geo.cb, &av);
            }
        }
        let wrow = wsum_group::<WM>(w32, wbuf, g);
        for j in 0..MB {
            let zp = vdupq_n_s32(*a.zp.get_unchecked(i0 + j));
            let mut isum = [zi; 4];
            for q in 0..4 {
                isum[q] = vmlsq_s32(acc[j][q], wrow[q], zp);
            }
            fold_group(&mut accf[j], &isum, st.add(g * TILE_ROWS));
        }
    }
    for j in 0..MB {
        store_rows(out, i0 + j, n0, nvalid, &accf[j], *a.scale.get_unchecked(i0 + j));
    }
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn q8_tiles<const I4: bool>(geo: &Geo, w: &PackedRef<'_>, tiles: Range<usize>, a: &QuantActsRef<'_>, out: OutPtr) {
    let m = a.m;
    let tile = |t: usize| {
        let n0 = t * TILE_ROWS;
        (n0, (geo.n - n0).min(TILE_ROWS), w.data.as_ptr().add(t * geo.tile_bytes), ScalePtr::of(&w.scales).add(t * geo.ng * TILE_ROWS))
    };
    if m == 1 || m == 4 {
        // One token block per tile (decode): W computed in the same pass.
        for t in tiles {
            let (n0, nvalid, wt, st) = tile(t);
            if m == 4 {
                q8_block::<I4, 4, W_COMPUTE>(geo, wt, st, a, 0, &out, n0, nvalid, std::ptr::null_mut());
            } else {
                q8_block::<I4, 1, W_COMPUTE>(geo, wt, st, a, 0, &out, n0, nvalid, std::ptr::null_mut());
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
                q8_block::<I4, 4, W_STORE>(geo, wt, st, a, 0, &out, n0, nvalid, wb);
                4
            } else {
                q8_block::<I4, 1, W_STORE>(geo, wt, st, a, 0, &out, n0, nvalid, wb);
                1
            };
            while i + 4 <= m {
                q8_block::<I4, 4, W_LOAD>(geo, wt, st, a, i, &out, n0, nvalid, wb);
                i += 4;
            }
            while i < m {
                q8_block::<I4, 1, W_LOAD>(geo, wt, st, a, i, &out, n0, nvalid, wb);
                i += 1;
            }
        }
    })
}

/// Q8 GEMM with `sdot`. # Safety: see `GemmQ8Fn` (the CPU must have dotprod).
pub unsafe fn gemm_q8(w: &PackedRef<'_>, tiles: Range<usize>, a: &QuantActsRef<'_>, out: OutPtr) {
    let geo = Geo::new(w);
    if geo.int4 {
        q8_tiles::<true>(&geo, w, tiles, a, out)
    } else {
        q8_tiles::<false>(&geo, w, tiles, a, out)
    }
}
