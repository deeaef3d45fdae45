//! The fused, permuted, threaded MoE layer equals the naive reference bit for bit, on every kernel.
mod common;
use common::*;
use mobilemoe_ops::*;
use proptest::prelude::*;

fn spec(
    d: usize,
    f: usize,
    e: usize,
    k: usize,
    fs: usize,
    group: usize,
    bits: WeightBits,
    sf: ScoreFunc,
    renorm: bool,
    scale: f32,
    exact: bool,
) -> MoeSpec {
    MoeSpec {
        dim: d,
        hidden: f,
        shared_hidden: fs,
        group,
        bits,
        router: RouterConfig { num_experts: e, top_k: k, score_func: sf, renormalize: renorm, route_scale: scale, ..Default::default() },
        exact,
        scales_out: false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
    #[test]
    fn fused_equals_naive(
        t in 1usize..40, dmul in 1usize..4, fmul in 1usize..3, e in 1usize..12, kraw in 1usize..8,
        g_idx in 0usize..3, int8 in any::<bool>(), sf in 0usize..3, bias in any::<bool>(),
        shared in 0usize..3, exact in any::<bool>(), seed in any::<u64>(), threads in 1usize..4,
    ) {
        let group = [32, 64, 128][g_idx];
        let k = kraw.min(e);
        let sf = [ScoreFunc::Softmax, ScoreFunc::SoftmaxAll, ScoreFunc::Sigmoid][sf];
        let bits = if int8 { WeightBits::Int8 } else { WeightBits::Int4 };
        let sp = spec(group * dmul, group * fmul, e, k, if shared > 0 { group } else { 0 }, group, bits, sf, bias, if bias { 2.5 } else { 1.0 }, exact);
        let layer = Layer::random(sp, seed, bias && sf == ScoreFunc::Sigmoid, shared == 2);
        let diff = fused_vs_naive(&layer, t, seed, threads);
        prop_assert!(diff.is_none(), "{}", diff.unwrap());
    }
}
