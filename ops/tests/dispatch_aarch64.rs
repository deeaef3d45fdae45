//! AArch64 dispatch and kernel equivalence (runs under qemu-user via scripts/test_aarch64.sh).
//!
//! - `best_kernel_matches_cpu`: `Kernels::best()` picks the kernel the CPU model implies. The
//!   script sets `MOBILEMOE_EXPECT_KERNEL=neon|neon-dotprod|neon-i8mm` per `qemu-aarch64 -cpu`
//!   (cortex-a53: neither dotprod nor i8mm; cortex-a76: dotprod; max: dotprod + i8mm). Without
//!   the variable the test only checks internal consistency.
//! - `every_kernel_equals_scalar`: each available kernel equals the scalar reference bit for bit
//!   on random shapes (INT4/INT8, groups 32..256, any m, partial last tile, tile sub-ranges),
//!   both paths, and leaves columns outside its tiles untouched.
#![cfg(target_arch = "aarch64")]

use mobilemoe_ops::act::QuantActs;
use mobilemoe_ops::kernels::{KernelKind, Kernels};
use mobilemoe_ops::testing::Rng;
use mobilemoe_ops::*;
use proptest::prelude::*;

#[test]
fn best_kernel_matches_cpu() {
    let names: Vec<&str> = Kernels::available().iter().map(|k| k.kind.name()).collect();
    eprintln!("available kernels: {names:?}");
    assert!(KernelKind::Neon.supported(), "NEON is mandatory on aarch64");
    assert!(!KernelKind::Avx2.supported() && !KernelKind::Avx512Vnni.supported());
    // i8mm implies dotprod in our support predicate.
    if KernelKind::NeonI8mm.supported() {
        assert!(KernelKind::NeonDotprod.supported());
    }
    let override_set = std::env::var("MOBILEMOE_KERNEL").is_ok();
    let best = Kernels::best().kind;
    // best() is the last available kernel set, except that neon-i8mm is not preferred over
    // neon-dotprod (it executes more instructions: docs/aarch64.md).
    let preferred = names.iter().rev().find(|&&n| n != "neon-i8mm").copied();
    if !override_set {
        assert_eq!(Some(best.name()), preferred, "best() is the last available kernel set but i8mm");
    }
    match std::env::var("MOBILEMOE_EXPECT_KERNEL") {
        Ok(expect) => {
            assert!(!override_set, "unset MOBILEMOE_KERNEL when checking MOBILEMOE_EXPECT_KERNEL");
            let want_best = if expect == "neon-i8mm" { "neon-dotprod" } else { expect.as_str() };
            assert_eq!(best.name(), want_best, "Kernels::best() on this CPU (available: {names:?})");
            let want: &[&str] = match expect.as_str() {
                "neon" => &["scalar", "neon"],
                "neon-dotprod" => &["scalar", "neon", "neon-dotprod"],
                "neon-i8mm" => &["scalar", "neon", "neon-dotprod", "neon-i8mm"],
                other => panic!("unknown MOBILEMOE_EXPECT_KERNEL={other}"),
            };
            assert_eq!(names, want);
        }
        Err(_) => eprintln!("MOBILEMOE_EXPECT_KERNEL not set: best() = {}", best.name()),
    }
}

const SENTINEL: f32 = -7.25e30;

#[allow(clippy::too_many_arguments)]
fn check_case(n: usize, kg: usize, group: usize, int8: bool, m: usize, tlo: usize, thi: usize, seed: u64, extra_ld: usize) {
    let bits = if int8 { WeightBits::Int8 } else { WeightBits::Int4 };
    let k = kg * group;
    let spec = MatrixSpec::new(n, k, group, bits).unwrap();
    let mut r = Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
    // Raw random packed bytes: every byte is a valid INT4 pair / INT8 value (incl. -128).
    let data: Vec<u8> = (0..spec.data_bytes()).map(|_| r.next_u64() as u8).collect();
    let scales: Vec<f32> = (0..spec.scale_count()).map(|_| r.f() * 0.05).collect();
    let w = PackedRef::new(spec, &data, &scales).unwrap();
    // Activations with a wide dynamic range, including exact +-max (saturating lanes).
    let x: Vec<f32> = (0..m * k)
        .map(|i| match r.next_u64() % 16 {
            0 => 0.0,
            1 => {
                if i % 2 == 0 {
                    100.0
                } else {
                    -100.0
                }
            }
            _ => r.f() * 3.0,
        })
        .collect();
    let mut qa = QuantActs::default();
    qa.quantize(&x, m, k, group).unwrap();
    let a = qa.as_ref();
    let tiles = spec.tiles();
    let (t0, t1) = (tlo.min(tiles), thi.min(tiles));
    let (t0, t1) = (t0.min(t1), t0.max(t1));
    let ldo = n + extra_ld;
    let scalar = Kernels::get(KernelKind::Scalar).unwrap();
    let mut want_q = vec![SENTINEL; m * ldo];
    let mut want_f = vec![SENTINEL; m * ldo];
    assert!(scalar.gemm_q8(&w, t0..t1, &a, &mut want_q, ldo));
    assert!(scalar.gemm_f32(&w, t0..t1, &x, m, &mut want_f, ldo));
    for ks in Kernels::available() {
        let mut got_q = vec![SENTINEL; m * ldo];
        let mut got_f = vec![SENTINEL; m * ldo];
        assert!(ks.gemm_q8(&w, t0..t1, &a, &mut got_q, ldo));
        assert!(ks.gemm_f32(&w, t0..t1, &x, m, &mut got_f, ldo));
        for (path, got, want) in [("q8", &got_q, &want_q), ("f32", &got_f, &want_f)] {
            for i in 0..got.len() {
                assert_eq!(
                    got[i].to_bits(),
                    want[i].to_bits(),
                    "{} {path}: n={n} k={k} G={group} {bits:?} m={m} tiles={t0}..{t1} ldo={ldo}: row {} col {}: {} vs {}",
                    ks.kind.name(),
                    i / ldo,
                    i % ldo,
                    got[i],
                    want[i]
                );
            }
        }
    }
}

#[test]
fn fixed_shapes_equal_scalar() {
    // The S-layer shapes (small m), every group size, both widths, odd m for the smmla tail.
    for &(n, kg, group) in &[(1024usize, 4usize, 256usize), (40, 8, 32), (17, 2, 64), (33, 1, 128)] {
        for int8 in [false, true] {
            for m in [1usize, 2, 3, 4, 5, 7, 9] {
                check_case(n, kg, group, int8, m, 0, usize::MAX, (n * 31 + m) as u64, 3);
            }
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), .. ProptestConfig::default() })]
    #[test]
    fn every_kernel_equals_scalar(
        n in 1usize..70, kg in 1usize..4, g_idx in 0usize..4, int8 in any::<bool>(), m in 0usize..11,
        tlo in 0usize..5, thi in 0usize..6, seed in any::<u64>(), extra_ld in 0usize..5,
    ) {
        let group = [32, 64, 128, 256][g_idx];
        check_case(n, kg, group, int8, m, tlo, thi, seed, extra_ld);
    }
}
