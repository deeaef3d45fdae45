//! The routing of the Hugging Face families beyond one top-k over all experts: group-limited
//! selection (DeepSeek-V2 `group_limited_greedy`, DeepSeek-V3 `noaux_tc`), top-k then sigmoid with
//! the weight on the expert input (Llama 4), PhiMoE's `sparsemixer`. Hand-made cases against plain
//! formulas, then the fused layer against the naive reference bit for bit on every kernel.
mod common;
use common::*;
use mobilemoe_ops::*;
use proptest::prelude::*;

/// `route1` of a valid config, also equal to the reference bit for bit.
fn route_checked(cfg: RouterConfig, logits: &[f32], bias: Option<&[f32]>) -> (Vec<u32>, Vec<f32>) {
    cfg.validate().unwrap();
    let (ids, w) = route1(cfg, logits, bias);
    let (rid, rw) = reference::route(&cfg, logits, bias);
    assert_eq!(ids, rid, "production vs reference ids");
    assert_eq!(w.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), rw.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    (ids, w)
}

fn grouped(e: usize, k: usize, sf: ScoreFunc, groups: usize, top_groups: usize, score: GroupScore) -> RouterConfig {
    RouterConfig { num_experts: e, top_k: k, score_func: sf, group_limit: GroupLimit { groups, top_groups, score }, ..Default::default() }
}

#[test]
fn group_max_keeps_the_best_groups_only() {
    // 3 groups of 2 (logits): group maxima 1.0, 5.0, 4.0 -> groups 1 and 2 compete; expert 0's
    // 1.0 would beat expert 5's 0.5 without the limit.
    let l = [1.0f32, -3.0, 5.0, -9.0, 4.0, 0.5];
    let (ids, _) = route_checked(grouped(6, 3, ScoreFunc::Softmax, 3, 2, GroupScore::Max), &l, None);
    assert_eq!(ids, [2, 4, 5]);
    let (ids, _) = route_checked(grouped(6, 3, ScoreFunc::Softmax, 1, 1, GroupScore::Max), &l, None);
    assert_eq!(ids, [2, 4, 0]);
}

#[test]
fn group_top2_sum_ranks_groups_by_their_two_best() {
    // sigmoid + bias keys. Group 0 has the single best expert but a weak second one: by max it
    // wins, by the sum of the top two group 1 (two good experts) wins.
    let l = [3.0f32, -4.0, 1.0, 1.2, -2.0, -2.5];
    let cfg = RouterConfig { renormalize: true, route_scale: 2.0, ..grouped(6, 2, ScoreFunc::Sigmoid, 3, 1, GroupScore::TopTwoSum) };
    let (ids, w) = route_checked(cfg, &l, Some(&[0.0; 6]));
    assert_eq!(ids, [3, 2]);
    let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
    let (a, b) = (sig(1.2), sig(1.0));
    close(&w, &[2.0 * a / (a + b), 2.0 * b / (a + b)]);
    let (ids, _) = route_checked(grouped(6, 2, ScoreFunc::Sigmoid, 3, 1, GroupScore::Max), &l, None);
    assert_eq!(ids, [0, 1]);
}

#[test]
fn topk_sigmoid_selects_on_logits_and_weighs_by_sigmoid() {
    // Logits 30 and 31 both have sigmoid 1.0 in f32: the selection must still see 31 > 30.
    let l = [30.0f32, 31.0, -1.0];
    let cfg = RouterConfig { num_experts: 3, top_k: 1, score_func: ScoreFunc::TopkSigmoid, ..Default::default() };
    let (ids, w) = route_checked(cfg, &l, None);
    assert_eq!(ids, [1]);
    assert_eq!(w, [1.0]);
    let (ids, w) = route_checked(RouterConfig { top_k: 2, ..cfg }, &[0.5, -1.0, 2.0], None);
    assert_eq!(ids, [2, 0]);
    close(&w, &[1.0 / (1.0 + (-2.0f32).exp()), 1.0 / (1.0 + (-0.5f32).exp())]);
}

#[test]
fn sparsemixer_weighs_each_pick_over_the_logits_near_it() {
    // eps 0.1: threshold 0.2 relative. First pick 4.0: 3.5 is within (0.5 / 4 = 0.125), 1.0 and
    // 3.0 are not (0.75, 0.25). Second pick 3.5 among the rest: 3.0 is within (0.5 / 3.5 =
    // 0.143), 1.0 is not; the first pick is no candidate.
    let l = [1.0f32, 4.0, 3.5, 3.0];
    let cfg = RouterConfig { num_experts: 4, top_k: 2, score_func: ScoreFunc::SparseMixer, jitter_eps: 0.1, ..Default::default() };
    let (ids, w) = route_checked(cfg, &l, None);
    assert_eq!(ids, [1, 2]);
    let w1 = 1.0 / (1.0 + (-0.5f32).exp());
    let w2 = 1.0 / (1.0 + (-0.5f32).exp());
    close(&w, &[w1, w2]);
    // eps 0: only the picks themselves count, weights 1.
    let (_, w) = route_checked(RouterConfig { jitter_eps: 0.0, ..cfg }, &l, None);
    assert_eq!(w, [1.0, 1.0]);
}

#[test]
fn selection_bias_steers_every_score_function_but_never_weighs() {
    // The bias lifts expert 2 over expert 0 for selection; the weights stay unbiased.
    let l = [2.0f32, 1.0, 0.5];
    let b = [0.0f32, 0.0, 10.0];
    let z: f32 = l.iter().map(|v| v.exp()).sum();
    let p: Vec<f32> = l.iter().map(|v| v.exp() / z).collect();
    let all = RouterConfig { num_experts: 3, top_k: 2, score_func: ScoreFunc::SoftmaxAll, renormalize: true, ..Default::default() };
    let (ids, w) = route_checked(all, &l, Some(&b));
    assert_eq!(ids, [2, 0]); // ERNIE 4.5: selection on probabilities + bias
    close(&w, &[p[2] / (p[2] + p[0]), p[0] / (p[2] + p[0])]);
    let (ids, w) = route_checked(RouterConfig { score_func: ScoreFunc::TopkSigmoid, renormalize: false, ..all }, &l, Some(&b));
    assert_eq!(ids, [2, 0]); // Kolibri: selection on logits + bias, sigmoid weights
    close(&w, &[1.0 / (1.0 + (-0.5f32).exp()), 1.0 / (1.0 + (-2.0f32).exp())]);
    let (ids, _) = route_checked(RouterConfig { score_func: ScoreFunc::Softmax, ..all }, &l, Some(&b));
    assert_eq!(ids, [2, 0]);
}

#[test]
fn renormalisation_shift_and_floor() {
    let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
    let l = [1.0f32, -1.0, -3.0];
    let base = RouterConfig { num_experts: 3, top_k: 2, score_func: ScoreFunc::Sigmoid, renormalize: true, ..Default::default() };
    let (a, b) = (sig(1.0), sig(-1.0));
    // LFM2-MoE: / (sum + 1e-6)
    let (_, w) = route_checked(RouterConfig { renorm_eps: 1e-6, ..base }, &l, None);
    close(&w, &[a / (a + b + 1e-6), b / (a + b + 1e-6)]);
    assert_ne!(w[0].to_bits(), route_checked(base, &l, None).1[0].to_bits());
    // ERNIE 4.5: / max(sum, 1e-12): tiny sigmoid scores (logits near -30) hit the floor
    let tiny = [-30.0f32, -31.0, -40.0];
    let (_, w) = route_checked(RouterConfig { renorm_min: 1e-12, ..base }, &tiny, None);
    let (ta, tb) = (sig(-30.0), sig(-31.0));
    assert!(ta + tb < 1e-12);
    close(&w, &[ta / 1e-12, tb / 1e-12]);
    // default: / max(sum, FLT_MIN) = the plain sum here
    let (_, w) = route_checked(base, &tiny, None);
    close(&w, &[ta / (ta + tb), tb / (ta + tb)]);
    for bad in
        [RouterConfig { renorm_eps: -1.0, ..base }, RouterConfig { renorm_min: 0.0, ..base }, RouterConfig { renorm_eps: f32::NAN, ..base }]
    {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

#[test]
fn invalid_group_limits_and_sparsemixer_settings_are_errors() {
    let base = grouped(6, 2, ScoreFunc::Sigmoid, 3, 1, GroupScore::TopTwoSum);
    assert!(base.validate().is_ok());
    for bad in [
        RouterConfig { group_limit: GroupLimit { groups: 4, ..base.group_limit }, ..base }, // 4 does not divide 6
        RouterConfig { group_limit: GroupLimit { groups: 0, ..base.group_limit }, ..base },
        RouterConfig { group_limit: GroupLimit { top_groups: 0, ..base.group_limit }, ..base },
        RouterConfig { group_limit: GroupLimit { top_groups: 4, ..base.group_limit }, ..base },
        RouterConfig { top_k: 3, ..base }, // 1 group of 2 experts cannot give 3
        RouterConfig { group_limit: GroupLimit { groups: 6, top_groups: 2, score: GroupScore::TopTwoSum }, ..base },
        RouterConfig { score_func: ScoreFunc::SparseMixer, ..base },
        RouterConfig { score_func: ScoreFunc::SparseMixer, top_k: 1, group_limit: GroupLimit::NONE, ..base },
        RouterConfig { score_func: ScoreFunc::SparseMixer, group_limit: GroupLimit::NONE, renormalize: true, ..base },
        RouterConfig { score_func: ScoreFunc::SparseMixer, group_limit: GroupLimit::NONE, jitter_eps: f32::NAN, ..base },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
    for f in ScoreFunc::ALL {
        assert_eq!(ScoreFunc::parse(f.name()).unwrap(), f);
    }
    for s in [GroupScore::Max, GroupScore::TopTwoSum] {
        assert_eq!(GroupScore::parse(s.name()).unwrap(), s);
    }
}

#[test]
fn sparsemixer_with_a_selection_bias_is_an_error() {
    let cfg = RouterConfig { num_experts: 4, top_k: 2, score_func: ScoreFunc::SparseMixer, ..Default::default() };
    let (x, w, bias) = (vec![0.5f32; 8], vec![0.1f32; 16], [0.0f32; 4]);
    let (mut logits, mut scratch, mut ids, mut wts) = (vec![0f32; 8], vec![0f32; cfg.scratch_len()], vec![0u32; 4], vec![0f32; 4]);
    let e = routing::route(&cfg, &x, 2, 4, &w, Some(&bias), &mut logits, &mut scratch, &mut ids, &mut wts).unwrap_err();
    assert!(e.to_string().contains("sparsemixer routing takes no expert bias"), "{e}");
    assert!(routing::route(&cfg, &x, 2, 4, &w, None, &mut logits, &mut scratch, &mut ids, &mut wts).is_ok());
    let sp =
        MoeSpec { dim: 32, hidden: 32, shared_hidden: 0, group: 32, bits: WeightBits::Int4, router: cfg, exact: false, scales_out: false };
    let mut layer = Layer::random(sp, 3, false, false);
    layer.bias = Some(vec![0.0; 4]);
    let e = layer.weights().validate(&sp).unwrap_err();
    assert!(e.to_string().contains("sparsemixer routing takes no expert bias"), "{e}");
}

/// A random valid router config with one of the extended features.
fn extended_router(e_groups: usize, per: usize, kraw: usize, variant: usize, top_groups: usize, seed: u64) -> RouterConfig {
    let e = e_groups * per;
    let mut cfg = RouterConfig { num_experts: e, top_k: kraw.min(e), ..Default::default() };
    match variant {
        0 | 1 => {
            // group-limited softmax_all (V2) / sigmoid with bias (V3)
            let tg = top_groups.clamp(1, e_groups);
            let score = if variant == 0 || per < 2 { GroupScore::Max } else { GroupScore::TopTwoSum };
            cfg.score_func = if variant == 0 { ScoreFunc::SoftmaxAll } else { ScoreFunc::Sigmoid };
            cfg.group_limit = GroupLimit { groups: e_groups, top_groups: tg, score };
            cfg.top_k = cfg.top_k.min(tg * per);
            cfg.renormalize = variant == 1;
            cfg.route_scale = 2.5;
        }
        2 => {
            cfg.score_func = ScoreFunc::TopkSigmoid;
            cfg.weight_input = true;
        }
        _ => {
            cfg.score_func = ScoreFunc::SparseMixer;
            cfg.top_k = 2;
            cfg.jitter_eps = [0.0, 0.01, 0.3][seed as usize % 3];
        }
    }
    cfg
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
    #[test]
    fn fused_equals_naive_for_every_routing_family(
        t in 1usize..24, e_groups in 1usize..5, per in 1usize..4, kraw in 1usize..6, variant in 0usize..4,
        top_groups in 1usize..4, int8 in any::<bool>(), shared in 0usize..3, exact in any::<bool>(),
        weight_input in any::<bool>(), seed in any::<u64>(), threads in 1usize..4,
    ) {
        let group = 32;
        let per = if variant == 3 && e_groups * per < 2 { 2 } else { per };
        let mut router = extended_router(e_groups, per, kraw, variant, top_groups, seed);
        router.weight_input |= weight_input;
        if variant != 3 {
            (router.renorm_eps, router.renorm_min) = [(0.0, f32::MIN_POSITIVE), (1e-6, f32::MIN_POSITIVE), (0.0, 1e-12)][seed as usize / 3 % 3];
        }
        let sp = MoeSpec {
            dim: 64, hidden: 32, shared_hidden: if shared > 0 { 32 } else { 0 }, group,
            bits: if int8 { WeightBits::Int8 } else { WeightBits::Int4 }, router, exact,
            scales_out: false,
        };
        prop_assert!(sp.validate().is_ok(), "{sp:?}");
        // a selection bias for every score function but sparsemixer
        let layer = Layer::random(sp, seed, variant != 3 && seed % 2 == 0, shared == 2);
        let diff = fused_vs_naive(&layer, t, seed, threads);
        prop_assert!(diff.is_none(), "{}", diff.unwrap());
    }
}
