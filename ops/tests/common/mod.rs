//! Shared builders for the ops tests: random MoE layers from a seed.
#![allow(dead_code)]

use mobilemoe_ops::*;

/// The workspace's deterministic test PRNG (xorshift64).
pub use mobilemoe_ops::testing::Rng;

pub struct Layer {
    pub spec: MoeSpec,
    pub router_w: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub w13: Vec<u8>,
    pub w13_s: Vec<f32>,
    pub w2: Vec<u8>,
    pub w2_s: Vec<f32>,
    pub shared: Option<(PackedMatrix, PackedMatrix, Option<Vec<f32>>)>,
}

impl Layer {
    pub fn random(spec: MoeSpec, seed: u64, with_bias: bool, shared_gate: bool) -> Self {
        let mut r = Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
        let (d, f, e) = (spec.dim, spec.hidden, spec.router.num_experts);
        let s13 = spec.w13_spec().unwrap();
        let s2 = spec.w2_spec().unwrap();
        let (mut w13, mut w13_s, mut w2, mut w2_s) = (vec![], vec![], vec![], vec![]);
        for _ in 0..e {
            let a = PackedMatrix::quantize(&r.vec(2 * f * d, 0.1), s13).unwrap();
            w13.extend_from_slice(&a.data);
            w13_s.extend_from_slice(&a.scales);
            let b = PackedMatrix::quantize(&r.vec(d * f, 0.1), s2).unwrap();
            w2.extend_from_slice(&b.data);
            w2_s.extend_from_slice(&b.scales);
        }
        let shared = (spec.shared_hidden > 0).then(|| {
            let fs = spec.shared_hidden;
            (
                PackedMatrix::quantize(&r.vec(2 * fs * d, 0.1), spec.shared_w13_spec().unwrap()).unwrap(),
                PackedMatrix::quantize(&r.vec(d * fs, 0.1), spec.shared_w2_spec().unwrap()).unwrap(),
                shared_gate.then(|| r.vec(d, 0.5)),
            )
        });
        Self { router_w: r.vec(e * d, 0.5), bias: with_bias.then(|| r.vec(e, 0.2)), spec, w13, w13_s, w2, w2_s, shared }
    }
    pub fn weights(&self) -> MoeWeights<'_> {
        MoeWeights {
            router_w: &self.router_w,
            expert_bias: self.bias.as_deref(),
            w13: &self.w13,
            w13_scales: (&self.w13_s).into(),
            w2: &self.w2,
            w2_scales: (&self.w2_s).into(),
            shared: self.shared.as_ref().map(|(a, b, g)| SharedExpert { w13: a.as_ref(), w2: b.as_ref(), gate: g.as_deref() }),
        }
    }
}

/// A router config from the basic attributes (everything newer at its default).
pub fn router(e: usize, k: usize, sf: ScoreFunc, renorm: bool, scale: f32) -> RouterConfig {
    RouterConfig { num_experts: e, top_k: k, score_func: sf, renormalize: renorm, route_scale: scale, ..Default::default() }
}

/// `routing::route_token` on one token's logits: (ids, weights) in selection order.
pub fn route1(cfg: RouterConfig, logits: &[f32], bias: Option<&[f32]>) -> (Vec<u32>, Vec<f32>) {
    let mut ids = vec![0u32; cfg.top_k];
    let mut w = vec![0f32; cfg.top_k];
    let mut scratch = vec![0f32; cfg.scratch_len()];
    routing::route_token(&cfg, logits, bias, &mut scratch, &mut ids, &mut w);
    (ids, w)
}

/// Elementwise within 1e-6 relative (+1e-6 absolute).
pub fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{a:?} vs {b:?}");
    }
}

/// The fused layer on every kernel set (a `threads` pool, fresh scratch) against the naive
/// reference on `t` random tokens: the first difference in bits, if any.
pub fn fused_vs_naive(layer: &Layer, t: usize, seed: u64, threads: usize) -> Option<String> {
    let (sp, w) = (&layer.spec, layer.weights());
    let x = Rng(seed | 1).vec(t * sp.dim, 1.0);
    let want = reference::moe_ffn_naive(sp, &w, &x, t);
    let pool = ThreadPool::new(threads);
    for ks in Kernels::available() {
        let mut out = vec![f32::NAN; t * sp.dim];
        moe_ffn(sp, &w, &x, t, &mut out, &mut MoeScratch::default(), &pool, &ks).unwrap();
        if let Some((i, (a, b))) = out.iter().zip(&want).enumerate().find(|(_, (a, b))| a.to_bits() != b.to_bits()) {
            return Some(format!("kernel {} idx {i}: {a} vs {b} ({sp:?})", ks.kind.name()));
        }
    }
    None
}
