//! Per-group scales stored as f16 or bf16 (torchao's `scales_precision`): every kernel widens them
//! exactly, so a matrix with f16/bf16 scales gives bit for bit what the same matrix with those
//! values as f32 gives, on every kernel set this CPU (or qemu) runs, and the MoE layer likewise.
mod common;
use common::{Layer, Rng};
use mobilemoe_ops::act::QuantActs;
use mobilemoe_ops::kernels::Kernels;
use mobilemoe_ops::quant::{pack, quantize_rows_as, MatrixSpec, OwnedScales, PackedRef, ScaleRef, ScaleType, WeightBits};
use mobilemoe_ops::{moe_ffn, MoeScratch, MoeSpec, MoeWeights, RouterConfig, ScoreFunc, ThreadPool};

const TYPES: [ScaleType; 2] = [ScaleType::F16, ScaleType::Bf16];

fn bits_eq(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

#[test]
fn quantized_scales_are_exact_in_their_type_and_round_trip() {
    let mut r = Rng(7);
    let spec = MatrixSpec::new(37, 128, 32, WeightBits::Int4).unwrap();
    let w = r.vec(spec.n * spec.k, 0.05);
    for t in TYPES {
        let (q, s) = quantize_rows_as(&w, spec, t).unwrap();
        assert!(s.iter().all(|&v| t.round(v) == v), "{}: scales not representable", t.name());
        // q = round(w * round_t(1 / s)), clamped (torchao's formula with the reciprocal in the type).
        for (i, &wv) in w.iter().enumerate() {
            let sc = s[(i / spec.k) * spec.groups() + (i % spec.k) / spec.group];
            let want = (wv * t.round(1.0 / sc)).round_ties_even().clamp(-8.0, 7.0) as i8;
            assert_eq!(q[i], want, "{}: q[{i}]", t.name());
        }
        let m = pack(&q, &s, spec).unwrap();
        let owned = OwnedScales::from_f32(t, &m.scales);
        assert_eq!(owned.as_ref().scale_type(), t);
        assert_eq!(owned.as_ref().to_f32_vec(), m.scales, "{}: widening is exact", t.name());
        // the copy a delegate makes of scales that are misaligned in its blob: the same values
        let mut le = vec![0u8]; // one byte in front: decoded from an odd address
        for i in 0..m.scales.len() {
            match t {
                ScaleType::F16 => le.extend(half::f16::from_f32(m.scales[i]).to_bits().to_le_bytes()),
                _ => le.extend(half::bf16::from_f32(m.scales[i]).to_bits().to_le_bytes()),
            }
        }
        assert_eq!(OwnedScales::from_le_bytes(t, &le[1..]), owned, "{}: decoded from bytes", t.name());
    }
}

#[test]
fn every_kernel_reads_f16_and_bf16_scales_exactly() {
    let mut r = Rng(11);
    let mut checked = 0;
    for bits in [WeightBits::Int4, WeightBits::Int8] {
        for group in [32, 64, 128] {
            for t in TYPES {
                let (n, k, m) = (53, group * 3, 5);
                let spec = MatrixSpec::new(n, k, group, bits).unwrap();
                let (q, s) = quantize_rows_as(&r.vec(n * k, 0.1), spec, t).unwrap();
                let wide = pack(&q, &s, spec).unwrap();
                let narrow = OwnedScales::from_f32(t, &wide.scales);
                let w_narrow = PackedRef::new(spec, &wide.data, narrow.as_ref()).unwrap();
                let w_wide = wide.as_ref();
                let x = r.vec(m * k, 2.0);
                let mut qa = QuantActs::default();
                qa.quantize(&x, m, k, group).unwrap();
                for ks in Kernels::available() {
                    for exact in [false, true] {
                        let run = |w: &PackedRef<'_>| {
                            let mut out = vec![0f32; m * n];
                            let ok = if exact {
                                ks.gemm_f32(w, 0..spec.tiles(), &x, m, &mut out, n)
                            } else {
                                ks.gemm_q8(w, 0..spec.tiles(), &qa.as_ref(), &mut out, n)
                            };
                            assert!(ok, "{} rejected the call", ks.kind.name());
                            out
                        };
                        let (a, b) = (run(&w_narrow), run(&w_wide));
                        assert!(
                            bits_eq(&a, &b),
                            "{} {} scales, {bits:?} g{group} exact={exact}: differs from f32 scales",
                            ks.kind.name(),
                            t.name()
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked >= 2 * 3 * 2 * 2, "no kernel checked");
}

#[test]
fn moe_layer_with_f16_scales_equals_f32_scales() {
    let spec = MoeSpec {
        dim: 64,
        hidden: 32,
        shared_hidden: 64,
        group: 32,
        bits: WeightBits::Int4,
        router: RouterConfig {
            num_experts: 6,
            top_k: 2,
            score_func: ScoreFunc::Sigmoid,
            renormalize: true,
            route_scale: 1.0,
            ..Default::default()
        },
        exact: false,
        scales_out: false,
    };
    let layer = Layer::random(spec, 5, true, true);
    let pool = ThreadPool::new(2);
    let x = Rng(3).vec(7 * spec.dim, 1.0);
    for t in TYPES {
        let wide = layer.weights();
        // The layer's f32 scales rounded to the type: the f32 run below uses the same values.
        let round = |s: ScaleRef<'_>| s.to_f32_vec().iter().map(|&v| t.round(v)).collect::<Vec<f32>>();
        let (s13, s2) = (round(wide.w13_scales), round(wide.w2_scales));
        let (n13, n2) = (OwnedScales::from_f32(t, &s13), OwnedScales::from_f32(t, &s2));
        for ks in Kernels::available() {
            let run = |w: &MoeWeights<'_>| {
                let mut out = vec![0f32; x.len()];
                moe_ffn(&spec, w, &x, 7, &mut out, &mut MoeScratch::default(), &pool, &ks).unwrap();
                out
            };
            let narrow_w = MoeWeights { w13_scales: n13.as_ref(), w2_scales: n2.as_ref(), ..wide };
            let wide_w = MoeWeights { w13_scales: ScaleRef::F32(&s13), w2_scales: ScaleRef::F32(&s2), ..wide };
            assert!(bits_eq(&run(&narrow_w), &run(&wide_w)), "{} {}: MoE layer differs", ks.kind.name(), t.name());
        }
    }
}
