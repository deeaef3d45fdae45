//! Concurrency: two programs and two threads on one program execute concurrently; every result equals
//! the sequential one bit for bit.
//! - ops level: threads share `ThreadPool::global()` (a busy pool runs a second caller's job inline),
//!   each with its own `MoeScratch`/`LinearScratch`;
//! - program level: `backend/src/delegate.rs` (the per-program state the ExecuTorch backend's
//!   init/execute use): two `Delegate`s, and two threads executing one `Delegate` (its scratch is
//!   behind a mutex).
//! Run under ThreadSanitizer by scripts/sanitize.sh.

use mobilemoe_fuzz_harness::blob::make_blob;
use mobilemoe_fuzz_harness::delegate::Delegate;
use mobilemoe_fuzz_harness::gen::Rng;
use mobilemoe_ops::*;
use std::sync::Arc;

const ITERS: usize = 30;

fn layer(seed: u64, e: usize, k: usize, score: ScoreFunc, exact: bool) -> (MoeSpec, Vec<f32>, Vec<u8>, Vec<f32>, Vec<u8>, Vec<f32>) {
    let (d, f, group) = (64, 64, 32);
    let spec = MoeSpec {
        dim: d,
        hidden: f,
        shared_hidden: 0,
        group,
        bits: WeightBits::Int4,
        router: RouterConfig { num_experts: e, top_k: k, score_func: score, renormalize: true, route_scale: 1.0, ..Default::default() },
        exact,
        scales_out: false,
    };
    let mut r = Rng(seed);
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
    (spec, router, w13, w13s, w2, w2s)
}

fn run_layer(
    l: &(MoeSpec, Vec<f32>, Vec<u8>, Vec<f32>, Vec<u8>, Vec<f32>),
    x: &[f32],
    scratch: &mut MoeScratch,
    pool: &ThreadPool,
) -> Vec<f32> {
    let w = MoeWeights {
        router_w: &l.1,
        expert_bias: None,
        w13: &l.2,
        w13_scales: (&l.3).into(),
        w2: &l.4,
        w2_scales: (&l.5).into(),
        shared: None,
    };
    let t = x.len() / l.0.dim;
    let mut out = vec![0f32; x.len()];
    moe_ffn(&l.0, &w, x, t, &mut out, scratch, pool, &Kernels::best()).unwrap();
    out
}

fn inputs(seed: u64, tokens: &[usize], d: usize) -> Vec<Vec<f32>> {
    let mut r = Rng(seed);
    tokens.iter().map(|&t| (0..t * d).map(|_| r.f32()).collect()).collect()
}

#[test]
fn ops_two_layers_two_threads_share_the_global_pool() {
    let layers = Arc::new([layer(1, 8, 2, ScoreFunc::Softmax, false), layer(2, 6, 3, ScoreFunc::Sigmoid, true)]);
    let xs = Arc::new(inputs(3, &[1, 7, 33, 0, 2], 64));
    let pool = ThreadPool::global();
    // Sequential reference.
    let mut s = MoeScratch::default();
    let want: Vec<Vec<Vec<f32>>> = layers.iter().map(|l| xs.iter().map(|x| run_layer(l, x, &mut s, &pool)).collect()).collect();
    let want = Arc::new(want);
    // 4 threads: 2 per layer (two programs, two threads on one program), separate scratch each.
    let hs: Vec<_> = (0..4)
        .map(|th| {
            let (layers, xs, want) = (layers.clone(), xs.clone(), want.clone());
            std::thread::spawn(move || {
                let pool = ThreadPool::global();
                let li = th % 2;
                let mut s = MoeScratch::default();
                for it in 0..ITERS {
                    let xi = (it + th) % xs.len();
                    let y = run_layer(&layers[li], &xs[xi], &mut s, &pool);
                    assert!(
                        y.iter().zip(&want[li][xi]).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "thread {th} iter {it}: differs from sequential"
                    );
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

#[test]
fn ops_linear_concurrent_callers() {
    let spec = MatrixSpec::new(96, 128, 32, WeightBits::Int8).unwrap();
    let mut r = Rng(9);
    let w = PackedMatrix::quantize(&(0..96 * 128).map(|_| r.f32()).collect::<Vec<_>>(), spec).unwrap();
    let w = Arc::new(w);
    let x: Arc<Vec<f32>> = Arc::new((0..70 * 128).map(|_| r.f32()).collect());
    let pool = ThreadPool::global();
    let mut want = vec![0f32; 70 * 96];
    linear(&PackedMatrix::as_ref(&w), None, &x, 70, &mut want, false, &mut LinearScratch::default(), &pool, &Kernels::best()).unwrap();
    let want = Arc::new(want);
    let hs: Vec<_> = (0..3)
        .map(|_| {
            let (w, x, want) = (w.clone(), x.clone(), want.clone());
            std::thread::spawn(move || {
                let pool = ThreadPool::global();
                let mut s = LinearScratch::default();
                for _ in 0..ITERS {
                    let mut y = vec![0f32; 70 * 96];
                    linear(&PackedMatrix::as_ref(&w), None, &x, 70, &mut y, false, &mut s, &pool, &Kernels::best()).unwrap();
                    assert!(y.iter().zip(want.iter()).all(|(a, b)| a.to_bits() == b.to_bits()));
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

fn exec(d: &Delegate, x: &[f32], t: usize, dim: usize, out_dim: usize) -> Vec<f32> {
    let shape = [t as i64, dim as i64];
    let mut out = vec![0f32; t * out_dim];
    d.execute(&[(x, &shape)], &mut [&mut out]).unwrap();
    out
}

#[test]
fn programs_two_delegates_and_two_threads_on_one() {
    use mobilemoe_ops::ScoreFunc::*;
    use mobilemoe_ops::WeightBits::*;
    // Program A: MoE only (out dim 32); program B: MoE + linear (out dim 40).
    let a = Arc::new(Delegate::from_vec(make_blob(32, 32, 4, 2, 32, Sigmoid, Int4, true, 0, true, ScaleType::F32, 11).to_bytes()).unwrap());
    let b =
        Arc::new(Delegate::from_vec(make_blob(64, 32, 3, 2, 0, SoftmaxAll, Int8, false, 40, true, ScaleType::F32, 12).to_bytes()).unwrap());
    let progs: Arc<[(Arc<Delegate>, usize, usize); 2]> = Arc::new([(a, 32, 32), (b, 64, 40)]);
    let toks = [1usize, 5, 17];
    let xs: Arc<Vec<Vec<Vec<f32>>>> = Arc::new(progs.iter().map(|p| inputs(p.1 as u64, &toks, p.1)).collect());
    let want: Arc<Vec<Vec<Vec<f32>>>> = Arc::new(
        progs
            .iter()
            .enumerate()
            .map(|(pi, p)| toks.iter().enumerate().map(|(ti, &t)| exec(&p.0, &xs[pi][ti], t, p.1, p.2)).collect())
            .collect(),
    );
    let hs: Vec<_> = (0..4)
        .map(|th| {
            let (progs, xs, want) = (progs.clone(), xs.clone(), want.clone());
            std::thread::spawn(move || {
                let pi = th % 2;
                let p = &progs[pi];
                for it in 0..ITERS {
                    let ti = (it + th) % toks.len();
                    let y = exec(&p.0, &xs[pi][ti], toks[ti], p.1, p.2);
                    assert!(y.iter().zip(&want[pi][ti]).all(|(a, b)| a.to_bits() == b.to_bits()), "program {pi} thread {th} iter {it}");
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}
