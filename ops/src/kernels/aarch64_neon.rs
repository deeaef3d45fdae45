//! Baseline AArch64 NEON kernels (ARMv8.0: every 64-bit phone), plus the helpers the `sdot`
//! (`aarch64_dotprod`) and `smmla` (`aarch64_i8mm`) kernels share: chunk unpacking, the per-group
//! fold into fp32, the output store, and the exact fp32 path (`gemm_f32`, used by all three).
//!
//! Q8 path (activations `qa` in [-128, 127] with a per-token zero point `zp`, DESIGN.md section 3),
//! how a T16K4 chunk (16 rows x 4 k, docs/DESIGN.md section 2) maps to registers:
//! - `load_chunk` gives four `int8x16` "row quads": quad `q` holds rows `4q..4q+3`, 4 bytes
//!   (k0..k3) per row. INT4: quad 0 = low nibbles of bytes 0..15, quad 1 = low nibbles of bytes
//!   16..31, quads 2/3 = the high nibbles (`and 0x0F` / `ushr 4`: the offset value `q + 8` in
//!   0..15, corrected exactly through the group sums, see below). INT8: four plain loads.
//! - Baseline (no dot product): the 4 activation bytes of the chunk are broadcast to all four
//!   32-bit lanes (`dup v.4s, a.s[c]`). INT4: `smlal`/`smlal2` accumulate the 16 byte products of
//!   a quad into two i16x8 (lane = (row, kc)); after 8 chunks (|(q+8)*qa| <= 1920, 2 lanes summed
//!   by `addp` stay within i16) they are folded: `addp` (pairs -> (row, k01 / k23)) then `sadalp`
//!   into an i32x4 whose lanes are the four rows. INT8 (|q*qa| <= 16384, so two products may not
//!   fit i16): `smull`/`smull2` then `sadalp` straight into two i32x4 of (row, k pair) lanes,
//!   combined into rows by one `addp` at the group end. All integer: the sums are exact.
//! - Offsets: the i32 accumulators of a group start at `-8 * gsum[g]` (INT4; `gsum = sum (qa - zp)`)
//!   or 0 (INT8), and the row sums of the (offset) weights, `W = sum (q + 8)` (resp. `sum q`), are
//!   accumulated alongside (INT4: `add` of the unpacked bytes, <= 8*15, folded with `saddlp`/
//!   `sadalp` every 8 chunks; INT8: `saddlp`/`sadalp` per chunk). Then `isum = acc - zp * W`
//!   (`mls`), exactly `sum (qa - zp) * q`. The first token block of a tile computes `W` per group
//!   and keeps it in a per-thread buffer (canonical row order, shared by the `sdot` and `smmla`
//!   kernels); the next blocks of the tile load it.
//!   Group end (`fold_group`): `scvtf` -> `fmla(acc, isum, scale)`: one fused multiply-add per
//!   row and group, in group order, as the scalar reference. Store: `acc * a.scale[i]`.
//!
//! F32 path (`gemm_f32`): per chunk and row quad, `tbl` transposes the 4x4 bytes to k-major,
//! `sxtl`/`scvtf` give four f32x4 (one per k, lanes = rows), and `fmla v.4s, w.4s, x.s[kc]`
//! accumulates `part = fma(x[k], q, part)` in k order per row lane; at the group end
//! `acc = fma(part, scale, acc)`. Same per-row operation order as the scalar reference, so the
//! result is equal bit for bit. Tokens are processed 4 at a time to reuse each converted chunk.

use super::OutPtr;
use crate::act::QuantActsRef;
use crate::quant::{PackedRef, ScaleRef, ScaleType, WeightBits, TILE_ROWS};
use core::arch::aarch64::*;
use std::ops::Range;

/// NEON (ASIMD) is mandatory on AArch64; checked anyway for symmetry.
pub fn supported() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

/// The four row quads of one chunk at `p` (see module docs). INT4 values are `q + 8`.
#[inline(always)]
pub(crate) unsafe fn load_chunk(p: *const u8, int4: bool) -> [int8x16_t; 4] {
    if int4 {
        let v0 = vld1q_u8(p);
        let v1 = vld1q_u8(p.add(16));
        let m = vdupq_n_u8(0x0F);
        [
            vreinterpretq_s8_u8(vandq_u8(v0, m)),
            vreinterpretq_s8_u8(vandq_u8(v1, m)),
            vreinterpretq_s8_u8(vshrq_n_u8::<4>(v0)),
            vreinterpretq_s8_u8(vshrq_n_u8::<4>(v1)),
        ]
    } else {
        [vld1q_s8(p as *const i8), vld1q_s8(p.add(16) as *const i8), vld1q_s8(p.add(32) as *const i8), vld1q_s8(p.add(48) as *const i8)]
    }
}

/// Signed weights of one chunk (INT4 offset removed), for the fp32 path.
#[inline(always)]
unsafe fn load_chunk_signed(p: *const u8, int4: bool) -> [int8x16_t; 4] {
    let c = load_chunk(p, int4);
    if int4 {
        let e = vdupq_n_s8(8);
        [vsubq_s8(c[0], e), vsubq_s8(c[1], e), vsubq_s8(c[2], e), vsubq_s8(c[3], e)]
    } else {
        c
    }
}

/// A position in a matrix's scales, in their stored element type.
#[derive(Clone, Copy)]
pub(crate) struct ScalePtr {
    p: *const u8,
    t: ScaleType,
}

impl ScalePtr {
    pub(crate) fn of(s: &ScaleRef<'_>) -> Self {
        Self { p: s.as_ptr(), t: s.scale_type() }
    }
    /// `n` scales further.
    /// # Safety
    /// The result stays within (or one past) the scales.
    #[inline(always)]
    pub(crate) unsafe fn add(self, n: usize) -> Self {
        Self { p: self.p.add(n * self.t.bytes()), t: self.t }
    }
    /// Scales `4q .. 4q + 4` from here, widened to f32 (exact).
    /// # Safety
    /// Those 4 scales lie within the matrix's scales.
    #[inline(always)]
    pub(crate) unsafe fn load4(self, q: usize) -> float32x4_t {
        match self.t {
            ScaleType::F32 => vld1q_f32((self.p as *const f32).add(4 * q)),
            ScaleType::F16 => {
                let h = vld1_u16((self.p as *const u16).add(4 * q));
                let r: float32x4_t;
                // FCVTL (half -> single, exact) is base AArch64; its intrinsic is not stable in Rust.
                std::arch::asm!("fcvtl {0:v}.4s, {1:v}.4h", out(vreg) r, in(vreg) h, options(pure, nomem, nostack, preserves_flags));
                r
            }
            // bf16 is the high half of an f32.
            ScaleType::Bf16 => vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16((self.p as *const u16).add(4 * q)))),
        }
    }
}

/// Folds one group's exact integer row sums into the fp32 row accumulators:
/// `acc = fma(isum as f32, scale, acc)`, `scales` = the tile's 16 scales of the group. (The INT4
/// offset is removed by starting the integer accumulators at `-8 * gsum`.)
#[inline(always)]
pub(crate) unsafe fn fold_group(acc: &mut [float32x4_t; 4], isum: &[int32x4_t; 4], scales: ScalePtr) {
    for q in 0..4 {
        let s = scales.load4(q);
        let f = vcvtq_f32_s32(isum[q]);
        acc[q] = vfmaq_f32(acc[q], f, s);
    }
}

/// Writes `acc * mul` to row `i`, columns `n0 .. n0 + nvalid` (`nvalid <= 16`).
#[inline(always)]
pub(crate) unsafe fn store_rows(out: &OutPtr, i: usize, n0: usize, nvalid: usize, acc: &[float32x4_t; 4], mul: f32) {
    let v = [vmulq_n_f32(acc[0], mul), vmulq_n_f32(acc[1], mul), vmulq_n_f32(acc[2], mul), vmulq_n_f32(acc[3], mul)];
    let dst = out.ptr.add(i * out.ldo + n0);
    if nvalid == TILE_ROWS {
        debug_assert!(i * out.ldo + n0 + TILE_ROWS <= out.len);
        for (q, vq) in v.iter().enumerate() {
            vst1q_f32(dst.add(4 * q), *vq);
        }
    } else {
        let mut tmp = [0f32; TILE_ROWS];
        for (q, vq) in v.iter().enumerate() {
            vst1q_f32(tmp.as_mut_ptr().add(4 * q), *vq);
        }
        for (r, t) in tmp.iter().enumerate().take(nvalid) {
            out.write(i, n0 + r, *t);
        }
    }
}

/// Geometry shared by the Q8 kernels of the three files.
#[derive(Clone, Copy)]
pub(crate) struct Geo {
    pub k: usize,
    pub g_sz: usize,
    pub ng: usize,
    pub int4: bool,
    /// Bytes per chunk (32 or 64).
    pub cb: usize,
    pub tile_bytes: usize,
    pub n: usize,
}

impl Geo {
    #[inline(always)]
    pub fn new(w: &PackedRef<'_>) -> Self {
        let s = w.spec;
        Self {
            k: s.k,
            g_sz: s.group,
            ng: s.groups(),
            int4: s.bits == WeightBits::Int4,
            cb: s.bits.chunk_bytes(),
            tile_bytes: s.tile_bytes(),
            n: s.n,
        }
    }
    /// Offset correction of group `g` of token `i` (INT4: weights carry +8; `gsum = sum (qa - zp)`).
    #[inline(always)]
    pub unsafe fn corr<const I4: bool>(&self, a: &QuantActsRef<'_>, i: usize, g: usize) -> i32 {
        if I4 {
            8 * *a.gsum.get_unchecked(i * self.ng + g)
        } else {
            0
        }
    }
}

/// How a token block gets the weight row sums `W` of its tile (see module docs).
pub(crate) const W_COMPUTE: u8 = 0;
pub(crate) const W_STORE: u8 = 1;
pub(crate) const W_LOAD: u8 = 2;

/// `W` of group `g` (4 row quads): loaded from `wbuf` (`W_LOAD`), or the computed `w32`, stored
/// to `wbuf` first with `W_STORE`. `wbuf` holds `ng * 16` values in row order.
#[inline(always)]
pub(crate) unsafe fn wsum_group<const WM: u8>(w32: [int32x4_t; 4], wbuf: *mut i32, g: usize) -> [int32x4_t; 4] {
    let p = wbuf.wrapping_add(g * TILE_ROWS);
    if WM == W_LOAD {
        [vld1q_s32(p), vld1q_s32(p.add(4)), vld1q_s32(p.add(8)), vld1q_s32(p.add(12))]
    } else {
        if WM == W_STORE {
            for (q, v) in w32.iter().enumerate() {
                vst1q_s32(p.add(4 * q), *v);
            }
        }
        w32
    }
}

/// Runs `f` with the per-thread `W` buffer of one tile (`ng * 16` i32). Kernels call it only when
/// a tile has several token blocks: the first stores `W` (`W_STORE`), the others load it.
#[inline(always)]
pub(crate) fn with_wsum<R>(geo: &Geo, f: impl FnOnce(*mut i32) -> R) -> R {
    super::with_wsum_scratch(geo.ng * TILE_ROWS, |b| f(b.as_mut_ptr()))
}

/// Baseline block of MB tokens x one tile (`WM`, `wbuf`: see `wsum_group`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn q8_block<const I4: bool, const MB: usize, const WM: u8>(
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
    let z16 = vdupq_n_s16(0);
    let zi = vdupq_n_s32(0);
    let z8 = vdupq_n_s8(0);
    let mut accf = [[zf; 4]; MB];
    let cpg = geo.g_sz / 4;
    for g in 0..geo.ng {
        // INT4: rows, starting at -8 * gsum. INT8: (row, k pair) lanes of rows 4q, 4q+1 (`acc`)
        // and 4q+2, 4q+3 (`acc2`).
        let mut acc = [[zi; 4]; MB];
        let mut acc2 = [[zi; 4]; MB];
        for j in 0..MB {
            acc[j] = [vdupq_n_s32(-geo.corr::<I4>(a, i0 + j, g)); 4];
        }
        let mut w32 = [zi; 4];
        let mut wb = [z8; 4];
        let mut lo = [[z16; 4]; MB];
        let mut hi = [[z16; 4]; MB];
        let gp = wt.add(g * cpg * geo.cb);
        for c in 0..cpg {
            let wq = load_chunk(gp.add(c * geo.cb), I4);
            if WM != W_LOAD {
                for q in 0..4 {
                    if I4 {
                        wb[q] = vaddq_s8(wb[q], wq[q]);
                    } else {
                        w32[q] = vpadalq_s16(w32[q], vpaddlq_s8(wq[q]));
                    }
                }
            }
            let kk = g * geo.g_sz + c * 4;
            for j in 0..MB {
                let a4 = (a.q.as_ptr().add((i0 + j) * geo.k + kk) as *const i32).read_unaligned();
                let av = vreinterpretq_s8_s32(vdupq_n_s32(a4));
                for q in 0..4 {
                    if I4 {
                        lo[j][q] = vmlal_s8(lo[j][q], vget_low_s8(wq[q]), vget_low_s8(av));
                        hi[j][q] = vmlal_high_s8(hi[j][q], wq[q], av);
                    } else {
                        acc[j][q] = vpadalq_s16(acc[j][q], vmull_s8(vget_low_s8(wq[q]), vget_low_s8(av)));
                        acc2[j][q] = vpadalq_s16(acc2[j][q], vmull_high_s8(wq[q], av));
                    }
                }
            }
            if I4 && (c + 1) % 8 == 0 {
                for j in 0..MB {
                    for q in 0..4 {
                        acc[j][q] = vpadalq_s16(acc[j][q], vpaddq_s16(lo[j][q], hi[j][q]));
                        lo[j][q] = z16;
                        hi[j][q] = z16;
                    }
                }
                if WM != W_LOAD {
                    for q in 0..4 {
                        w32[q] = vpadalq_s16(w32[q], vpaddlq_s8(wb[q]));
                        wb[q] = z8;
                    }
                }
            }
        }
        // cpg is a multiple of 8, so every INT4 chunk has been folded here.
        let wrow = wsum_group::<WM>(w32, wbuf, g);
        for j in 0..MB {
            let zp = vdupq_n_s32(*a.zp.get_unchecked(i0 + j));
            let mut isum = [zi; 4];
            for q in 0..4 {
                let v = if I4 { acc[j][q] } else { vpaddq_s32(acc[j][q], acc2[j][q]) };
                isum[q] = vmlsq_s32(v, wrow[q], zp);
            }
            fold_group(&mut accf[j], &isum, st.add(g * TILE_ROWS));
        }
    }
    for j in 0..MB {
        store_rows(out, i0 + j, n0, nvalid, &accf[j], *a.scale.get_unchecked(i0 + j));
    }
}

/// Q8 GEMM, baseline NEON. # Safety: see `GemmQ8Fn`.
pub unsafe fn gemm_q8(w: &PackedRef<'_>, tiles: Range<usize>, a: &QuantActsRef<'_>, out: OutPtr) {
    let geo = Geo::new(w);
    if geo.int4 {
        q8_tiles::<true>(&geo, w, tiles, a, out)
    } else {
        q8_tiles::<false>(&geo, w, tiles, a, out)
    }
}

unsafe fn q8_tiles<const I4: bool>(geo: &Geo, w: &PackedRef<'_>, tiles: Range<usize>, a: &QuantActsRef<'_>, out: OutPtr) {
    let m = a.m;
    let tile = |t: usize| {
        let n0 = t * TILE_ROWS;
        (n0, (geo.n - n0).min(TILE_ROWS), w.data.as_ptr().add(t * geo.tile_bytes), ScalePtr::of(&w.scales).add(t * geo.ng * TILE_ROWS))
    };
    if m <= 2 {
        for t in tiles {
            let (n0, nvalid, wt, st) = tile(t);
            match m {
                2 => q8_block::<I4, 2, W_COMPUTE>(geo, wt, st, a, 0, &out, n0, nvalid, std::ptr::null_mut()),
                1 => q8_block::<I4, 1, W_COMPUTE>(geo, wt, st, a, 0, &out, n0, nvalid, std::ptr::null_mut()),
                _ => {}
            }
        }
        return;
    }
    with_wsum(geo, |wb| {
        for t in tiles {
            let (n0, nvalid, wt, st) = tile(t);
            q8_block::<I4, 2, W_STORE>(geo, wt, st, a, 0, &out, n0, nvalid, wb);
            let mut i = 2;
            while i + 2 <= m {
                q8_block::<I4, 2, W_LOAD>(geo, wt, st, a, i, &out, n0, nvalid, wb);
                i += 2;
            }
            if i < m {
                q8_block::<I4, 1, W_LOAD>(geo, wt, st, a, i, &out, n0, nvalid, wb);
            }
        }
    })
}

/// `tbl` indices transposing a row quad (r0k0 r0k1 r0k2 r0k3 r1k0 ...) to k-major (k0: r0..r3, ...).
const TRANSPOSE4X4: [u8; 16] = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15];

/// FMA of the 4 k-columns of one row quad into `part` (k order), x = 4 floats of this chunk.
#[inline(always)]
unsafe fn fma_quad(part: &mut float32x4_t, wk: &[float32x4_t; 4], x: float32x4_t) {
    *part = vfmaq_laneq_f32::<0>(*part, wk[0], x);
    *part = vfmaq_laneq_f32::<1>(*part, wk[1], x);
    *part = vfmaq_laneq_f32::<2>(*part, wk[2], x);
    *part = vfmaq_laneq_f32::<3>(*part, wk[3], x);
}

#[inline(always)]
unsafe fn f32_block<const I4: bool, const MB: usize>(
    geo: &Geo,
    wt: *const u8,
    st: ScalePtr,
    x: &[f32],
    i0: usize,
    out: &OutPtr,
    n0: usize,
    nvalid: usize,
) {
    let zf = vdupq_n_f32(0.0);
    let mut accf = [[zf; 4]; MB];
    let tr = vld1q_u8(TRANSPOSE4X4.as_ptr());
    let cpg = geo.g_sz / 4;
    for g in 0..geo.ng {
        let mut part = [[zf; 4]; MB];
        let gp = wt.add(g * cpg * geo.cb);
        for c in 0..cpg {
            let wq = load_chunk_signed(gp.add(c * geo.cb), I4);
            let kk = g * geo.g_sz + c * 4;
            let mut xv = [zf; MB];
            for j in 0..MB {
                xv[j] = vld1q_f32(x.as_ptr().add((i0 + j) * geo.k + kk));
            }
            for q in 0..4 {
                let t = vqtbl1q_s8(wq[q], tr);
                let h0 = vmovl_s8(vget_low_s8(t));
                let h1 = vmovl_high_s8(t);
                let wk = [
                    vcvtq_f32_s32(vmovl_s16(vget_low_s16(h0))),
                    vcvtq_f32_s32(vmovl_high_s16(h0)),
                    vcvtq_f32_s32(vmovl_s16(vget_low_s16(h1))),
                    vcvtq_f32_s32(vmovl_high_s16(h1)),
                ];
                for j in 0..MB {
                    fma_quad(&mut part[j][q], &wk, xv[j]);
                }
            }
        }
        for j in 0..MB {
            for q in 0..4 {
                let s = st.add(g * TILE_ROWS).load4(q);
                accf[j][q] = vfmaq_f32(accf[j][q], part[j][q], s);
            }
        }
    }
    for j in 0..MB {
        store_rows(out, i0 + j, n0, nvalid, &accf[j], 1.0);
    }
}

/// Exact fp32 GEMM (shared by all AArch64 kernel sets). # Safety: see `GemmF32Fn`.
pub unsafe fn gemm_f32(w: &PackedRef<'_>, tiles: Range<usize>, x: &[f32], m: usize, out: OutPtr) {
    let geo = Geo::new(w);
    if geo.int4 {
        f32_tiles::<true>(&geo, w, tiles, x, m, out)
    } else {
        f32_tiles::<false>(&geo, w, tiles, x, m, out)
    }
}

unsafe fn f32_tiles<const I4: bool>(geo: &Geo, w: &PackedRef<'_>, tiles: Range<usize>, x: &[f32], m: usize, out: OutPtr) {
    for t in tiles {
        let n0 = t * TILE_ROWS;
        let nvalid = (geo.n - n0).min(TILE_ROWS);
        let wt = w.data.as_ptr().add(t * geo.tile_bytes);
        let st = ScalePtr::of(&w.scales).add(t * geo.ng * TILE_ROWS);
        let mut i = 0;
        while i + 4 <= m {
            f32_block::<I4, 4>(geo, wt, st, x, i, &out, n0, nvalid);
            i += 4;
        }
        while i < m {
            f32_block::<I4, 1>(geo, wt, st, x, i, &out, n0, nvalid);
            i += 1;
        }
    }
}
