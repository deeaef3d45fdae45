//! Bad inputs at the op level: each yields a typed error, or (NaN/inf activations, zero tokens) a
//! defined result that does not leak into other tokens.

use mobilemoe_fuzz_harness::gen::Rng;
use mobilemoe_ops::*;

struct Layer {
    spec: MoeSpec,
    router: Vec<f32>,
    w13: Vec<u8>,
    w13s: Vec<f32>,
    w2: Vec<u8>,
    w2s: Vec<f32>,
}

fn layer(score: ScoreFunc, exact: bool) -> Layer {
    let (d, f, e) = (64, 32, 4);
    let spec = MoeSpec {
        dim: d,
        hidden: f,
        shared_hidden: 0,
        group: 32,
        bits: WeightBits::Int4,
        router: RouterConfig { num_experts: e, top_k: 2, score_func: score, renormalize: true, route_scale: 1.0, ..Default::default() },
        exact,
        scales_out: false,
    };
    let mut r = Rng(5);
    let mut v = |n: usize| (0..n).map(|_| r.f32() * 0.2).collect::<Vec<f32>>();
    let router = v(e * d);
    let (mut w13, mut w13s, mut w2, mut w2s) = (vec![], vec![], vec![], vec![]);
    for _ in 0..e {
        let a = PackedMatrix::quantize(&v(2 * f * d), spec.w13_spec().unwrap()).unwrap();
        w13.extend(a.data);
        w13s.extend(a.scales);
        let b = PackedMatrix::quantize(&v(d * f), spec.w2_spec().unwrap()).unwrap();
        w2.extend(b.data);
        w2s.extend(b.scales);
    }
    Layer { spec, router, w13, w13s, w2, w2s }
}

impl Layer {
    fn w(&self) -> MoeWeights<'_> {
        MoeWeights {
            router_w: &self.router,
            expert_bias: None,
            w13: &self.w13,
            w13_scales: (&self.w13s).into(),
            w2: &self.w2,
            w2_scales: (&self.w2s).into(),
            shared: None,
        }
    }
    fn run(&self, spec: &MoeSpec, x: &[f32], t: usize, out_len: usize) -> Result<Vec<f32>> {
        let mut out = vec![0f32; out_len];
        moe_ffn(spec, &self.w(), x, t, &mut out, &mut MoeScratch::default(), &ThreadPool::global(), &Kernels::best()).map(|_| out)
    }
}

#[test]
fn nan_and_inf_activations_stay_in_their_token() {
    for score in [ScoreFunc::Softmax, ScoreFunc::SoftmaxAll, ScoreFunc::Sigmoid] {
        for exact in [false, true] {
            let l = layer(score, exact);
            let d = l.spec.dim;
            let mut r = Rng(8);
            let x: Vec<f32> = (0..4 * d).map(|_| r.f32()).collect();
            let clean = l.run(&l.spec, &x, 4, 4 * d).unwrap();
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX] {
                let mut xb = x.clone();
                xb[d + 3] = bad; // token 1
                let y = l.run(&l.spec, &xb, 4, 4 * d).expect("non-finite activations are not an error");
                for tok in [0, 2, 3] {
                    let (a, b) = (&y[tok * d..(tok + 1) * d], &clean[tok * d..(tok + 1) * d]);
                    assert!(a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()), "{score:?} exact={exact} {bad}: token {tok} changed");
                }
            }
        }
    }
}

#[test]
fn zero_tokens_is_ok_and_writes_nothing() {
    let l = layer(ScoreFunc::Softmax, false);
    assert_eq!(l.run(&l.spec, &[], 0, 0).unwrap(), Vec::<f32>::new());
    let spec = MatrixSpec::new(16, 64, 32, WeightBits::Int4).unwrap();
    let w = PackedMatrix::quantize(&vec![0.5; 16 * 64], spec).unwrap();
    linear(&w.as_ref(), None, &[], 0, &mut [], false, &mut LinearScratch::default(), &ThreadPool::global(), &Kernels::best()).unwrap();
}

#[test]
fn bad_attributes_are_typed_errors() {
    let l = layer(ScoreFunc::Softmax, false);
    let d = l.spec.dim;
    let x = vec![0.1f32; 2 * d];
    let mut s = l.spec;
    s.router.top_k = 5; // > 4 experts
    assert_eq!(l.run(&s, &x, 2, 2 * d), Err(OpsError::BadTopK { top_k: 5, num_experts: 4 }));
    s.router.top_k = 0;
    assert!(matches!(l.run(&s, &x, 2, 2 * d), Err(OpsError::BadTopK { .. })));
    let mut s = l.spec;
    s.router.num_experts = 5; // the weights hold 4 experts: ids 4.. would be out of range
    assert!(matches!(l.run(&s, &x, 2, 2 * d), Err(OpsError::SizeMismatch { what: "router weight", .. })));
    let mut s = l.spec;
    s.router.route_scale = f32::NAN;
    assert!(matches!(l.run(&s, &x, 2, 2 * d), Err(OpsError::Invalid(_))));
    let mut s = l.spec;
    s.group = 48;
    assert_eq!(l.run(&s, &x, 2, 2 * d), Err(OpsError::BadGroupSize { group: 48 }));
    let mut s = l.spec;
    s.hidden = usize::MAX / 2 + 1; // 2 * hidden overflows
    assert!(l.run(&s, &x, 2, 2 * d).is_err());
    let mut s = l.spec;
    s.dim = usize::MAX / 16; // huge claimed size
    assert!(l.run(&s, &x, 2, 2 * d).is_err());
}

#[test]
fn shapes_disagreeing_with_buffers_are_typed_errors() {
    let l = layer(ScoreFunc::Sigmoid, false);
    let d = l.spec.dim;
    let x = vec![0.1f32; 3 * d];
    // token count vs input length, output length, huge token count
    assert!(matches!(l.run(&l.spec, &x, 2, 2 * d), Err(OpsError::SizeMismatch { .. })));
    assert!(matches!(l.run(&l.spec, &x, 3, 3 * d - 1), Err(OpsError::SizeMismatch { .. })));
    assert!(matches!(l.run(&l.spec, &x, usize::MAX / 8, 3 * d), Err(OpsError::Overflow { .. } | OpsError::SizeMismatch { .. })));
    // truncated weights
    let mut w = l.w();
    w.w13 = &l.w13[..l.w13.len() - 1];
    let mut out = vec![0f32; 3 * d];
    let r = moe_ffn(&l.spec, &w, &x, 3, &mut out, &mut MoeScratch::default(), &ThreadPool::global(), &Kernels::best());
    assert!(matches!(r, Err(OpsError::SizeMismatch { what: "w13 data", .. })));
    // PackedRef / MatrixSpec
    let spec = MatrixSpec::new(16, 64, 32, WeightBits::Int4).unwrap();
    assert!(PackedRef::new(spec, &[0u8; 511], &[0f32; 32]).is_err());
    assert!(PackedRef::new(spec, &[0u8; 512], &[0f32; 31]).is_err());
    assert!(MatrixSpec::new(usize::MAX, 256, 32, WeightBits::Int8).is_err());
    assert!(MatrixSpec::new(16, usize::MAX - 31, 32, WeightBits::Int8).is_err());
    assert!(MatrixSpec::new(0, 64, 32, WeightBits::Int4).is_err());
}

/// Regression (found while writing the ops_linear harness's unchecked-spec mode): `MatrixSpec` has
/// public fields; a hand-built spec with group 0 or overflowing sizes made `linear` and
/// `Kernels::gemm_*` panic (divide by zero / overflow) or compare wrapped sizes.
#[test]
fn hand_built_specs_are_rejected_not_panics() {
    let pool = ThreadPool::new(1);
    for ks in Kernels::available() {
        for (n, k, g) in
            [(16usize, 64usize, 0usize), (16, 64, 48), (usize::MAX, 64, 32), (16, usize::MAX - 31, 32), ((1 << 60) + 16, 64, 32)]
        {
            let spec = MatrixSpec { n, k, group: g, bits: WeightBits::Int4 };
            let w = PackedRef { spec, data: &[0u8; 512], scales: mobilemoe_ops::ScaleRef::F32(&[0f32; 32]) };
            let mut out = vec![0f32; 16];
            let r = linear(&w, None, &[0f32; 64], 1, &mut out, false, &mut LinearScratch::default(), &pool, &ks);
            assert!(r.is_err(), "{n} {k} {g}");
            assert!(!ks.gemm_f32(&w, 0..1, &[0f32; 64], 1, &mut out, 16));
        }
    }
}
