//! AVX-512 (F/BW/VL/VNNI) kernels over the T16K4 layout.
//!
//! One `zmm` = the 16 rows of a tile (one i32/f32 lane per row), so no horizontal reduction.
//!
//! Q8 path (activations `qa` in [-128, 127] with a per-token zero point `zp`, DESIGN.md section 3),
//! per chunk (16 rows x 4 columns) one `vpdpbusd` per token (activations broadcast):
//! - INT4: the 32-byte chunk is broadcast to both 256-bit halves and masked with `0x0F` (low half:
//!   rows 0..7, the low nibbles) / `0xF0` (high half: rows 8..15, the high nibbles *in place*, i.e.
//!   `16 * (q + 8)`, still a valid u8 <= 240). The group accumulator starts at `-8*gsum` (low lanes)
//!   / `-128*gsum` (high lanes), `gsum = sum (qa - zp)`, so it ends at `sum (q+8)*qa - 8*gsum`
//!   (16x that in the high lanes).
//! - INT8: the weights are flipped to u8 `q + 128` (xor 0x80); the accumulator starts at
//!   `-128*gsum`.
//!   `vpdpbusd` (non-saturating) sums 4 u8*s8 products into i32 exactly.
//! - Zero point, `isum = that - zp * W` with the offset weight row sums `W = sum (q + 8)` (resp.
//!   `q + 128`; 16x in the INT4 high lanes), which one more `vpdpbusd` per chunk with all-ones
//!   activations accumulates:
//!   - one token (decode) with `zp != -128`: the second `vpdpbusd` takes `-zp` (an s8) instead of
//!     ones and sums `-zp * W` directly (a separate chain, added at the group end);
//!   - otherwise the first token block of a tile computes `W` per group and keeps it (as f32) in
//!     a per-thread buffer for the tile's next blocks (prefill pays it once per tile), and the
//!     correction is one `vfnmadd` per token and group. Every operand and result is an integer
//!     below 2^24, so it is exact.
//! - INT4 high lanes: instead of shifting every token's 16x sum back, 1/16 is folded into the
//!   scales (`fma(16 isum, s/16, acc) == fma(isum, s, acc)` when `s/16` is exact, i.e. s >= 2^-122;
//!   groups with a smaller scale take the shift).
//!   Then per group `acc = fma(isum as f32, scale, acc)` and at the end `acc * s_a`: the scalar order.
//!
//! F32 path: weights are unpacked to signed bytes, one column at a time sign-extended to i32 and
//! converted (exact), and `part = fma(x[k], q, part)` runs over k in order, then
//! `acc = fma(part, scale, acc)`: again the scalar order, per row.
//!
//! Both paths process a block of up to `MB` tokens per weight unpack (prefill), with the tile
//! (K=1024 INT4: 8 KiB) hot in L1 while the token blocks iterate.

use super::x86_geo::Geo;
use super::OutPtr;
use crate::act::QuantActsRef;
use crate::quant::{PackedRef, ScaleType, WeightBits, TILE_ROWS};
use std::arch::x86_64::*;
use std::ops::Range;

/// Whether this CPU can run these kernels.
pub fn supported() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
}

/// Tokens per register block in the Q8 path (8 i32 + 8 f32 accumulators out of 32 zmm).
const MB_Q8: usize = 8;
/// Tokens per register block in the F32 path.
const MB_F32: usize = 8;

/// Writes the 16 lanes of row tile `t` for token row `i` (only rows `< n`).
/// # Safety
/// `check_call` held for `out` (so `i * ldo + n <= len` for every token row `i < m`), `t < tiles`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn store_tile(out: &OutPtr, i: usize, t: usize, n: usize, v: __m512) {
    let n0 = t * TILE_ROWS;
    let p = out.ptr.add(i * out.ldo + n0);
    if n0 + TILE_ROWS <= n {
        _mm512_storeu_ps(p, v);
    } else {
        // Partial last tile: n0 < n (t < tiles) and only lanes n0..n are written.
        let mask: __mmask16 = ((1u32 << (n - n0)) - 1) as __mmask16;
        _mm512_mask_storeu_ps(p, mask, v);
    }
}

/// The 16 scales `i .. i + 16` (one tile's rows of a group) widened to f32 (exact).
/// # Safety
/// `i + 16 <= scale_count` (the `check_call` contract covers every tile and group).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn load_scales16(g: &Geo, i: usize) -> __m512 {
    let p = g.scale_ptr(i);
    match g.scale_type {
        ScaleType::F32 => _mm512_loadu_ps(p as *const f32),
        ScaleType::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
        // bf16 is the high half of an f32.
        ScaleType::Bf16 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)))),
    }
}

/// Q8 kernel (see `super::GemmQ8Fn`).
/// # Safety
/// See `GemmQ8Fn`: the contract was checked by `Kernels::gemm_q8`, and `supported()` holds.
pub unsafe fn gemm_q8(w: &PackedRef<'_>, tiles: Range<usize>, a: &QuantActsRef<'_>, out: OutPtr) {
    gemm_q8_impl(w, tiles, a, out)
}

/// F32 kernel (see `super::GemmF32Fn`).
/// # Safety
/// See `GemmF32Fn`.
pub unsafe fn gemm_f32(w: &PackedRef<'_>, tiles: Range<usize>, x: &[f32], m: usize, out: OutPtr) {
    gemm_f32_impl(w, tiles, x, m, out)
}

/// How a token block gets the weight row sums `W` of its tile (see module docs). `W_FUSED`: one
/// token whose zero point is not -128: `-zp` fits an s8, so the correction `-zp * W` is summed by a
/// second `vpdpbusd` with `-zp` broadcast straight into the token's accumulator (decode: no
/// separate `W`, no correction at the group end).
const W_COMPUTE: u8 = 0;
const W_STORE: u8 = 1;
const W_LOAD: u8 = 2;
const W_FUSED: u8 = 3;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn gemm_q8_impl(w: &PackedRef<'_>, tiles: Range<usize>, a: &QuantActsRef<'_>, out: OutPtr) {
    let geo = Geo::new(w);
    if w.spec.bits == WeightBits::Int8 {
        q8_tiles::<true>(&geo, tiles, a, &out)
    } else {
        q8_tiles::<false>(&geo, tiles, a, &out)
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn q8_tiles<const INT8: bool>(g: &Geo, tiles: Range<usize>, a: &QuantActsRef<'_>, out: &OutPtr) {
    let m = a.m;
    macro_rules! rem {
        ($wm:expr, $i0:expr, $wb:expr, $t:expr; $($r:literal)*) => {
            match m - $i0 {
                $($r => q8_tile::<$r, INT8, { $wm }>(g, $t, a, $i0, out, $wb),)*
                _ => {}
            }
        };
    }
    if m == 1 && a.zp[0] != -128 {
        for t in tiles {
            q8_tile::<1, INT8, W_FUSED>(g, t, a, 0, out, std::ptr::null_mut());
        }
        return;
    }
    if m <= MB_Q8 {
        // One token block per tile (decode): W is computed in the same pass.
        for t in tiles {
            rem!(W_COMPUTE, 0, std::ptr::null_mut(), t; 1 2 3 4 5 6 7 8);
        }
        return;
    }
    super::with_wsum_scratch(g.ng * TILE_ROWS, |wbuf| {
        let wb = wbuf.as_mut_ptr();
        for t in tiles {
            q8_tile::<MB_Q8, INT8, W_STORE>(g, t, a, 0, out, wb);
            let mut i0 = MB_Q8;
            while i0 + MB_Q8 <= m {
                q8_tile::<MB_Q8, INT8, W_LOAD>(g, t, a, i0, out, wb);
                i0 += MB_Q8;
            }
            rem!(W_LOAD, i0, wb, t; 1 2 3 4 5 6 7);
        }
    })
}

/// Q8 on tile `t` for token rows `i0 .. i0 + B`. `wbuf` (`ng * 16` values, f32 bits) receives
/// (`W_STORE`) or provides (`W_LOAD`) the tile's weight row sums; unused otherwise.
/// # Safety
/// `t < tiles`, `i0 + B <= a.m`, the `gemm_q8` contract holds (`W_FUSED`: `B == 1` and
/// `zp[i0] != -128`), `wbuf` as described.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn q8_tile<const B: usize, const INT8: bool, const WM: u8>(
    g: &Geo,
    t: usize,
    a: &QuantActsRef<'_>,
    i0: usize,
    out: &OutPtr,
    wbuf: *mut i32,
) {
    let k = g.k;
    // Per-lane shifts: 0 for rows 0..7, 4 for rows 8..15 (INT4 high nibbles kept in place).
    let sh_lo_hi = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi32(4));
    // Per-lane factors 1 / 1/16 (INT4 high lanes carry 16x; exact powers of two).
    let lane_f = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(1.0), _mm512_set1_ps(0.0625));
    // INT4 mask: 0x0F in the low 256 bits, 0xF0 in the high 256 bits.
    let nib_mask = _mm512_inserti64x4::<1>(_mm512_set1_epi8(0x0F), _mm256_set1_epi8(0xF0u8 as i8));
    // Correction multipliers as left shifts of -gsum: 8 = 1<<3 (low lanes), 128 = 1<<7 (high lanes).
    let corr_sh = if INT8 { _mm512_set1_epi32(7) } else { _mm512_inserti64x4::<1>(_mm512_set1_epi32(3), _mm256_set1_epi32(7)) };
    let flip = _mm512_set1_epi8(0x80u8 as i8);
    let ones = _mm512_set1_epi8(1);
    // W_FUSED: -zp as s8 (zp != -128), one token.
    let nzp = _mm512_set1_epi8(if WM == W_FUSED { (-*a.zp.as_ptr().add(i0)) as i8 } else { 0 });
    // Smallest scale whose 1/16 is still exact (a normal number): 2^-122.
    let min_exact = _mm512_set1_ps(f32::from_bits(5 << 23));
    let qa = a.q.as_ptr();
    let gs = a.gsum.as_ptr();
    // Zero points as f32 (exact: integers in [-128, 127]); zp index i0 + b < m.
    let mut zpf = [0f32; B];
    for (b, z) in zpf.iter_mut().enumerate() {
        *z = *a.zp.as_ptr().add(i0 + b) as f32;
    }
    // Chunks per loop step: pairs for small blocks (one prefetch per 64 bytes, no parity test).
    let step = if B <= 2 { 2 } else { 1 };
    let tile = g.data.add(t * g.tile_bytes);
    let mut acc = [_mm512_setzero_ps(); B];
    for gi in 0..g.ng {
        let mut isum = [_mm512_setzero_si512(); B];
        for b in 0..B {
            // gsum index (i0+b)*ng + gi < m*ng (contract: gsum.len() == m*ng).
            let neg = _mm512_set1_epi32(-*gs.add((i0 + b) * g.ng + gi));
            isum[b] = _mm512_sllv_epi32(neg, corr_sh);
        }
        let mut wacc = _mm512_setzero_si512();
        let gbase = tile.add(gi * g.cpg * g.chunk_bytes);
        let kbase = gi * g.group;
        // Software prefetch of the next tile's scales (its data is prefetched per chunk below):
        // weights stream from L3/DRAM once per call. `wrapping_add`: the address may lie past
        // the buffer (last tile); a prefetch never faults.
        _mm_prefetch::<_MM_HINT_T0>(g.scale_ptr(((t + 1) * g.ng + gi) * TILE_ROWS) as *const i8);
        let mut c = 0;
        while c < g.cpg {
            for h in 0..step {
                // Chunk (t, gi, c + h): offset < data_bytes since t < tiles, gi < ng, c + h < cpg
                // (cpg is a multiple of 8).
                let cp = gbase.add((c + h) * g.chunk_bytes);
                if INT8 || (c + h) % 2 == 0 {
                    _mm_prefetch::<_MM_HINT_T0>(cp.wrapping_add(g.tile_bytes) as *const i8);
                }
                let wv = if INT8 {
                    _mm512_xor_si512(_mm512_loadu_si512(cp as *const _), flip)
                } else {
                    let raw = _mm512_broadcast_i64x4(_mm256_loadu_si256(cp as *const __m256i));
                    _mm512_and_si512(raw, nib_mask)
                };
                if WM == W_FUSED {
                    wacc = _mm512_dpbusd_epi32(wacc, wv, nzp);
                } else if WM != W_LOAD {
                    wacc = _mm512_dpbusd_epi32(wacc, wv, ones);
                }
                let kk = kbase + (c + h) * 4;
                for b in 0..B {
                    // 4 activation bytes at (i0+b)*k + kk .. +4 <= m*k.
                    let av = (qa.add((i0 + b) * k + kk) as *const i32).read_unaligned();
                    isum[b] = _mm512_dpbusd_epi32(isum[b], wv, _mm512_set1_epi32(av));
                }
            }
            c += step;
        }
        // W as f32, as accumulated (INT4: the high lanes carry 16x, like isum). wbuf + gi*16 ..
        // +16 lies within its ng*16 values.
        let wf = if WM == W_FUSED {
            _mm512_setzero_ps()
        } else if WM == W_LOAD {
            _mm512_castsi512_ps(_mm512_loadu_si512(wbuf.add(gi * TILE_ROWS) as *const _))
        } else {
            let wf = _mm512_cvtepi32_ps(wacc);
            if WM == W_STORE {
                _mm512_storeu_si512(wbuf.add(gi * TILE_ROWS) as *mut _, _mm512_castps_si512(wf));
            }
            wf
        };
        if WM == W_FUSED {
            // W_FUSED: the correction -zp * W, summed in a separate chain, added here.
            isum[0] = _mm512_add_epi32(isum[0], wacc);
        }
        // scales[(t*ng + gi)*16 .. +16] is within scale_count.
        let sc = load_scales16(g, (t * g.ng + gi) * TILE_ROWS);
        // INT4: isum and W carry 16x in the high lanes. Instead of shifting every token's sum
        // back, fold 1/16 into the scales: fma(16 isum, s/16, acc) == fma(isum, s, acc) when s/16
        // is exact (s >= 2^-122; always, except for degenerate all-but-zero weight groups, which
        // take the shift).
        let folded = INT8 || _mm512_cmp_ps_mask::<_CMP_LT_OQ>(sc, min_exact) == 0;
        if folded {
            let scf = if INT8 { sc } else { _mm512_mul_ps(sc, lane_f) };
            for b in 0..B {
                // isum = v - zp * W, exact in f32 (integers below 2^24); W_FUSED: already in v.
                let v = _mm512_cvtepi32_ps(isum[b]);
                let exact = if WM == W_FUSED { v } else { _mm512_fnmadd_ps(_mm512_set1_ps(zpf[b]), wf, v) };
                acc[b] = _mm512_fmadd_ps(exact, scf, acc[b]);
            }
        } else {
            let wf1 = _mm512_mul_ps(wf, lane_f);
            for b in 0..B {
                let v = _mm512_cvtepi32_ps(_mm512_srav_epi32(isum[b], sh_lo_hi));
                let exact = if WM == W_FUSED { v } else { _mm512_fnmadd_ps(_mm512_set1_ps(zpf[b]), wf1, v) };
                acc[b] = _mm512_fmadd_ps(exact, sc, acc[b]);
            }
        }
    }
    for b in 0..B {
        let s = _mm512_set1_ps(*a.scale.as_ptr().add(i0 + b));
        store_tile(out, i0 + b, t, g.n, _mm512_mul_ps(acc[b], s));
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn gemm_f32_impl(w: &PackedRef<'_>, tiles: Range<usize>, x: &[f32], m: usize, out: OutPtr) {
    let geo = Geo::new(w);
    let int8 = w.spec.bits == WeightBits::Int8;
    for t in tiles {
        let mut i0 = 0;
        while i0 + MB_F32 <= m {
            if int8 {
                f32_tile::<MB_F32, true>(&geo, t, x, i0, &out);
            } else {
                f32_tile::<MB_F32, false>(&geo, t, x, i0, &out);
            }
            i0 += MB_F32;
        }
        macro_rules! rem {
            ($($r:literal)*) => {
                match m - i0 {
                    $($r => if int8 { f32_tile::<$r, true>(&geo, t, x, i0, &out) } else { f32_tile::<$r, false>(&geo, t, x, i0, &out) },)*
                    _ => {}
                }
            };
        }
        rem!(1 2 3 4 5 6 7);
    }
}

/// Column `KK` (0..3) of a chunk held as 16 dwords of 4 signed bytes, as exact f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn col<const SHL: u32>(wb: __m512i) -> __m512 {
    _mm512_cvtepi32_ps(_mm512_srai_epi32::<24>(_mm512_slli_epi32::<SHL>(wb)))
}

/// F32 on tile `t` for token rows `i0 .. i0 + B`.
/// # Safety
/// `t < tiles`, `i0 + B <= m`, `x.len() == m * k`, the `gemm_f32` contract holds.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn f32_tile<const B: usize, const INT8: bool>(g: &Geo, t: usize, x: &[f32], i0: usize, out: &OutPtr) {
    let k = g.k;
    // Shift the high 256 bits (rows 8..15, high nibbles) right by 4 within each 16-bit word.
    let sh16 = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(4));
    let m0f = _mm512_set1_epi8(0x0F);
    let eight = _mm512_set1_epi8(8);
    let xp = x.as_ptr();
    let tile = g.data.add(t * g.tile_bytes);
    let mut acc = [_mm512_setzero_ps(); B];
    for gi in 0..g.ng {
        let mut part = [_mm512_setzero_ps(); B];
        let gbase = tile.add(gi * g.cpg * g.chunk_bytes);
        let kbase = gi * g.group;
        for c in 0..g.cpg {
            let cp = gbase.add(c * g.chunk_bytes);
            // Signed bytes: lane r holds q[r][kk] for kk = 0..3 in bytes 0..3.
            let wb = if INT8 {
                _mm512_loadu_si512(cp as *const _)
            } else {
                let raw = _mm512_broadcast_i64x4(_mm256_loadu_si256(cp as *const __m256i));
                _mm512_sub_epi8(_mm512_and_si512(_mm512_srlv_epi16(raw, sh16), m0f), eight)
            };
            let kk = kbase + c * 4;
            let cols = [col::<24>(wb), col::<16>(wb), col::<8>(wb), col::<0>(wb)];
            for (j, &wf) in cols.iter().enumerate() {
                for b in 0..B {
                    // (i0+b)*k + kk + j < m*k.
                    let xv = _mm512_set1_ps(*xp.add((i0 + b) * k + kk + j));
                    part[b] = _mm512_fmadd_ps(xv, wf, part[b]);
                }
            }
        }
        let sc = load_scales16(g, (t * g.ng + gi) * TILE_ROWS);
        for b in 0..B {
            acc[b] = _mm512_fmadd_ps(part[b], sc, acc[b]);
        }
    }
    for b in 0..B {
        store_tile(out, i0 + b, t, g.n, acc[b]);
    }
}
