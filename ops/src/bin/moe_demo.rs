//! `moe_demo`: the fused MoE layer on a MobileMoE-S-shaped layer (random INT4 weights):
//! parity against the naive reference and the exact path, then latency.

use clap::Parser;
use mobilemoe_ops::testing::{Rng, SLikeLayer};
use mobilemoe_ops::*;
use std::time::Instant;

/// Runs the fused MoE FFN on MobileMoE-S's layer (D=768, F=384, 60 experts, top-4, shared
/// F=1536, INT4 g32) and prints parity against the naive reference and speed.
#[derive(Parser)]
#[command(name = "moe_demo", after_help = "Environment: MOBILEMOE_THREADS (pool size), MOBILEMOE_KERNEL (kernel set).")]
struct Cli {}

fn main() {
    Cli::parse();
    let mut r = Rng(0x1234_5678_9abc_def1);
    let layer = SLikeLayer::random(&mut r, true, true);
    let (spec, w) = (layer.spec, layer.weights());
    let (d, f, e, fs) = (spec.dim, spec.hidden, spec.router.num_experts, spec.shared_hidden);
    let mut gen = |n: usize, sc: f32| r.vec(n, sc);
    let pool = ThreadPool::global();
    let ks = Kernels::best();
    println!("MobileMoE-S-like layer: D={d} F={f} E={e} top-4 sigmoid+bias, shared F={fs}, INT4 group 32");
    println!("kernel: {}  threads: {}", ks.kind.name(), pool.threads());

    // Parity: fused (dispatched SIMD kernel, threads) vs the naive scalar reference.
    let t = 4;
    let x = gen(t * d, 1.0);
    let mut out = vec![0f32; t * d];
    let mut scratch = MoeScratch::default();
    moe_ffn(&spec, &w, &x, t, &mut out, &mut scratch, &pool, &ks).unwrap();
    let want = reference::moe_ffn_naive(&spec, &w, &x, t);
    let bit_equal = out.iter().zip(&want).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
    let exact_spec = MoeSpec { exact: true, ..spec };
    let mut out_exact = vec![0f32; t * d];
    moe_ffn(&exact_spec, &w, &x, t, &mut out_exact, &mut scratch, &pool, &ks).unwrap();
    let num: f32 = out.iter().zip(&out_exact).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f32 = out_exact.iter().map(|b| b * b).sum();
    println!(
        "parity: fused vs naive reference: {bit_equal}/{} outputs bit-identical; \
         int8-activation path vs exact fp32-activation path: rel. L2 error {:.2e}",
        out.len(),
        (num / den).sqrt()
    );

    println!("\n| tokens | median ms | tokens/s |\n|---:|---:|---:|");
    for &t in &[1usize, 8, 32, 128] {
        let x = gen(t * d, 1.0);
        let mut out = vec![0f32; t * d];
        let iters = if t == 1 { 200 } else { 20 };
        let mut times = Vec::with_capacity(iters);
        moe_ffn(&spec, &w, &x, t, &mut out, &mut scratch, &pool, &ks).unwrap();
        for _ in 0..iters {
            let t0 = Instant::now();
            moe_ffn(&spec, &w, &x, t, &mut out, &mut scratch, &pool, &ks).unwrap();
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let med = times[iters / 2];
        println!("| {t} | {med:.3} | {:.0} |", t as f64 / med * 1e3);
    }
    if bit_equal != out.len() {
        eprintln!("PARITY FAILED");
        std::process::exit(1);
    }
}
