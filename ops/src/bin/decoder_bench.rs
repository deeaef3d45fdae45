//! Per-op timings of the decoder ops around the MoE FFN on MobileMoE-S's shape (D=768, 12 heads,
//! 4 KV heads, head_dim 64, vocabulary 128,256): attention at a context depth (decode = 1 token),
//! RMSNorm, embedding, LM head. Prints min and median of `--iters` runs per op.
//!
//! `cargo run --release -p mobilemoe-ops --bin decoder_bench -- --help`

use clap::{Parser, ValueEnum};
use mobilemoe_ops::decoder::*;
use mobilemoe_ops::{linear, Kernels, LinearScratch, MatrixSpec, PackedMatrix, ThreadPool, WeightBits};
use std::time::Instant;

/// Per-op timings of the decoder ops on the S shape (min and median of --iters runs per op).
#[derive(Parser)]
#[command(name = "decoder_bench")]
struct Args {
    /// Threads of the pool.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    threads: u32,
    /// Runs per op.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    iters: u32,
    /// Context depths for attention (comma-separated, below the cache's 2048 positions).
    #[arg(long, value_delimiter = ',', default_value = "128,1024", value_parser = clap::value_parser!(u16).range(..2048))]
    depths: Vec<u16>,
    /// KV cache element type.
    #[arg(long, value_enum, default_value_t = Kv::Fp16)]
    kv: Kv,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kv {
    Fp16,
    Fp32,
}

use mobilemoe_ops::testing::process_cpu_s;

/// How long idle pool workers keep a core busy after the last job: CPU time burnt by the process
/// while the caller sleeps 100 ms after a job (minus the caller's own ~0), per worker, median of 5.
fn idle_spin_us(pool: &ThreadPool) -> f64 {
    let mut v: Vec<f64> = (0..5)
        .map(|_| {
            pool.run(64, &|_| std::hint::black_box(())).unwrap();
            let c0 = process_cpu_s();
            std::thread::sleep(std::time::Duration::from_millis(100));
            (process_cpu_s() - c0) * 1e6 / (pool.threads().max(2) - 1) as f64
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[2]
}

fn time(iters: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (t[0], t[t.len() / 2])
}

fn packed(n: usize, k: usize, seed: u32) -> PackedMatrix {
    let w: Vec<f32> =
        (0..n * k).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16777216.0) - 0.5).collect();
    PackedMatrix::quantize(&w, MatrixSpec::new(n, k, 32, WeightBits::Int4).unwrap()).unwrap()
}

fn main() {
    let a = Args::parse();
    let (threads, iters) = (a.threads as usize, a.iters as usize);
    let kv = match a.kv {
        Kv::Fp16 => KvDType::F16,
        Kv::Fp32 => KvDType::F32,
    };
    let pool = ThreadPool::new(threads);
    let kernels = Kernels::best();
    let (d, hq, hkv, hd, max_seq, vocab) = (768, 12, 4, 64, 2048, 128256);
    let spec = AttentionSpec {
        dim: d,
        n_heads: hq,
        n_kv_heads: hkv,
        head_dim: hd,
        max_seq_len: max_seq,
        rope: RopeStyle::HalfSplit,
        exact: false,
        qk_norm: None,
        window: 0,
    };
    let wqkv = packed(spec.qkv_width(), d, 1);
    let wo = packed(d, spec.q_width(), 2);
    let cos = vec![0.5f32; max_seq * hd / 2];
    let sin = vec![0.5f32; max_seq * hd / 2];
    let w = AttentionWeights { wqkv: wqkv.as_ref(), wo: wo.as_ref(), cos: &cos, sin: &sin };
    let mut cache = KvCache::new(kv, hkv, max_seq, hd).unwrap();
    let mut scratch = AttentionScratch::default();
    let x: Vec<f32> = (0..d).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let mut out = vec![0.0f32; d];
    println!("decoder ops, S shape, {} threads, kernels {}, KV {:?}", threads, kernels.kind.name(), kv);
    println!("{:<28} {:>10} {:>10}", "op", "min us", "median us");
    // projections alone (weights from cache: the attention weights of one layer fit in L2/L3)
    let mut qkv = vec![0.0f32; spec.qkv_width()];
    let mut ls = LinearScratch::default();
    let (mn, md) = time(iters, || linear(&wqkv.as_ref(), None, &x, 1, &mut qkv, false, &mut ls, &pool, &kernels).unwrap());
    println!("{:<28} {:>10.1} {:>10.1}", "wqkv linear (1 token)", mn, md);
    for &depth in &a.depths {
        // fill the cache up to depth (values do not matter for time)
        let (mn, md) = time(iters, || {
            let (mut kc, mut vc) = cache.views();
            attention(&spec, &w, &x, &[depth as i64], &mut kc, &mut vc, &mut out, &mut scratch, &pool, &kernels).unwrap()
        });
        println!("{:<28} {:>10.1} {:>10.1}", format!("attention decode @{depth}"), mn, md);
    }
    let xs: Vec<f32> = (0..128 * d).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let mut outs = vec![0.0f32; 128 * d];
    let pos: Vec<i64> = (0..128).collect();
    let (mn, md) = time(iters.min(20), || {
        let (mut kc, mut vc) = cache.views();
        attention(&spec, &w, &xs, &pos, &mut kc, &mut vc, &mut outs, &mut scratch, &pool, &kernels).unwrap()
    });
    println!("{:<28} {:>10.1} {:>10.1}", "attention prefill-128", mn, md);
    let nw = vec![1.0f32; d];
    let (mn, md) = time(iters, || rms_norm(&x, 1, &nw, 1e-5, &mut out).unwrap());
    println!("{:<28} {:>10.1} {:>10.1}", "rms_norm (1 token)", mn, md);
    let head = packed(vocab, d, 3);
    let mut logits = vec![0.0f32; vocab];
    let mut ds = DenseScratch::default();
    let (mn, md) =
        time(iters.min(50), || lm_head_last(&x, 1, &nw, 1e-5, &head.as_ref(), false, &mut logits, &mut ds, &pool, &kernels).unwrap());
    println!("{:<28} {:>10.1} {:>10.1}", "lm_head (128256 x 768)", mn, md);
    let (mn, md) = time(iters, || embedding(&head.as_ref(), &[12345], &mut out).unwrap());
    println!("{:<28} {:>10.1} {:>10.1}", "embedding (1 token)", mn, md);
    if threads > 1 {
        println!(
            "idle workers after a job: {:.0} us of CPU per worker before sleeping (spin bound {} us, MOBILEMOE_SPIN_US)",
            idle_spin_us(&pool),
            mobilemoe_ops::threadpool::spin_time().as_micros()
        );
    }
}
