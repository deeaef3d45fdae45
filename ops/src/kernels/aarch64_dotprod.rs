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
//! 4 tokens of a block (16 accumulators + 4 activation + 4 weight registers). The group fold,
//! store and fp32 path are shared with `aarch64_neon` (bit-exact per DESIGN.md section 3).

use super::aarch64_neon::{fold_group, load_chunk, store_rows, Geo};
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

/// Integer sums of one 16-k window (4 chunks at `p`) for MB tokens whose activations are `av`.
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn sdot_window<const I4: bool, const MB: usize>(acc: &mut [[int32x4_t; 4]; MB], p: *const u8, cb: usize, av: &[int8x16_t; MB]) {
    let w = load_chunk(p, I4);
    for j in 0..MB {
        for q in 0..4 {
            sdot_lane!(acc[j][q], w[q], av[j], 0);
        }
    }
    let w = load_chunk(p.add(cb), I4);
    for j in 0..MB {
        for q in 0..4 {
            sdot_lane!(acc[j][q], w[q], av[j], 1);
        }
    }
    let w = load_chunk(p.add(2 * cb), I4);
    for j in 0..MB {
        for q in 0..4 {
            sdot_lane!(acc[j][q], w[q], av[j], 2);
        }
    }
    let w = load_chunk(p.add(3 * cb), I4);
    for j in 0..MB {
        for q in 0..4 {
            sdot_lane!(acc[j][q], w[q], av[j], 3);
        }
    }
}

/// MB tokens (rows `i0..i0+MB` of `a`) x one tile, written to `out`.
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn q8_block<const I4: bool, const MB: usize>(geo: &Geo, wt: *const u8, st: *const f32, a: &QuantActsRef<'_>, i0: usize, out: &OutPtr, n0: usize, nvalid: usize) {
    let zf = vdupq_n_f32(0.0);
    let mut accf = [[zf; 4]; MB];
    let cpg = geo.g_sz / 4;
    for g in 0..geo.ng {
        // INT4 weights carry +8: start at -8 * gsum so the sums end exact.
        let mut acc = [[vdupq_n_s32(0); 4]; MB];
        for j in 0..MB {
            acc[j] = [vdupq_n_s32(-geo.corr::<I4>(a, i0 + j, g)); 4];
        }
        let gp = wt.add(g * cpg * geo.cb);
        for win in 0..geo.g_sz / 16 {
            let kk = g * geo.g_sz + win * 16;
            let mut av = [vdupq_n_s8(0); MB];
            for j in 0..MB {
                av[j] = vld1q_s8(a.q.as_ptr().add((i0 + j) * geo.k + kk));
            }
            sdot_window::<I4, MB>(&mut acc, gp.add(win * 4 * geo.cb), geo.cb, &av);
        }
        for j in 0..MB {
            fold_group(&mut accf[j], &acc[j], st.add(g * TILE_ROWS));
        }
    }
    for j in 0..MB {
        store_rows(out, i0 + j, n0, nvalid, &accf[j], *a.scale.get_unchecked(i0 + j));
    }
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn q8_tiles<const I4: bool>(geo: &Geo, w: &PackedRef<'_>, tiles: Range<usize>, a: &QuantActsRef<'_>, out: OutPtr) {
    for t in tiles {
        let n0 = t * TILE_ROWS;
        let nvalid = (geo.n - n0).min(TILE_ROWS);
        let wt = w.data.as_ptr().add(t * geo.tile_bytes);
        let st = w.scales.as_ptr().add(t * geo.ng * TILE_ROWS);
        let mut i = 0;
        while i + 4 <= a.m {
            q8_block::<I4, 4>(geo, wt, st, a, i, &out, n0, nvalid);
            i += 4;
        }
        while i < a.m {
            q8_block::<I4, 1>(geo, wt, st, a, i, &out, n0, nvalid);
            i += 1;
        }
    }
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
