//! Determinism and bad values (docs/DESIGN.md sections 3-5):
//! - a token whose activations contain a NaN or an infinity gives NaN outputs for that token
//!   only (Q8 and exact paths, dense linear and MoE layer), on every kernel set;
//! - routing and the shared-expert gate use the crate's deterministic `exp_f32`;
//! - renormalisation of an all-zero selection gives weights 0, not 0/0.
mod common;
use common::*;
use mobilemoe_ops::moe::{exp_f32, sigmoid};
use mobilemoe_ops::*;

#[test]
fn routing_uses_the_deterministic_exp() {
    let l = [0.3f32, -1.7, 2.9, 0.31, -0.2];
    // softmax over the selected: exp_f32(l - max) / sum, in selection order.
    let (ids, w) = route1(router(5, 3, ScoreFunc::Softmax, false, 1.0), &l, None);
    assert_eq!(ids, [2, 3, 0]);
    let e: Vec<f32> = ids.iter().map(|&i| exp_f32(l[i as usize] - 2.9)).collect();
    let sum = (e[0] + e[1]) + e[2];
    for j in 0..3 {
        assert_eq!(w[j].to_bits(), (e[j] / sum).to_bits());
    }
    // softmax over all, renormalised.
    let (ids, w) = route1(router(5, 2, ScoreFunc::SoftmaxAll, true, 1.0), &l, None);
    let mut p: Vec<f32> = l.iter().map(|&v| exp_f32(v - 2.9)).collect();
    let z = p.iter().fold(0f32, |a, &b| a + b);
    p.iter_mut().for_each(|v| *v /= z);
    let sel = p[ids[0] as usize] + p[ids[1] as usize];
    for j in 0..2 {
        assert_eq!(w[j].to_bits(), (p[ids[j] as usize] / sel).to_bits());
    }
    // sigmoid = 1 / (1 + exp_f32(-x)), times route_scale after renormalisation.
    let (ids, w) = route1(router(5, 2, ScoreFunc::Sigmoid, true, 2.5), &l, None);
    let s: Vec<f32> = ids.iter().map(|&i| 1.0 / (1.0 + exp_f32(-l[i as usize]))).collect();
    for j in 0..2 {
        assert_eq!(w[j].to_bits(), (s[j] / (s[0] + s[1]) * 2.5).to_bits());
        assert_eq!(sigmoid(l[ids[j] as usize]).to_bits(), s[j].to_bits());
    }
    assert_eq!(sigmoid(f32::INFINITY), 1.0);
    assert_eq!(sigmoid(f32::NEG_INFINITY), 0.0);
    assert!(sigmoid(f32::NAN).is_nan());
}

#[test]
fn renormalising_an_all_zero_selection_gives_zero_weights() {
    // sigmoid(-200) underflows to exactly 0 for every expert: 0 / max(0, MIN_POSITIVE) = 0.
    let l = [-200f32; 6];
    for renorm in [true, false] {
        let (ids, w) = route1(router(6, 3, ScoreFunc::Sigmoid, renorm, 1.5), &l, Some(&[0.0, 0.1, 0.0, 0.3, 0.0, 0.0]));
        assert_eq!(ids, [3, 1, 0]);
        assert!(w.iter().all(|&v| v == 0.0), "{w:?}");
    }
    // A NaN logit still gives a NaN weight (documented: NaN in, NaN out).
    let (_, w) = route1(router(3, 3, ScoreFunc::Sigmoid, true, 1.0), &[f32::NAN, 0.0, 1.0], None);
    assert!(w.iter().all(|v| v.is_nan()));
}

fn bad_rows(x: &mut [f32], d: usize) -> Vec<usize> {
    // token 1: a NaN; token 3: +inf; token 4: -inf (all in the middle of the row)
    x[d + d / 2] = f32::NAN;
    x[3 * d + 1] = f32::INFINITY;
    x[4 * d + d - 1] = f32::NEG_INFINITY;
    vec![1, 3, 4]
}

#[test]
fn nonfinite_activations_poison_only_their_token_linear() {
    let (n, k, t) = (40, 64, 7);
    for bits in [WeightBits::Int4, WeightBits::Int8] {
        let spec = MatrixSpec::new(n, k, 32, bits).unwrap();
        let mut r = Rng(5);
        let w = PackedMatrix::quantize(&r.vec(n * k, 0.1), spec).unwrap();
        let clean = r.vec(t * k, 1.0);
        let mut x = clean.clone();
        let bad = bad_rows(&mut x, k);
        let pool = ThreadPool::new(2);
        for exact in [false, true] {
            for ks in Kernels::available() {
                let mut want = vec![0f32; t * n];
                linear(&w.as_ref(), None, &clean, t, &mut want, exact, &mut LinearScratch::default(), &pool, &ks).unwrap();
                let mut got = vec![0f32; t * n];
                linear(&w.as_ref(), None, &x, t, &mut got, exact, &mut LinearScratch::default(), &pool, &ks).unwrap();
                for i in 0..t {
                    let row = &got[i * n..(i + 1) * n];
                    if bad.contains(&i) {
                        if exact {
                            // fp32 path: NaN * w is NaN; inf * w is +-inf or NaN (inf - inf)
                            assert!(row.iter().all(|v| !v.is_finite()), "{} exact row {i}", ks.kind.name());
                        } else {
                            assert!(row.iter().all(|v| v.is_nan()), "{} q8 row {i}: {row:?}", ks.kind.name());
                        }
                    } else {
                        let w_row = &want[i * n..(i + 1) * n];
                        assert!(row.iter().zip(w_row).all(|(a, b)| a.to_bits() == b.to_bits()), "{} row {i}", ks.kind.name());
                    }
                }
            }
        }
    }
}

#[test]
fn nonfinite_activations_poison_only_their_token_moe() {
    for (exact, sf) in [(false, ScoreFunc::Sigmoid), (false, ScoreFunc::Softmax), (true, ScoreFunc::SoftmaxAll)] {
        let spec = MoeSpec {
            dim: 64,
            hidden: 64,
            shared_hidden: 32,
            group: 32,
            bits: WeightBits::Int4,
            router: router(6, 2, sf, true, 1.0),
            exact,
            scales_out: false,
        };
        let layer = Layer::random(spec, 3, sf == ScoreFunc::Sigmoid, true);
        let w = layer.weights();
        let t = 9;
        let mut r = Rng(11);
        let clean = r.vec(t * spec.dim, 1.0);
        let mut x = clean.clone();
        let bad = bad_rows(&mut x, spec.dim);
        let pool = ThreadPool::new(2);
        for ks in Kernels::available() {
            let mut want = vec![0f32; t * spec.dim];
            moe_ffn(&spec, &w, &clean, t, &mut want, &mut MoeScratch::default(), &pool, &ks).unwrap();
            let mut got = vec![0f32; t * spec.dim];
            moe_ffn(&spec, &w, &x, t, &mut got, &mut MoeScratch::default(), &pool, &ks).unwrap();
            let naive = reference::moe_ffn_naive(&spec, &w, &x, t);
            for i in 0..t {
                let row = &got[i * spec.dim..(i + 1) * spec.dim];
                if bad.contains(&i) {
                    assert!(row.iter().all(|v| v.is_nan()), "{} exact={exact} {sf:?} token {i}", ks.kind.name());
                } else {
                    let w_row = &want[i * spec.dim..(i + 1) * spec.dim];
                    assert!(row.iter().zip(w_row).all(|(a, b)| a.to_bits() == b.to_bits()), "{} token {i}", ks.kind.name());
                }
                let n_row = &naive[i * spec.dim..(i + 1) * spec.dim];
                assert!(row.iter().zip(n_row).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())));
            }
        }
    }
}
