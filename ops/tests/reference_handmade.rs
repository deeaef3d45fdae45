//! The reference itself, checked against plain fp32 formulas on small hand-made cases
//! (routing by hand, and an MoE layer whose weights are exactly representable in INT4).

mod common;
use common::*;
use mobilemoe_ops::*;

#[test]
fn softmax_topk_then_softmax() {
    let (ids, w) = route1(router(4, 2, ScoreFunc::Softmax, false, 1.0), &[1.0, 3.0, 2.0, 0.0], None);
    assert_eq!(ids, [1, 2]);
    let (a, b) = (3f32.exp(), 2f32.exp());
    close(&w, &[a / (a + b), b / (a + b)]);
}

#[test]
fn softmax_all_with_and_without_renormalisation() {
    let l = [0.5f32, -1.0, 2.0];
    let z: f32 = l.iter().map(|v| v.exp()).sum();
    let p: Vec<f32> = l.iter().map(|v| v.exp() / z).collect();
    let (ids, w) = route1(router(3, 2, ScoreFunc::SoftmaxAll, false, 1.0), &l, None);
    assert_eq!(ids, [2, 0]);
    close(&w, &[p[2], p[0]]);
    let (_, w) = route1(router(3, 2, ScoreFunc::SoftmaxAll, true, 1.0), &l, None);
    close(&w, &[p[2] / (p[2] + p[0]), p[0] / (p[2] + p[0])]);
}

#[test]
fn sigmoid_bias_selects_but_does_not_weigh_and_route_scale_multiplies() {
    let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
    let l = [1.0f32, 0.9, -2.0];
    // The bias lifts expert 2 above expert 1 for selection only.
    let (ids, w) = route1(router(3, 2, ScoreFunc::Sigmoid, true, 2.5), &l, Some(&[0.0, 0.0, 3.0]));
    assert_eq!(ids, [2, 0]);
    let (s2, s0) = (sig(-2.0), sig(1.0));
    close(&w, &[2.5 * s2 / (s2 + s0), 2.5 * s0 / (s2 + s0)]);
}

#[test]
fn ties_go_to_the_lowest_index_and_nan_is_never_chosen_first() {
    let (ids, _) = route1(router(4, 2, ScoreFunc::Softmax, false, 1.0), &[1.0, 2.0, 2.0, 2.0], None);
    assert_eq!(ids, [1, 2]);
    let (ids, _) = route1(router(3, 2, ScoreFunc::Softmax, false, 1.0), &[f32::NAN, -5.0, f32::NAN], None);
    assert_eq!(ids, [1, 0]);
    let (ids, _) = route1(router(2, 2, ScoreFunc::SoftmaxAll, true, 1.0), &[f32::NAN, f32::NAN], None);
    assert!(ids.iter().all(|&i| i < 2));
}

/// One group (D = F = 32), two experts, top-1 softmax, weights that are exactly q * scale:
/// the exact-path reference must equal `sum_j w_j * W2 (silu(W1 x) * W3 x)` computed in fp32.
#[test]
fn moe_reference_equals_fp32_formula() {
    let (d, f, e) = (32usize, 32usize, 2usize);
    let spec = MoeSpec {
        dim: d,
        hidden: f,
        shared_hidden: 0,
        group: 32,
        bits: WeightBits::Int4,
        router: router(e, 1, ScoreFunc::Softmax, false, 1.0),
        exact: true,
        scales_out: false,
    };
    // Integer weights in [-8, 7] and per-row scales, packed directly (`quant::pack`), so the dense
    // fp32 weights of the formula are exactly q * s.
    let wq = |seed: usize, n: usize, k: usize| -> (Vec<i8>, Vec<f32>) {
        let q = (0..n * k).map(|i| (((i * 7 + seed * 3) % 16) as i32 - 8) as i8).collect();
        let s = (0..n).map(|r| 0.01 + 0.001 * ((r + seed) % 5) as f32).collect();
        (q, s)
    };
    let dense = |(q, s): &(Vec<i8>, Vec<f32>), k: usize| -> Vec<f32> { q.iter().enumerate().map(|(i, &v)| v as f32 * s[i / k]).collect() };
    let mut w13 = vec![];
    let mut w13s = vec![];
    let mut w2 = vec![];
    let mut w2s = vec![];
    let mut dense13 = vec![];
    let mut dense2 = vec![];
    for ex in 0..e {
        let a = wq(ex, 2 * f, d);
        let b = wq(ex + 5, d, f);
        let pa = quant::pack(&a.0, &a.1, spec.w13_spec().unwrap()).unwrap();
        let pb = quant::pack(&b.0, &b.1, spec.w2_spec().unwrap()).unwrap();
        assert!(pa.as_ref().dequantize() == dense(&a, d), "pack/dequantize round trip");
        w13.extend(pa.data);
        w13s.extend(pa.scales);
        w2.extend(pb.data);
        w2s.extend(pb.scales);
        dense13.push(dense(&a, d));
        dense2.push(dense(&b, f));
    }
    let router_w: Vec<f32> = (0..e * d).map(|i| if i < d { 0.1 } else { -0.1 }).collect();
    let w = MoeWeights {
        router_w: &router_w,
        expert_bias: None,
        w13: &w13,
        w13_scales: (&w13s).into(),
        w2: &w2,
        w2_scales: (&w2s).into(),
        shared: None,
    };
    let t = 2;
    let x: Vec<f32> = (0..t * d).map(|i| ((i % 11) as f32 - 5.0) * 0.1 * if i < d { 1.0 } else { -1.0 }).collect();
    let got = reference::moe_ffn_naive(&spec, &w, &x, t);
    for i in 0..t {
        let xi = &x[i * d..(i + 1) * d];
        // top-1 softmax: weight 1.0 for the expert with the larger logit
        let logits: Vec<f32> = (0..e).map(|j| (0..d).map(|c| xi[c] * router_w[j * d + c]).sum()).collect();
        let ex = if logits[1] > logits[0] { 1 } else { 0 };
        let h: Vec<f32> = (0..2 * f).map(|r| (0..d).map(|c| dense13[ex][r * d + c] * xi[c]).sum()).collect();
        let a: Vec<f32> = (0..f).map(|j| h[j] / (1.0 + (-h[j]).exp()) * h[f + j]).collect();
        let y: Vec<f32> = (0..d).map(|r| (0..f).map(|c| dense2[ex][r * f + c] * a[c]).sum()).collect();
        for (gv, yv) in got[i * d..(i + 1) * d].iter().zip(&y) {
            assert!((gv - yv).abs() <= 1e-5 * (1.0 + yv.abs()), "token {i}: {gv} vs {yv}");
        }
    }
}
