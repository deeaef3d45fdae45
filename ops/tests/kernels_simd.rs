//! Every SIMD kernel this CPU supports equals the scalar reference bit for bit (docs/DESIGN.md
//! section 3), on random shapes, tile sub-ranges, partial tiles, every group size and width.
mod common;
use common::Rng;
use mobilemoe_ops::act::{QuantActs, QuantActsRef};
use mobilemoe_ops::kernels::{KernelKind, Kernels};
use mobilemoe_ops::quant::{pack, MatrixSpec, PackedMatrix, WeightBits};
use proptest::prelude::*;
use std::ops::Range;

const SENTINEL: f32 = -12345.5;

/// Every SIMD kernel set this CPU has. None is a failure, not a vacuous pass: every test that
/// compares SIMD with scalar would then compare nothing (x86-64 without AVX2+FMA; on aarch64 NEON
/// is mandatory).
fn simd_kernels() -> Vec<Kernels> {
    let simd: Vec<Kernels> = Kernels::available().into_iter().filter(|k| k.kind != KernelKind::Scalar).collect();
    assert!(!simd.is_empty(), "no SIMD kernel set on this {} host: the SIMD-vs-scalar tests would check nothing", std::env::consts::ARCH);
    simd
}

fn scalar() -> Kernels {
    Kernels::get(KernelKind::Scalar).unwrap()
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Runs `f` for the scalar kernel and every SIMD kernel into sentinel-filled buffers with row
/// stride `ldo`, and checks equality (including untouched columns).
fn check_all(name: &str, m: usize, ldo: usize, mut f: impl FnMut(&Kernels, &mut [f32], usize) -> bool) -> Result<(), TestCaseError> {
    let len = if m == 0 { 0 } else { (m - 1) * ldo + ldo };
    let mut want = vec![SENTINEL; len];
    prop_assert!(f(&scalar(), &mut want, ldo), "scalar call rejected");
    for ks in simd_kernels() {
        let mut got = vec![SENTINEL; len];
        prop_assert!(f(&ks, &mut got, ldo), "{} call rejected", ks.kind.name());
        for (idx, (a, b)) in got.iter().zip(&want).enumerate() {
            prop_assert!(
                same(*a, *b),
                "{name}: kernel {} differs at row {} col {}: {a} ({:#x}) vs scalar {b} ({:#x})",
                ks.kind.name(),
                idx / ldo,
                idx % ldo,
                a.to_bits(),
                b.to_bits()
            );
        }
    }
    Ok(())
}

fn random_matrix(r: &mut Rng, spec: MatrixSpec, wscale: f32) -> PackedMatrix {
    PackedMatrix::quantize(&r.vec(spec.n * spec.k, wscale), spec).unwrap()
}

fn tile_range(spec: &MatrixSpec, a: usize, b: usize) -> Range<usize> {
    let t = spec.tiles();
    let (x, y) = (a % (t + 1), b % (t + 1));
    x.min(y)..x.max(y)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn q8_equals_scalar(
        m in 1usize..300, n in 1usize..80, kmul in 1usize..5, g_idx in 0usize..4, int8 in any::<bool>(),
        full in any::<bool>(), ta in 0usize..8, tb in 0usize..8, pad in 0usize..3, seed in any::<u64>(),
    ) {
        let group = [32, 64, 128, 256][g_idx];
        let k = group * kmul;
        // Keep the scalar reference cheap: cap m * n * k.
        let m = m.min((6_000_000 / (n * k)).max(1));
        let bits = if int8 { WeightBits::Int8 } else { WeightBits::Int4 };
        let spec = MatrixSpec::new(n, k, group, bits).unwrap();
        let mut r = Rng(seed | 1);
        let w = random_matrix(&mut r, spec, 0.1);
        let mut x = r.vec(m * k, 2.0);
        // Rows with outliers, all zero, all >= 0 (zp = -128), all <= 0 (zp = 127), a NaN and an
        // infinity (scale NaN: the row's outputs are NaN), a tiny range (scale clamped at eps).
        if m > 2 { x[k] = 100.0; for v in &mut x[2 * k..3 * k] { *v = 0.0; } }
        if m > 3 { for v in &mut x[3 * k..4 * k] { *v = v.abs(); } }
        if m > 4 { for v in &mut x[4 * k..5 * k] { *v = -v.abs(); } }
        if m > 5 { x[5 * k + 1] = f32::NAN; }
        if m > 6 { x[6 * k] = f32::NEG_INFINITY; }
        if m > 7 { for v in &mut x[7 * k..8 * k] { *v *= 1e-9; } }
        let mut qa = QuantActs::default();
        qa.quantize(&x, m, k, group).unwrap();
        let tiles = if full { 0..spec.tiles() } else { tile_range(&spec, ta, tb) };
        let ldo = n + pad;
        check_all("q8", m, ldo, |ks, out, ldo| ks.gemm_q8(&w.as_ref(), tiles.clone(), &qa.as_ref(), out, ldo))?;
    }

    #[test]
    fn f32_equals_scalar(
        m in 1usize..300, n in 1usize..80, kmul in 1usize..5, g_idx in 0usize..4, int8 in any::<bool>(),
        full in any::<bool>(), ta in 0usize..8, tb in 0usize..8, pad in 0usize..3, specials in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let group = [32, 64, 128, 256][g_idx];
        let k = group * kmul;
        let m = m.min((4_000_000 / (n * k)).max(1));
        let bits = if int8 { WeightBits::Int8 } else { WeightBits::Int4 };
        let spec = MatrixSpec::new(n, k, group, bits).unwrap();
        let mut r = Rng(seed | 1);
        let w = random_matrix(&mut r, spec, 0.1);
        let mut x = r.vec(m * k, 3.0);
        if specials {
            for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, -0.0, 1e-40] {
                let idx = (r.next_u64() as usize) % x.len();
                x[idx] = v;
            }
        }
        let tiles = if full { 0..spec.tiles() } else { tile_range(&spec, ta, tb) };
        let ldo = n + pad;
        check_all("f32", m, ldo, |ks, out, ldo| ks.gemm_f32(&w.as_ref(), tiles.clone(), &x, m, out, ldo))?;
    }
}

/// Extreme integer values: every weight at qmin or qmax, every activation at -128 or 127, zero
/// points at -128 and 127 (|qa - zp| = 255), the largest group. Exercises the i16 saturation
/// limits of vpmaddubsw / smlal, the 2^24 exactness bound and the offset corrections.
#[test]
fn extremes_are_exact() {
    for bits in [WeightBits::Int4, WeightBits::Int8] {
        for group in [32, 64, 128, 256] {
            for pattern in 0..4 {
                let (n, k, m) = (40, 2 * group, 11);
                let spec = MatrixSpec::new(n, k, group, bits).unwrap();
                let q: Vec<i8> = (0..n * k)
                    .map(|i| {
                        let hi = match pattern {
                            0 => true,
                            1 => false,
                            2 => i % 2 == 0,
                            _ => (i / k) % 2 == 0,
                        };
                        (if hi { bits.qmax() } else { bits.qmin() }) as i8
                    })
                    .collect();
                let scales: Vec<f32> = (0..n * (k / group)).map(|i| 0.01 + i as f32 * 1e-4).collect();
                let w = pack(&q, &scales, spec).unwrap();
                let qv: Vec<i8> = (0..m * k)
                    .map(|i| match (pattern + i / k) % 3 {
                        0 => -128,
                        1 => 127,
                        _ => {
                            if i % 2 == 0 {
                                127
                            } else {
                                -128
                            }
                        }
                    })
                    .collect();
                // Zero points at both ends of the range (|qa - zp| up to 255) and in between.
                let zp: Vec<i32> = (0..m as i32).map(|i| [127, -128, 0, 5, -77][(i as usize + pattern) % 5]).collect();
                let ng = k / group;
                let gsum: Vec<i32> =
                    (0..m * ng).map(|j| qv[j * group..(j + 1) * group].iter().map(|&v| v as i32 - zp[j / ng]).sum()).collect();
                let scale: Vec<f32> = (0..m).map(|i| 0.5 + i as f32).collect();
                let a = QuantActsRef { m, k, group, q: &qv, scale: &scale, zp: &zp, gsum: &gsum };
                let mut want = vec![0f32; m * n];
                assert!(scalar().gemm_q8(&w.as_ref(), 0..spec.tiles(), &a, &mut want, n));
                for ks in simd_kernels() {
                    let mut got = vec![0f32; m * n];
                    assert!(ks.gemm_q8(&w.as_ref(), 0..spec.tiles(), &a, &mut got, n));
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(g.to_bits(), e.to_bits(), "{} {bits:?} G={group} p={pattern} idx {i}", ks.kind.name());
                    }
                }
            }
        }
    }
}

/// Paths the random cases may miss: one token with zp = -128 (a non-negative row) and with other
/// zero points (decode), token counts around the block sizes (the per-tile weight row sums stored
/// by the first block and reused), and weight scales below 2^-122 (where 1/16 of a scale is not
/// exact, so the INT4 high lanes are shifted instead of folding 1/16 into the scales).
#[test]
fn q8_zero_point_and_scale_edge_paths() {
    let mut r = Rng(99);
    for bits in [WeightBits::Int4, WeightBits::Int8] {
        for group in [32, 128] {
            let (n, k) = (40, 2 * group);
            let spec = MatrixSpec::new(n, k, group, bits).unwrap();
            let q: Vec<i8> = (0..n * k).map(|_| (r.next_u64() % 16) as i8 - 8).collect();
            let scales: Vec<f32> = (0..n * (k / group))
                .map(|i| match i % 5 {
                    0 => 1e-38,
                    1 => f32::MIN_POSITIVE,
                    2 => 3e-37,
                    _ => 0.01 + r.f().abs(),
                })
                .collect();
            let w = pack(&q, &scales, spec).unwrap();
            for m in [1usize, 2, 3, 5, 8, 9, 16, 17, 33] {
                for pattern in 0..4 {
                    let mut x = r.vec(m * k, 1.0);
                    for (i, row) in x.chunks_mut(k).enumerate() {
                        match (i + pattern) % 4 {
                            0 => row.iter_mut().for_each(|v| *v = v.abs()),  // zp = -128
                            1 => row.iter_mut().for_each(|v| *v = -v.abs()), // zp = 127
                            2 => row[0] = 50.0,
                            _ => {}
                        }
                    }
                    let mut qa = QuantActs::default();
                    qa.quantize(&x, m, k, group).unwrap();
                    if m == 1 {
                        assert!(pattern != 0 || qa.zp[0] == -128);
                    }
                    let mut want = vec![SENTINEL; m * n];
                    assert!(scalar().gemm_q8(&w.as_ref(), 0..spec.tiles(), &qa.as_ref(), &mut want, n));
                    for ks in simd_kernels() {
                        let mut got = vec![SENTINEL; m * n];
                        assert!(ks.gemm_q8(&w.as_ref(), 0..spec.tiles(), &qa.as_ref(), &mut got, n));
                        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                            assert!(same(*a, *b), "{} {bits:?} G={group} m={m} p={pattern} idx {i}: {a} vs {b}", ks.kind.name());
                        }
                    }
                }
            }
        }
    }
}

/// Contract violations are rejected by every kernel set (nothing written).
#[test]
fn contract_violations_rejected() {
    let spec = MatrixSpec::new(20, 64, 32, WeightBits::Int4).unwrap();
    let mut r = Rng(7);
    let w = random_matrix(&mut r, spec, 0.1);
    let x = r.vec(3 * 64, 1.0);
    let mut qa = QuantActs::default();
    qa.quantize(&x, 3, 64, 32).unwrap();
    for ks in Kernels::available() {
        let mut small = vec![SENTINEL; 2 * 20];
        assert!(!ks.gemm_q8(&w.as_ref(), 0..2, &qa.as_ref(), &mut small, 20));
        assert!(!ks.gemm_f32(&w.as_ref(), 0..2, &x, 3, &mut small, 20));
        let mut buf = vec![SENTINEL; 3 * 20];
        assert!(!ks.gemm_q8(&w.as_ref(), 0..3, &qa.as_ref(), &mut buf, 20));
        assert!(buf.iter().all(|&v| v == SENTINEL));
    }
}

/// The dispatcher picks the widest ISA the CPU has (or the `MOBILEMOE_KERNEL` override when the
/// CPU supports it), and each kernel set is offered exactly when the CPU has its features.
#[test]
fn best_is_widest_supported() {
    let best = Kernels::best().kind;
    let overridden = std::env::var("MOBILEMOE_KERNEL").ok().and_then(|n| KernelKind::from_name(&n)).filter(|k| k.supported());
    let expected;
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let vnni = avx2
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni");
        assert_eq!(KernelKind::Avx2.supported(), avx2);
        assert_eq!(KernelKind::Avx512Vnni.supported(), vnni);
        expected = if vnni {
            KernelKind::Avx512Vnni
        } else if avx2 {
            KernelKind::Avx2
        } else {
            KernelKind::Scalar
        };
    }
    #[cfg(target_arch = "aarch64")]
    {
        // NEON is mandatory; i8mm is offered only with dotprod, and best() prefers sdot over
        // smmla (fewer instructions, docs/aarch64.md).
        let dot = std::arch::is_aarch64_feature_detected!("dotprod");
        assert!(KernelKind::Neon.supported(), "NEON is mandatory on aarch64");
        assert_eq!(KernelKind::NeonDotprod.supported(), dot);
        assert_eq!(KernelKind::NeonI8mm.supported(), dot && std::arch::is_aarch64_feature_detected!("i8mm"));
        expected = if dot { KernelKind::NeonDotprod } else { KernelKind::Neon };
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        expected = KernelKind::Scalar;
    }
    assert_eq!(best, overridden.unwrap_or(expected), "Kernels::best() (MOBILEMOE_KERNEL override: {overridden:?})");
}

/// The libm-free rounding used by activation quantization equals round-half-even on its domain
/// (|v| < 2^22: ties, near-ties, subnormals, zeros).
#[test]
fn round_small_matches_round_half_even() {
    use mobilemoe_ops::act::round_small;
    use mobilemoe_ops::quant::round_half_even;
    let mut vals: Vec<f32> = vec![0.0, -0.0, 1e-40, -1e-40, 4_194_303.5, -4_194_303.5, 2_097_152.5];
    for i in -600i32..=600 {
        vals.push(i as f32 * 0.5);
        vals.push(i as f32 * 0.5 + f32::EPSILON);
        vals.push(f32::from_bits((i as f32 * 0.5).to_bits().wrapping_sub(1)));
        vals.push(f32::from_bits((i as f32 * 0.5).to_bits().wrapping_add(1)));
    }
    let mut r = Rng(3);
    for _ in 0..200_000 {
        vals.push(r.f() * 300.0);
        vals.push(r.f() * 4_000_000.0);
    }
    for v in vals.into_iter().filter(|v| !v.is_nan()) {
        // `==`: the sign of a zero result may differ (irrelevant after the integer conversion).
        assert_eq!(round_small(v), round_half_even(v), "v = {v:e} ({:#x})", v.to_bits());
    }
}

/// Prefill-sized fused MoE (row-parallel SwiGLU/requantize, multi-block token tiles, partial
/// tiles) equals the naive reference bit for bit on every kernel, Q8 and exact.
#[test]
fn fused_prefill_equals_naive() {
    use mobilemoe_ops::*;
    for (exact, bits, group) in [(false, WeightBits::Int4, 32), (false, WeightBits::Int8, 64), (true, WeightBits::Int4, 32)] {
        let spec = MoeSpec {
            dim: 2 * group,
            hidden: 72.max(group) / group * group + group, // not a multiple of 16 rows for some groups
            shared_hidden: 2 * group,
            group,
            bits,
            router: RouterConfig {
                num_experts: 6,
                top_k: 3,
                score_func: ScoreFunc::Sigmoid,
                renormalize: true,
                route_scale: 1.0,
                ..Default::default()
            },
            exact,
            scales_out: false,
        };
        let layer = common::Layer::random(spec, 11, true, true);
        let w = layer.weights();
        let t = 300;
        let mut r = Rng(5);
        let x = r.vec(t * spec.dim, 1.0);
        let want = reference::moe_ffn_naive(&spec, &w, &x, t);
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads);
            for ks in Kernels::available() {
                let mut out = vec![f32::NAN; t * spec.dim];
                let mut s = MoeScratch::default();
                moe_ffn(&spec, &w, &x, t, &mut out, &mut s, &pool, &ks).unwrap();
                for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{} threads={threads} exact={exact} idx {i}", ks.kind.name());
                }
            }
        }
    }
}

/// The deterministic exp behind SiLU is accurate (<= 2 ulp vs f64 on the normal range), and the
/// vectorised SwiGLU equals the scalar `silu` per element, special values included.
#[test]
fn exp_and_swiglu() {
    use mobilemoe_ops::moe::{exp_f32, silu, swiglu_rows};
    let mut worst = 0u32;
    let mut x = -87.3f32;
    while x < 88.7 {
        let got = exp_f32(x);
        let want = (x as f64).exp() as f32;
        let ulp = (got.to_bits() as i64 - want.to_bits() as i64).unsigned_abs() as u32;
        worst = worst.max(ulp);
        x += 0.000_37;
    }
    assert!(worst <= 2, "exp_f32 worst error {worst} ulp");
    assert_eq!(exp_f32(0.0), 1.0);
    assert_eq!(exp_f32(100.0), f32::INFINITY);
    assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
    assert_eq!(exp_f32(-100.0), 0.0);
    assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
    assert!(exp_f32(f32::NAN).is_nan());
    let mut r = Rng(9);
    let f = 333;
    let mut h: Vec<f32> = (0..4 * 2 * f).map(|_| r.f() * 20.0).collect();
    for (i, v) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 88.8, -88.8, 1e-40, 87.4, -87.4].into_iter().enumerate() {
        h[i * 7] = v;
        h[f + i * 5] = v;
    }
    let mut act = vec![0f32; 4 * f];
    swiglu_rows(&h, f, &mut act);
    for p in 0..4 {
        for j in 0..f {
            let want = silu(h[p * 2 * f + j]) * h[p * 2 * f + f + j];
            let got = act[p * f + j];
            assert!(same(got, want), "row {p} col {j}: {got} vs {want}");
        }
    }
}

/// The vectorised activation quantizer equals the straightforward definition (docs/DESIGN.md
/// section 3: torchao's per-token asymmetric int8), non-finite inputs included.
#[test]
fn quantize_row_matches_definition() {
    use mobilemoe_ops::act::quantize_row;
    use mobilemoe_ops::quant::round_half_even;
    let mut r = Rng(77);
    for case in 0..600 {
        let group = [32, 64, 128, 256][case % 4];
        let k = group * (1 + case % 5);
        let scale = [1e-30f32, 1e-3, 1.0, 1e3, 1e30, 3e38][case % 6];
        let mut x: Vec<f32> = (0..k).map(|_| r.f() * scale).collect();
        match case % 11 {
            0 => x.iter_mut().for_each(|v| *v = v.abs()),
            1 => x.iter_mut().for_each(|v| *v = -v.abs()),
            2 => x.iter_mut().for_each(|v| *v = 0.0),
            3 => x.iter_mut().for_each(|v| *v = 1.0 + *v * 1e-7),
            _ => {}
        }
        let nonfinite = case % 3 == 0 && case % 11 != 2;
        if nonfinite {
            let v = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][case % 9 / 3];
            let i = (r.next_u64() as usize) % k;
            x[i] = v;
        }
        if case % 13 == 0 {
            let i = (r.next_u64() as usize) % k;
            x[i] = [-0.0, 1e-45, -1e-45][case % 3];
        }
        let (mut q, mut sc, mut zp, mut gs) = (vec![0i8; k], 0f32, 0i32, vec![0i32; k / group]);
        quantize_row(&x, group, &mut q, &mut sc, &mut zp, &mut gs);
        if nonfinite {
            assert!(sc.is_nan() && zp == 0 && q.iter().all(|&v| v == 0) && gs.iter().all(|&v| v == 0), "case {case}");
            continue;
        }
        // torchao: choose_qparams_affine(ASYMMETRIC, eps = f32::EPSILON) + quantize_affine.
        let mn = x.iter().fold(0f32, |m, &v| m.min(v));
        let mx = x.iter().fold(0f32, |m, &v| m.max(v));
        let s = ((mx - mn) / 255.0).max(f32::EPSILON);
        let z = (-128.0 - round_half_even(mn / s)).clamp(-128.0, 127.0);
        let inv = 1.0 / s;
        let want: Vec<i8> = x.iter().map(|&v| (round_half_even(v * inv) + z).clamp(-128.0, 127.0) as i8).collect();
        assert_eq!(sc.to_bits(), s.to_bits(), "case {case}");
        assert_eq!(zp, z as i32, "case {case}");
        assert_eq!(q, want, "case {case}");
        for (g, &v) in gs.iter().enumerate() {
            assert_eq!(v, want[g * group..(g + 1) * group].iter().map(|&v| v as i32 - zp).sum::<i32>());
        }
    }
}
