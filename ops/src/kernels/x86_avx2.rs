//! AVX2 + FMA kernels over the T16K4 layout.
//!
//! A tile's 16 rows are two `ymm` (rows 0..7 and 8..15, one i32/f32 lane per row), so there is no
//! horizontal reduction.
//!
//! Q8 path (activations `qa` in [-128, 127] with a per-token zero point `zp`, DESIGN.md section 3;
//! per chunk = 16 rows x 4 columns, activations broadcast as one dword):
//! - INT4: low nibbles (rows 0..7) and high nibbles (rows 8..15) are unpacked to u8 `q + 8` (0..15);
//!   `vpmaddubsw` gives i16 pair sums in [-3840, 3810], so 8 chunks are summed in i16 (within
//!   [-30720, 30480]: no saturation) before one `vpmaddwd` by 1 widens them to i32. The i32 group
//!   accumulator starts at `-8*gsum` (`gsum = sum (qa - zp)`), so it ends at `sum q*qa + 8*zp*G`.
//!   Zero point: the unpacked bytes are also summed (`vpaddb`, <= 8*15 per byte) into the offset
//!   row sums `W = sum (q + 8)` (`vpmaddubsw`/`vpmaddwd` by 1 per 8 chunks), computed by the first
//!   token block of a tile and reused (per-thread buffer, as f32) by the next ones; then
//!   `isum = (sum q*qa + 8*zp*G) - zp * W` is one exact `vfnmadd` (integers below 2^24).
//! - INT8: bytes are sign-extended to i16 (weights once per chunk, activations as `qa - zp`, which
//!   fits i16) and multiplied by `vpmaddwd` (|products| <= 128*255, exact pairs in i32): no offsets,
//!   no saturation; a `vphaddd` + `vpermq` at the group end turns the (row, k pair) lanes into rows.
//!   Every sum is an exact integer below 2^24, so the conversion to f32 is exact, and
//!   `acc = fma(isum, scale, acc)` per group then `acc * s_a` reproduces the scalar reference.
//!
//! F32 path: weights unpacked to signed bytes, each column sign-extended to i32 and converted
//! (exact); `part = fma(x[k], q, part)` for k in order, `acc = fma(part, scale, acc)` per group.

use super::x86_geo::Geo;
use super::OutPtr;
use crate::act::QuantActsRef;
use crate::quant::{PackedRef, ScaleType, WeightBits, TILE_ROWS};
use std::arch::x86_64::*;
use std::ops::Range;

/// Whether this CPU can run these kernels.
pub fn supported() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// The 16 scales `i .. i + 16` (one tile's rows of a group) widened to f32 (exact), as rows 0..8
/// and 8..16.
/// # Safety
/// `i + 16 <= scale_count` (the `check_call` contract covers every tile and group).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_scales16(g: &Geo, i: usize) -> (__m256, __m256) {
    let p = g.scale_ptr(i);
    match g.scale_type {
        ScaleType::F32 => (_mm256_loadu_ps(p as *const f32), _mm256_loadu_ps((p as *const f32).add(8))),
        ScaleType::F16 => {
            let h = _mm256_loadu_si256(p as *const __m256i);
            (_mm256_cvtph_ps(_mm256_castsi256_si128(h)), _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(h)))
        }
        ScaleType::Bf16 => {
            // bf16 is the high half of an f32.
            let h = _mm256_loadu_si256(p as *const __m256i);
            let lo = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(h)));
            let hi = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm256_extracti128_si256::<1>(h)));
            (_mm256_castsi256_ps(lo), _mm256_castsi256_ps(hi))
        }
    }
}

/// Tokens per register block (Q8 INT4: 4 tokens x (2 i16 + 2 i32 + 2 f32) accumulators).
const MB_Q8: usize = 4;
/// Tokens per register block (Q8 INT8: 2 tokens x (4 i32 + 2 f32) accumulators).
const MB_Q8_I8: usize = 2;
/// Tokens per register block (F32: 3 tokens x (2 part + 2 acc)).
const MB_F32: usize = 3;

/// Writes rows `t*16 .. t*16+16` (only those `< n`) of token row `i`.
/// # Safety
/// `check_call` held for `out`, `t < tiles`, `i < m`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store_tile(out: &OutPtr, i: usize, t: usize, n: usize, lo: __m256, hi: __m256) {
    let n0 = t * TILE_ROWS;
    let p = out.ptr.add(i * out.ldo + n0);
    if n0 + TILE_ROWS <= n {
        _mm256_storeu_ps(p, lo);
        _mm256_storeu_ps(p.add(8), hi);
    } else {
        // Partial last tile: write lanes n0 .. n only (n0 < n because t < tiles).
        let mut tmp = [0f32; 16];
        _mm256_storeu_ps(tmp.as_mut_ptr(), lo);
        _mm256_storeu_ps(tmp.as_mut_ptr().add(8), hi);
        for (r, &v) in tmp.iter().enumerate().take(n - n0) {
            *p.add(r) = v;
        }
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

/// How a token block gets the weight row sums `W` of its tile (see module docs).
const W_COMPUTE: u8 = 0;
const W_STORE: u8 = 1;
const W_LOAD: u8 = 2;

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_q8_impl(w: &PackedRef<'_>, tiles: Range<usize>, a: &QuantActsRef<'_>, out: OutPtr) {
    let geo = Geo::new(w);
    let m = a.m;
    if w.spec.bits == WeightBits::Int8 {
        for t in tiles {
            let mut i0 = 0;
            while i0 + MB_Q8_I8 <= m {
                q8_tile_i8::<MB_Q8_I8>(&geo, t, a, i0, &out);
                i0 += MB_Q8_I8;
            }
            if i0 < m {
                q8_tile_i8::<1>(&geo, t, a, i0, &out);
            }
        }
        return;
    }
    macro_rules! rem {
        ($wm:expr, $i0:expr, $wb:expr, $t:expr; $($r:literal)*) => {
            match m - $i0 {
                $($r => q8_tile_i4::<$r, { $wm }>(&geo, $t, a, $i0, &out, $wb),)*
                _ => {}
            }
        };
    }
    if m <= MB_Q8 {
        for t in tiles {
            rem!(W_COMPUTE, 0, std::ptr::null_mut(), t; 1 2 3 4);
        }
        return;
    }
    super::with_wsum_scratch(geo.ng * TILE_ROWS, |wbuf| {
        let wb = wbuf.as_mut_ptr();
        for t in tiles {
            q8_tile_i4::<MB_Q8, W_STORE>(&geo, t, a, 0, &out, wb);
            let mut i0 = MB_Q8;
            while i0 + MB_Q8 <= m {
                q8_tile_i4::<MB_Q8, W_LOAD>(&geo, t, a, i0, &out, wb);
                i0 += MB_Q8;
            }
            rem!(W_LOAD, i0, wb, t; 1 2 3);
        }
    })
}

/// Q8, INT4 weights, tile `t`, token rows `i0 .. i0 + B`. `wbuf` (`ng * 16` values, f32 bits)
/// receives (`W_STORE`) or provides (`W_LOAD`) the tile's weight row sums; unused with `W_COMPUTE`.
/// # Safety
/// `t < tiles`, `i0 + B <= a.m`, the `gemm_q8` contract holds, `wbuf` as described.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_tile_i4<const B: usize, const WM: u8>(g: &Geo, t: usize, a: &QuantActsRef<'_>, i0: usize, out: &OutPtr, wbuf: *mut i32) {
    let k = g.k;
    let m0f = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let ones8 = _mm256_set1_epi8(1);
    let qa = a.q.as_ptr();
    let gs = a.gsum.as_ptr();
    let mut zpf = [0f32; B];
    for (b, z) in zpf.iter_mut().enumerate() {
        // zp index i0 + b < m; exact in f32.
        *z = *a.zp.as_ptr().add(i0 + b) as f32;
    }
    let tile = g.data.add(t * g.tile_bytes);
    let mut acc_lo = [_mm256_setzero_ps(); B];
    let mut acc_hi = [_mm256_setzero_ps(); B];
    for gi in 0..g.ng {
        let mut i32_lo = [_mm256_setzero_si256(); B];
        let mut i32_hi = [_mm256_setzero_si256(); B];
        for b in 0..B {
            // gsum index < m*ng by the contract.
            let c = _mm256_set1_epi32(-8 * *gs.add((i0 + b) * g.ng + gi));
            i32_lo[b] = c;
            i32_hi[b] = c;
        }
        let mut w32_lo = _mm256_setzero_si256();
        let mut w32_hi = _mm256_setzero_si256();
        let gbase = tile.add(gi * g.cpg * 32);
        let kbase = gi * g.group;
        _mm_prefetch::<_MM_HINT_T0>(g.scale_ptr(((t + 1) * g.ng + gi) * TILE_ROWS) as *const i8);
        // Blocks of 8 chunks: i16 pair sums stay within [-30720, 30480], byte sums <= 120.
        let mut c0 = 0;
        while c0 < g.cpg {
            let mut s_lo = [_mm256_setzero_si256(); B];
            let mut s_hi = [_mm256_setzero_si256(); B];
            let mut wb_lo = _mm256_setzero_si256();
            let mut wb_hi = _mm256_setzero_si256();
            for c in c0..c0 + 8 {
                // cpg is a multiple of 8 (G >= 32); chunk offset < data_bytes.
                let raw = _mm256_loadu_si256(gbase.add(c * 32) as *const __m256i);
                if c % 2 == 0 {
                    // Next tile, same position (may be past the buffer: a prefetch never faults).
                    _mm_prefetch::<_MM_HINT_T0>(gbase.wrapping_add(c * 32 + g.tile_bytes) as *const i8);
                }
                let lo = _mm256_and_si256(raw, m0f);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m0f);
                if WM != W_LOAD {
                    wb_lo = _mm256_add_epi8(wb_lo, lo);
                    wb_hi = _mm256_add_epi8(wb_hi, hi);
                }
                let kk = kbase + c * 4;
                for b in 0..B {
                    let av = _mm256_set1_epi32((qa.add((i0 + b) * k + kk) as *const i32).read_unaligned());
                    s_lo[b] = _mm256_add_epi16(s_lo[b], _mm256_maddubs_epi16(lo, av));
                    s_hi[b] = _mm256_add_epi16(s_hi[b], _mm256_maddubs_epi16(hi, av));
                }
            }
            for b in 0..B {
                i32_lo[b] = _mm256_add_epi32(i32_lo[b], _mm256_madd_epi16(s_lo[b], ones));
                i32_hi[b] = _mm256_add_epi32(i32_hi[b], _mm256_madd_epi16(s_hi[b], ones));
            }
            if WM != W_LOAD {
                w32_lo = _mm256_add_epi32(w32_lo, _mm256_madd_epi16(_mm256_maddubs_epi16(wb_lo, ones8), ones));
                w32_hi = _mm256_add_epi32(w32_hi, _mm256_madd_epi16(_mm256_maddubs_epi16(wb_hi, ones8), ones));
            }
            c0 += 8;
        }
        // W as f32; wbuf + gi*16 .. +16 lies within its ng*16 values.
        let wp = wbuf.wrapping_add(gi * TILE_ROWS) as *mut f32;
        let (wf_lo, wf_hi) = if WM == W_LOAD {
            (_mm256_loadu_ps(wp), _mm256_loadu_ps(wp.add(8)))
        } else {
            let (l, h) = (_mm256_cvtepi32_ps(w32_lo), _mm256_cvtepi32_ps(w32_hi));
            if WM == W_STORE {
                _mm256_storeu_ps(wp, l);
                _mm256_storeu_ps(wp.add(8), h);
            }
            (l, h)
        };
        let (sc_lo, sc_hi) = load_scales16(g, (t * g.ng + gi) * TILE_ROWS);
        for b in 0..B {
            // isum = v - zp * W, exact in f32 (integers below 2^24).
            let z = _mm256_set1_ps(zpf[b]);
            let e_lo = _mm256_fnmadd_ps(z, wf_lo, _mm256_cvtepi32_ps(i32_lo[b]));
            let e_hi = _mm256_fnmadd_ps(z, wf_hi, _mm256_cvtepi32_ps(i32_hi[b]));
            acc_lo[b] = _mm256_fmadd_ps(e_lo, sc_lo, acc_lo[b]);
            acc_hi[b] = _mm256_fmadd_ps(e_hi, sc_hi, acc_hi[b]);
        }
    }
    for b in 0..B {
        let s = _mm256_set1_ps(*a.scale.as_ptr().add(i0 + b));
        store_tile(out, i0 + b, t, g.n, _mm256_mul_ps(acc_lo[b], s), _mm256_mul_ps(acc_hi[b], s));
    }
}

/// Row sums of a (row, k pair) i32 accumulator pair: `a` = rows r..r+3, `b` = rows r+4..r+7, each
/// lane pair (2j, 2j+1) one row -> the 8 rows in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows8(a: __m256i, b: __m256i) -> __m256i {
    // hadd: [r0 r1 r4 r5 | r2 r3 r6 r7] -> qwords (0, 2, 1, 3).
    _mm256_permute4x64_epi64::<0xD8>(_mm256_hadd_epi32(a, b))
}

/// Q8, INT8 weights, tile `t`, token rows `i0 .. i0 + B`.
/// # Safety
/// `t < tiles`, `i0 + B <= a.m`, the `gemm_q8` contract holds.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_tile_i8<const B: usize>(g: &Geo, t: usize, a: &QuantActsRef<'_>, i0: usize, out: &OutPtr) {
    let k = g.k;
    let qa = a.q.as_ptr();
    let mut zp16 = [_mm_setzero_si128(); B];
    for (b, z) in zp16.iter_mut().enumerate() {
        // zp index i0 + b < m; in [-128, 127].
        *z = _mm_set1_epi16(*a.zp.as_ptr().add(i0 + b) as i16);
    }
    let tile = g.data.add(t * g.tile_bytes);
    let mut acc_lo = [_mm256_setzero_ps(); B];
    let mut acc_hi = [_mm256_setzero_ps(); B];
    for gi in 0..g.ng {
        // p[b][j]: rows 4j .. 4j+3, lanes (row, k pair).
        let mut p = [[_mm256_setzero_si256(); 4]; B];
        let gbase = tile.add(gi * g.cpg * 64);
        let kbase = gi * g.group;
        _mm_prefetch::<_MM_HINT_T0>(g.scale_ptr(((t + 1) * g.ng + gi) * TILE_ROWS) as *const i8);
        for c in 0..g.cpg {
            let cp = gbase.add(c * 64);
            _mm_prefetch::<_MM_HINT_T0>(cp.wrapping_add(g.tile_bytes) as *const i8);
            // Rows 4j..4j+3 (16 bytes) as i16.
            let w16 = [
                _mm256_cvtepi8_epi16(_mm_loadu_si128(cp as *const __m128i)),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(cp.add(16) as *const __m128i)),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(cp.add(32) as *const __m128i)),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(cp.add(48) as *const __m128i)),
            ];
            let kk = kbase + c * 4;
            for b in 0..B {
                // qa - zp as i16 (in [-255, 255]) for the 4 columns, broadcast to every row.
                let a4 = _mm_cvtsi32_si128((qa.add((i0 + b) * k + kk) as *const i32).read_unaligned());
                let av = _mm256_broadcastq_epi64(_mm_sub_epi16(_mm_cvtepi8_epi16(a4), zp16[b]));
                for j in 0..4 {
                    p[b][j] = _mm256_add_epi32(p[b][j], _mm256_madd_epi16(w16[j], av));
                }
            }
        }
        let (sc_lo, sc_hi) = load_scales16(g, (t * g.ng + gi) * TILE_ROWS);
        for b in 0..B {
            let lo = _mm256_cvtepi32_ps(rows8(p[b][0], p[b][1]));
            let hi = _mm256_cvtepi32_ps(rows8(p[b][2], p[b][3]));
            acc_lo[b] = _mm256_fmadd_ps(lo, sc_lo, acc_lo[b]);
            acc_hi[b] = _mm256_fmadd_ps(hi, sc_hi, acc_hi[b]);
        }
    }
    for b in 0..B {
        let s = _mm256_set1_ps(*a.scale.as_ptr().add(i0 + b));
        store_tile(out, i0 + b, t, g.n, _mm256_mul_ps(acc_lo[b], s), _mm256_mul_ps(acc_hi[b], s));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
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
        rem!(1 2);
    }
}

/// Column of a chunk half held as 8 dwords of 4 signed bytes, as exact f32 (`SHL` = 24 - 8*col).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn col<const SHL: i32>(wb: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_srai_epi32::<24>(_mm256_slli_epi32::<SHL>(wb)))
}

/// F32 on tile `t` for token rows `i0 .. i0 + B`.
/// # Safety
/// `t < tiles`, `i0 + B <= m`, `x.len() == m * k`, the `gemm_f32` contract holds.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_tile<const B: usize, const INT8: bool>(g: &Geo, t: usize, x: &[f32], i0: usize, out: &OutPtr) {
    let k = g.k;
    let m0f = _mm256_set1_epi8(0x0F);
    let eight = _mm256_set1_epi8(8);
    let xp = x.as_ptr();
    let tile = g.data.add(t * g.tile_bytes);
    let mut acc_lo = [_mm256_setzero_ps(); B];
    let mut acc_hi = [_mm256_setzero_ps(); B];
    for gi in 0..g.ng {
        let mut p_lo = [_mm256_setzero_ps(); B];
        let mut p_hi = [_mm256_setzero_ps(); B];
        let gbase = tile.add(gi * g.cpg * g.chunk_bytes);
        let kbase = gi * g.group;
        for c in 0..g.cpg {
            let cp = gbase.add(c * g.chunk_bytes);
            // Signed bytes, lane r = row, bytes 0..3 = columns.
            let (wl, wh) = if INT8 {
                (_mm256_loadu_si256(cp as *const __m256i), _mm256_loadu_si256(cp.add(32) as *const __m256i))
            } else {
                let raw = _mm256_loadu_si256(cp as *const __m256i);
                (
                    _mm256_sub_epi8(_mm256_and_si256(raw, m0f), eight),
                    _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16::<4>(raw), m0f), eight),
                )
            };
            let kk = kbase + c * 4;
            let cols = [
                (col::<24>(wl), col::<24>(wh)),
                (col::<16>(wl), col::<16>(wh)),
                (col::<8>(wl), col::<8>(wh)),
                (col::<0>(wl), col::<0>(wh)),
            ];
            for (j, &(fl, fh)) in cols.iter().enumerate() {
                for b in 0..B {
                    let xv = _mm256_set1_ps(*xp.add((i0 + b) * k + kk + j));
                    p_lo[b] = _mm256_fmadd_ps(xv, fl, p_lo[b]);
                    p_hi[b] = _mm256_fmadd_ps(xv, fh, p_hi[b]);
                }
            }
        }
        let (sc_lo, sc_hi) = load_scales16(g, (t * g.ng + gi) * TILE_ROWS);
        for b in 0..B {
            acc_lo[b] = _mm256_fmadd_ps(p_lo[b], sc_lo, acc_lo[b]);
            acc_hi[b] = _mm256_fmadd_ps(p_hi[b], sc_hi, acc_hi[b]);
        }
    }
    for b in 0..B {
        store_tile(out, i0 + b, t, g.n, acc_lo[b], acc_hi[b]);
    }
}
