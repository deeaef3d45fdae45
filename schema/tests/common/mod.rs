//! Shared helpers: random layer weights and a valid two-node blob.
#![allow(dead_code)]

use mobilemoe_ops::{MatrixSpec, MoeSpec, OwnedScales, PackedMatrix, PackedRef, RouterConfig, ScaleRef, ScaleType, ScoreFunc, WeightBits};
use mobilemoe_schema::write::{BlobBuilder, MoeLayerWeights};

/// The workspace's deterministic test PRNG (xorshift64).
pub use mobilemoe_ops::testing::Rng;

pub struct Layer {
    pub spec: MoeSpec,
    pub router_w: Vec<f32>,
    pub bias: Vec<f32>,
    pub w13: Vec<u8>,
    pub w13_s: Vec<f32>,
    pub w2: Vec<u8>,
    pub w2_s: Vec<f32>,
    pub sh13: PackedMatrix,
    pub sh2: PackedMatrix,
    pub gate: Vec<f32>,
    pub lin: PackedMatrix,
    pub lin_bias: Vec<f32>,
}

pub fn layer(seed: u64) -> Layer {
    let (d, f, e, k, n) = (64usize, 32usize, 4usize, 2usize, 48usize);
    let spec = MoeSpec {
        dim: d,
        hidden: f,
        shared_hidden: f,
        group: 32,
        bits: WeightBits::Int4,
        router: RouterConfig {
            num_experts: e,
            top_k: k,
            score_func: ScoreFunc::Sigmoid,
            renormalize: true,
            route_scale: 1.5,
            ..Default::default()
        },
        exact: false,
        scales_out: false,
    };
    let mut r = Rng(seed | 1);
    let (mut w13, mut w13_s, mut w2, mut w2_s) = (vec![], vec![], vec![], vec![]);
    for _ in 0..e {
        let a = PackedMatrix::quantize(&r.vec(2 * f * d, 0.2), spec.w13_spec().unwrap()).unwrap();
        let b = PackedMatrix::quantize(&r.vec(d * f, 0.2), spec.w2_spec().unwrap()).unwrap();
        w13.extend_from_slice(&a.data);
        w13_s.extend_from_slice(&a.scales);
        w2.extend_from_slice(&b.data);
        w2_s.extend_from_slice(&b.scales);
    }
    Layer {
        router_w: r.vec(e * d, 0.3),
        bias: r.vec(e, 0.1),
        w13,
        w13_s,
        w2,
        w2_s,
        sh13: PackedMatrix::quantize(&r.vec(2 * f * d, 0.2), spec.shared_w13_spec().unwrap()).unwrap(),
        sh2: PackedMatrix::quantize(&r.vec(d * f, 0.2), spec.shared_w2_spec().unwrap()).unwrap(),
        gate: r.vec(d, 0.2),
        lin: PackedMatrix::quantize(&r.vec(n * d, 0.2), MatrixSpec::new(n, d, 32, WeightBits::Int4).unwrap()).unwrap(),
        lin_bias: r.vec(n, 0.1),
        spec,
    }
}

/// x [1, T, 64] -> MoE -> linear -> [1, T, 48]; returns the builder.
pub fn builder(l: &Layer) -> BlobBuilder {
    builder_with_scales(l, ScaleType::F32)
}

/// `m` with the scales `s` (the same values, possibly in another element type).
fn with_scales<'a>(m: &'a PackedMatrix, s: ScaleRef<'a>) -> PackedRef<'a> {
    PackedRef { scales: s, ..m.as_ref() }
}

/// `builder` with every per-group scale stored as `t` (the layer's f32 values converted to `t`:
/// round them first, e.g. with `ScaleType::round`, to compare with f32 storage).
pub fn builder_with_scales(l: &Layer, t: ScaleType) -> BlobBuilder {
    let o = |v: &[f32]| OwnedScales::from_f32(t, v);
    let (s13, s2, sh13, sh2, lin) = (o(&l.w13_s), o(&l.w2_s), o(&l.sh13.scales), o(&l.sh2.scales), o(&l.lin.scales));
    let mut b = BlobBuilder::new();
    let x = b.activation(&[1, -1, 64], true);
    let w = MoeLayerWeights {
        router_w: &l.router_w,
        expert_bias: Some(&l.bias),
        w13: &l.w13,
        w13_scales: s13.as_ref(),
        w2: &l.w2,
        w2_scales: s2.as_ref(),
        shared: Some((with_scales(&l.sh13, sh13.as_ref()), with_scales(&l.sh2, sh2.as_ref()), Some(&l.gate))),
    };
    let h = b.moe_ffn_layer("moe", x, &l.spec, &w);
    let y = b.linear_layer("proj", h, &with_scales(&l.lin, lin.as_ref()), Some(&l.lin_bias), false);
    b.set_inputs(&[x]);
    b.set_outputs(&[y]);
    b
}
