//! Output-grouped expert scales (MobileMoE's QAT release: experts `[E, in, out]`, groups of 32
//! along `out`): the fused layer equals the naive reference bit for bit on every kernel set and
//! thread count, and its exact path equals a float64 forward over the dequantized weights.
mod common;
use common::*;
use mobilemoe_ops::*;

struct OgLayer {
    spec: MoeSpec,
    router_w: Vec<f32>,
    bias: Vec<f32>,
    /// per expert: q13 [2F, D], q2 [D, F] (row = output)
    q13: Vec<Vec<i8>>,
    q2: Vec<Vec<i8>>,
    w13: Vec<u8>,
    w2: Vec<u8>,
    /// [E, D, 2F/G] and [E, F, D/G]
    s13: Vec<half::f16>,
    s2: Vec<half::f16>,
    shared: (PackedMatrix, PackedMatrix),
}

fn layer(d: usize, f: usize, e: usize, k: usize, exact: bool, seed: u64) -> OgLayer {
    let g = 32;
    let spec = MoeSpec {
        dim: d,
        hidden: f,
        shared_hidden: 2 * f,
        group: g,
        bits: WeightBits::Int4,
        router: RouterConfig { renorm_eps: 1e-20, ..router(e, k, ScoreFunc::Sigmoid, true, 2.5) },
        exact,
        scales_out: true,
    };
    let mut r = Rng(seed | 1);
    let (s13, s2) = (spec.w13_spec().unwrap(), spec.w2_spec().unwrap());
    let mut out = OgLayer {
        spec,
        router_w: r.vec(e * d, 0.5),
        bias: r.vec(e, 0.2),
        q13: vec![],
        q2: vec![],
        w13: vec![],
        w2: vec![],
        s13: vec![],
        s2: vec![],
        shared: (
            PackedMatrix::quantize(&r.vec(4 * f * d, 0.1), spec.shared_w13_spec().unwrap()).unwrap(),
            PackedMatrix::quantize(&r.vec(2 * f * d, 0.1), spec.shared_w2_spec().unwrap()).unwrap(),
        ),
    };
    for _ in 0..e {
        for (ms, qs, ws, ss, n, kk) in
            [(s13, &mut out.q13, &mut out.w13, &mut out.s13, 2 * f, d), (s2, &mut out.q2, &mut out.w2, &mut out.s2, d, f)]
        {
            let q: Vec<i8> = (0..n * kk).map(|_| (r.next_u64() % 16) as i8 - 8).collect();
            let p = quant::pack(&q, &vec![1.0; n * (kk / g)], ms).unwrap();
            ws.extend_from_slice(&p.data);
            ss.extend((0..kk * (n / g)).map(|_| half::f16::from_f32(0.01 + 0.04 * (r.f() + 1.0) / 2.0)));
            qs.push(q);
        }
    }
    out
}

impl OgLayer {
    fn weights(&self) -> MoeWeights<'_> {
        MoeWeights {
            router_w: &self.router_w,
            expert_bias: Some(&self.bias),
            w13: &self.w13,
            w13_scales: (&self.s13[..]).into(),
            w2: &self.w2,
            w2_scales: (&self.s2[..]).into(),
            shared: Some(SharedExpert { w13: self.shared.0.as_ref(), w2: self.shared.1.as_ref(), gate: None }),
        }
    }
    /// float64 forward over the dequantized weights (value = q[n, k] * s[k, n / 32]).
    fn f64_forward(&self, x: &[f32], t: usize) -> Vec<f64> {
        let sp = &self.spec;
        let (d, f, e, g) = (sp.dim, sp.hidden, sp.router.num_experts, sp.group);
        let deq = |q: &[i8], s: &[half::f16], ex: usize, n: usize, k: usize| -> Vec<f64> {
            let per = k * (n / g);
            (0..n * k).map(|i| q[i] as f64 * s[ex * per + (i % k) * (n / g) + (i / k) / g].to_f64()).collect()
        };
        let sh13 = self.shared.0.as_ref().dequantize();
        let sh2 = self.shared.1.as_ref().dequantize();
        let swiglu = |w13: &[f64], w2: &[f64], x: &[f64], ff: usize| -> Vec<f64> {
            let h: Vec<f64> = (0..2 * ff).map(|n| (0..d).map(|kk| w13[n * d + kk] * x[kk]).sum()).collect();
            let a: Vec<f64> = (0..ff).map(|j| h[j] / (1.0 + (-h[j]).exp()) * h[ff + j]).collect();
            (0..d).map(|n| (0..ff).map(|kk| w2[n * ff + kk] * a[kk]).sum()).collect()
        };
        let mut out = vec![0f64; t * d];
        for i in 0..t {
            let xi = &x[i * d..(i + 1) * d];
            let logits: Vec<f32> = (0..e).map(|j| routing::dot_f32(xi, &self.router_w[j * d..(j + 1) * d])).collect();
            let (ids, wts) = route1(sp.router, &logits, Some(&self.bias));
            let x64: Vec<f64> = xi.iter().map(|&v| v as f64).collect();
            let y = &mut out[i * d..(i + 1) * d];
            for (&ex, &wt) in ids.iter().zip(&wts) {
                let ex = ex as usize;
                let o = swiglu(&deq(&self.q13[ex], &self.s13, ex, 2 * f, d), &deq(&self.q2[ex], &self.s2, ex, d, f), &x64, f);
                y.iter_mut().zip(o).for_each(|(a, b)| *a += wt as f64 * b);
            }
            let sh13: Vec<f64> = sh13.iter().map(|&v| v as f64).collect();
            let sh2: Vec<f64> = sh2.iter().map(|&v| v as f64).collect();
            let o = swiglu(&sh13, &sh2, &x64, sp.shared_hidden);
            y.iter_mut().zip(o).for_each(|(a, b)| *a += b);
        }
        out
    }
}

#[test]
fn fused_equals_naive_on_every_kernel_set() {
    for (exact, t, seed) in [(false, 1, 1), (false, 9, 2), (true, 1, 3), (true, 40, 4), (false, 64, 5)] {
        let l = layer(64, 96, 8, 3, exact, seed);
        let (sp, w) = (&l.spec, l.weights());
        let x = Rng(seed * 7 + 1).vec(t * sp.dim, 1.0);
        let want = reference::moe_ffn_naive(sp, &w, &x, t);
        for threads in [1, 3] {
            let pool = ThreadPool::new(threads);
            for ks in Kernels::available() {
                let mut out = vec![f32::NAN; t * sp.dim];
                moe_ffn(sp, &w, &x, t, &mut out, &mut MoeScratch::default(), &pool, &ks).unwrap();
                let diff = out.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits());
                assert!(diff.is_none(), "exact {exact} t {t} kernel {} threads {threads}: first difference at {diff:?}", ks.kind.name());
            }
        }
    }
}

#[test]
fn exact_path_equals_the_dequantized_float64_forward() {
    let l = layer(64, 96, 8, 3, true, 11);
    let t = 5;
    let x = Rng(99).vec(t * 64, 1.0);
    let mut out = vec![0f32; t * 64];
    moe_ffn(&l.spec, &l.weights(), &x, t, &mut out, &mut MoeScratch::default(), &ThreadPool::new(2), &Kernels::best()).unwrap();
    let want = l.f64_forward(&x, t);
    let norm = want.iter().map(|v| v * v).sum::<f64>().sqrt();
    let err = out.iter().zip(&want).map(|(&a, b)| (a as f64 - b).powi(2)).sum::<f64>().sqrt();
    assert!(err <= 1e-5 * norm, "relative error {}", err / norm);
    // the Q8 path stays close too (int8 activations per output group)
    let mut q8 = vec![0f32; t * 64];
    let sp = MoeSpec { exact: false, ..l.spec };
    moe_ffn(&sp, &l.weights(), &x, t, &mut q8, &mut MoeScratch::default(), &ThreadPool::new(2), &Kernels::best()).unwrap();
    let err = q8.iter().zip(&want).map(|(&a, b)| (a as f64 - b).powi(2)).sum::<f64>().sqrt();
    assert!(err <= 2e-2 * norm, "Q8 relative error {}", err / norm);
}

#[test]
fn wrong_scale_counts_are_errors() {
    let l = layer(64, 96, 4, 2, false, 5);
    let mut w = l.weights();
    w.w13_scales = (&l.s13[..l.s13.len() - 1]).into();
    let x = vec![0.5f32; 64];
    let mut out = vec![0f32; 64];
    let e = moe_ffn(&l.spec, &w, &x, 1, &mut out, &mut MoeScratch::default(), &ThreadPool::new(1), &Kernels::best()).unwrap_err();
    assert!(e.to_string().contains("output-grouped"), "{e}");
    // a group that does not divide the output dimension
    let sp = MoeSpec { hidden: 80, ..l.spec };
    assert!(sp.validate().is_err());
}
