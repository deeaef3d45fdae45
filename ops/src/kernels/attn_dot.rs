//! The dot product of attention scores, `q . k` over a head (`head_dim % 16 == 0`), per ISA.
//! Every version computes exactly [`crate::decoder::dot_lanes`]: 16 lanes (`lane = i % 16`),
//! separate multiply and add (no FMA), lanes combined as `l + 8`, `l + 4`, `l + 2`, `l + 1`, so
//! the bits are the same everywhere (tests/decoder.rs checks it).

/// AVX-512: one 16-lane accumulator.
///
/// # Safety
/// AVX-512F available; `a.len() == b.len()`, a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
pub unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    debug_assert!(a.len() == b.len() && a.len() % 16 == 0);
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < a.len() {
        // SAFETY: i + 16 <= len for both slices.
        let x = _mm512_loadu_ps(a.as_ptr().add(i));
        let y = _mm512_loadu_ps(b.as_ptr().add(i));
        acc = _mm512_add_ps(acc, _mm512_mul_ps(x, y));
        i += 16;
    }
    let s8 = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
}

/// AVX2: lanes 0..8 and 8..16 in two accumulators.
///
/// # Safety
/// AVX2 available; `a.len() == b.len()`, a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    debug_assert!(a.len() == b.len() && a.len() % 16 == 0);
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i < a.len() {
        // SAFETY: i + 16 <= len for both slices.
        lo = _mm256_add_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i))));
        hi = _mm256_add_ps(hi, _mm256_mul_ps(_mm256_loadu_ps(a.as_ptr().add(i + 8)), _mm256_loadu_ps(b.as_ptr().add(i + 8))));
        i += 16;
    }
    let s8 = _mm256_add_ps(lo, hi);
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
}

/// NEON: lanes in four 4-lane accumulators.
///
/// # Safety
/// `a.len() == b.len()`, a multiple of 16 (NEON is baseline on aarch64).
#[cfg(target_arch = "aarch64")]
#[inline]
pub unsafe fn dot_neon(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::aarch64::*;
    debug_assert!(a.len() == b.len() && a.len() % 16 == 0);
    let mut v = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i < a.len() {
        for (j, acc) in v.iter_mut().enumerate() {
            // SAFETY: i + 16 <= len for both slices.
            let x = vld1q_f32(a.as_ptr().add(i + 4 * j));
            let y = vld1q_f32(b.as_ptr().add(i + 4 * j));
            *acc = vaddq_f32(*acc, vmulq_f32(x, y));
        }
        i += 16;
    }
    // l + 8: lanes 0..8 = (v0 + v2, v1 + v3); l + 4: (v0 + v2) + (v1 + v3)
    let c = vaddq_f32(vaddq_f32(v[0], v[2]), vaddq_f32(v[1], v[3]));
    let d = vadd_f32(vget_low_f32(c), vget_high_f32(c));
    vget_lane_f32(d, 0) + vget_lane_f32(d, 1)
}

/// A KV-cache element the AVX-512 attention kernel reads 16 at a time as f32 (fp16 rows are
/// converted in registers, exactly, with `vcvtph2ps`).
#[cfg(target_arch = "x86_64")]
pub trait KvLoad: Copy {
    /// # Safety
    /// AVX-512F available; 16 elements readable at `p`.
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
    /// # Safety
    /// AVX2 and F16C available; 8 elements readable at `p`.
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

#[cfg(target_arch = "x86_64")]
impl KvLoad for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

#[cfg(target_arch = "x86_64")]
impl KvLoad for half::f16 {
    #[inline(always)]
    unsafe fn load16(p: *const half::f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    unsafe fn load8(p: *const half::f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// AVX2 attention of `R` query heads sharing one KV head, head_dim = `16 * C`, reading the K/V
/// rows in their stored type (fp16 converted in registers by `vcvtph2ps`, exact): K and V are
/// read once for all `R` heads, with no f32 copy of the cache. The same arithmetic in the same
/// order as `decoder::sdpa_generic` (scores by [`dot_avx2`]'s lanes and tree, times `scale`;
/// max, deterministic exp, 16-lane sum; `acc += p * v` in slot order; `out = acc * (1/sum)`), so
/// the same bits. The value pass runs one 16-lane chunk of the head at a time (its `R` pairs of
/// accumulators stay in registers; each lane still sums its slots in order).
///
/// # Safety
/// AVX2, FMA and F16C available; `q.len() >= R*16*C`, `k.len(), v.len() >= n_ctx*16*C`,
/// `scores.len() >= R*n_ctx`, `out.len() >= R*16*C`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn sdpa_avx2_fixed<const C: usize, const R: usize, T: KvLoad>(
    q: &[f32],
    k: &[T],
    v: &[T],
    n_ctx: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let hd = 16 * C;
    debug_assert!(q.len() >= R * hd && k.len() >= n_ctx * hd && v.len() >= n_ctx * hd);
    debug_assert!(scores.len() >= R * n_ctx && out.len() >= R * hd);
    for t in 0..n_ctx {
        let mut kv = [[_mm256_setzero_ps(); 2]; C];
        for c in 0..C {
            kv[c][0] = T::load8(k.as_ptr().add(t * hd + 16 * c));
            kv[c][1] = T::load8(k.as_ptr().add(t * hd + 16 * c + 8));
        }
        for r in 0..R {
            let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for c in 0..C {
                let qp = q.as_ptr().add(r * hd + 16 * c);
                lo = _mm256_add_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(qp), kv[c][0]));
                hi = _mm256_add_ps(hi, _mm256_mul_ps(_mm256_loadu_ps(qp.add(8)), kv[c][1]));
            }
            let s8 = _mm256_add_ps(lo, hi);
            let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            *scores.get_unchecked_mut(r * n_ctx + t) = _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1))) * scale;
        }
    }
    // softmax numerators (the generic loops, vectorised by the compiler under these features)
    let mut inv = [0.0f32; R];
    for r in 0..R {
        let row = &mut scores[r * n_ctx..(r + 1) * n_ctx];
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
            *x = crate::moe::exp_f32(*x - m);
        }
        inv[r] = 1.0 / crate::decoder::sum_lanes(row);
    }
    for c in 0..C {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for t in 0..n_ctx {
            let v0 = T::load8(v.as_ptr().add(t * hd + 16 * c));
            let v1 = T::load8(v.as_ptr().add(t * hd + 16 * c + 8));
            for r in 0..R {
                let p = _mm256_set1_ps(*scores.get_unchecked(r * n_ctx + t));
                acc[r][0] = _mm256_add_ps(acc[r][0], _mm256_mul_ps(p, v0));
                acc[r][1] = _mm256_add_ps(acc[r][1], _mm256_mul_ps(p, v1));
            }
        }
        for r in 0..R {
            let iv = _mm256_set1_ps(inv[r]);
            let o = out.as_mut_ptr().add(r * hd + 16 * c);
            _mm256_storeu_ps(o, _mm256_mul_ps(acc[r][0], iv));
            _mm256_storeu_ps(o.add(8), _mm256_mul_ps(acc[r][1], iv));
        }
    }
}

/// AVX-512 attention of `R` query heads sharing one KV head, head_dim = `16 * C`, over f32 K/V
/// rows `0..n_ctx`: the same arithmetic, in the same order, as `decoder::sdpa_generic`
/// (scores by [`dot_avx512`]'s lanes and tree, max, deterministic exp, 16-lane sum, `acc += p*v`
/// in slot order, `out = acc * (1/sum)`), with q and the accumulators in registers.
///
/// # Safety
/// AVX-512F available; `q.len() >= R*16*C`, `k.len(), v.len() >= n_ctx*16*C`,
/// `scores.len() >= R*n_ctx`, `out.len() >= R*16*C`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn sdpa_avx512_fixed<const C: usize, const R: usize, T: KvLoad>(
    q: &[f32],
    k: &[T],
    v: &[T],
    n_ctx: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let hd = 16 * C;
    debug_assert!(q.len() >= R * hd && k.len() >= n_ctx * hd && v.len() >= n_ctx * hd);
    debug_assert!(scores.len() >= R * n_ctx && out.len() >= R * hd);
    let mut qv = [[_mm512_setzero_ps(); C]; R];
    for r in 0..R {
        for c in 0..C {
            qv[r][c] = _mm512_loadu_ps(q.as_ptr().add(r * hd + 16 * c));
        }
    }
    // scores: heads in fours, two slots at a time through `reduce_4x2` (the same tree, about a
    // third of the shuffles and adds of one horizontal reduction per score); the remaining heads
    // (R % 4) and the last slot of an odd count one at a time
    let grouped = R / 4 * 4;
    let pairs = if grouped > 0 { n_ctx / 2 * 2 } else { 0 };
    let sc = _mm512_set1_ps(scale);
    let mut t = 0;
    while t < pairs {
        let (mut ka, mut kb) = ([_mm512_setzero_ps(); C], [_mm512_setzero_ps(); C]);
        for c in 0..C {
            ka[c] = T::load16(k.as_ptr().add(t * hd + 16 * c));
            kb[c] = T::load16(k.as_ptr().add((t + 1) * hd + 16 * c));
        }
        for r4 in 0..R / 4 {
            let (mut a, mut b) = ([_mm512_setzero_ps(); 4], [_mm512_setzero_ps(); 4]);
            for j in 0..4 {
                for c in 0..C {
                    a[j] = _mm512_add_ps(a[j], _mm512_mul_ps(qv[4 * r4 + j][c], ka[c]));
                    b[j] = _mm512_add_ps(b[j], _mm512_mul_ps(qv[4 * r4 + j][c], kb[c]));
                }
            }
            // [h0 t, h0 t+1, h1 t, h1 t+1, h2 t, h2 t+1, h3 t, h3 t+1], scaled
            let z = reduce_4x2(&a, &b, sc);
            // two floats per head row (`_mm_storel_epi64` stores 8 bytes, no alignment needed);
            // in bounds: head 4 * r4 + j < R and t + 1 < pairs <= n_ctx, scores holds R * n_ctx
            let (lo, hi) = (_mm_castps_si128(_mm256_castps256_ps128(z)), _mm_castps_si128(_mm256_extractf128_ps::<1>(z)));
            let base = scores.as_mut_ptr();
            let row = |j: usize| base.add((4 * r4 + j) * n_ctx + t) as *mut __m128i;
            _mm_storel_epi64(row(0), lo);
            _mm_storel_epi64(row(1), _mm_unpackhi_epi64(lo, lo));
            _mm_storel_epi64(row(2), hi);
            _mm_storel_epi64(row(3), _mm_unpackhi_epi64(hi, hi));
        }
        t += 2;
    }
    for t in 0..n_ctx {
        let first = if t < pairs { grouped } else { 0 };
        if first == R {
            continue;
        }
        let mut kv = [_mm512_setzero_ps(); C];
        for c in 0..C {
            kv[c] = T::load16(k.as_ptr().add(t * hd + 16 * c));
        }
        for r in first..R {
            let mut acc = _mm512_setzero_ps();
            for c in 0..C {
                acc = _mm512_add_ps(acc, _mm512_mul_ps(qv[r][c], kv[c]));
            }
            let s8 = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
            let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            *scores.get_unchecked_mut(r * n_ctx + t) = _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1))) * scale;
        }
    }
    // softmax numerators (the generic loop, vectorised by the compiler under these features)
    let mut inv = [0.0f32; R];
    for r in 0..R {
        let row = &mut scores[r * n_ctx..(r + 1) * n_ctx];
        let m = max_or_nan(row);
        for x in row.iter_mut() {
            *x = crate::moe::exp_f32(*x - m);
        }
        inv[r] = 1.0 / crate::decoder::sum_lanes(row);
    }
    // acc[r] = sum_t p[r][t] * v_t, slot order
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for t in 0..n_ctx {
        let mut vv = [_mm512_setzero_ps(); C];
        for c in 0..C {
            vv[c] = T::load16(v.as_ptr().add(t * hd + 16 * c));
        }
        for r in 0..R {
            let p = _mm512_set1_ps(*scores.get_unchecked(r * n_ctx + t));
            for c in 0..C {
                acc[r][c] = _mm512_add_ps(acc[r][c], _mm512_mul_ps(p, vv[c]));
            }
        }
    }
    for r in 0..R {
        let iv = _mm512_set1_ps(inv[r]);
        for c in 0..C {
            _mm512_storeu_ps(out.as_mut_ptr().add(r * hd + 16 * c), _mm512_mul_ps(acc[r][c], iv));
        }
    }
}

/// The maximum of `row`, NaN if any element is NaN: the value of `decoder::sdpa_generic`'s
/// scalar loop (`m = if x > m { x } else { m }`, which is `vmaxps(x, m)` lane by lane). Only
/// the sign of a zero maximum can depend on the order, and `exp_f32(x - m)` does not see it.
///
/// # Safety
/// AVX-512F available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn max_or_nan(row: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let full = row.len() / 16 * 16;
    let mut mv = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut nan: __mmask16 = 0;
    let mut i = 0;
    while i < full {
        // SAFETY: i + 16 <= row.len().
        let x = _mm512_loadu_ps(row.as_ptr().add(i));
        mv = _mm512_max_ps(x, mv);
        nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        i += 16;
    }
    let mut lanes = [0.0f32; 16];
    _mm512_storeu_ps(lanes.as_mut_ptr(), mv);
    let mut m = f32::NEG_INFINITY;
    for &x in lanes.iter().chain(&row[full..]) {
        m = if x > m { x } else { m };
        nan |= u16::from(x.is_nan());
    }
    if nan != 0 {
        f32::NAN
    } else {
        m
    }
}

/// The scores of four heads at two slots from their 16-lane accumulators (`a` at slot t, `b` at
/// t + 1), each by [`dot_avx512`]'s tree: `l + 8`, `l + 4`, `l + 2`, `l + 1`, the same additions
/// of the same operands (so the same bits), done for eight sums at once; then times `scale`.
/// Returns `[h0 t, h0 t+1, h1 t, h1 t+1, h2 t, h2 t+1, h3 t, h3 t+1]`.
///
/// # Safety
/// AVX-512F available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
#[inline]
unsafe fn reduce_4x2(
    a: &[std::arch::x86_64::__m512; 4],
    b: &[std::arch::x86_64::__m512; 4],
    scale: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // l + 8 for two heads: 128-bit chunks [x lanes 0..4, x 4..8, y 0..4, y 4..8] + [x 8..12, ...]
    let half = |x: __m512, y: __m512| _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(x, y), _mm512_shuffle_f32x4::<0xEE>(x, y));
    // l + 4: chunk h = head h's lanes 0..4 + 4..8
    let quarter = |x: __m512, y: __m512| _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(x, y), _mm512_shuffle_f32x4::<0xDD>(x, y));
    let xa = quarter(half(a[0], a[1]), half(a[2], a[3]));
    let xb = quarter(half(b[0], b[1]), half(b[2], b[3]));
    // l + 2, within each chunk: [t lanes 0, 1 | t+1 lanes 0, 1] + [t 2, 3 | t+1 2, 3]
    let y = _mm512_add_ps(_mm512_shuffle_ps::<0x44>(xa, xb), _mm512_shuffle_ps::<0xEE>(xa, xb));
    // l + 1: lane 0 (slot t) and lane 2 (slot t + 1) of each chunk
    let z = _mm512_mul_ps(_mm512_add_ps(y, _mm512_movehdup_ps(y)), scale);
    let idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_castps512_ps256(_mm512_permutexvar_ps(idx, z))
}
