//! `trace_overhead`: decode-layer latency (one token through a MobileMoE-S-like MoE layer) with
//! (a) no tracing subscriber, (b) a subscriber installed whose filter disables the ops' debug
//! spans, (c) the Perfetto recorder installed but paused, (d) recording.
//!
//! Each mode runs in its own process (tracing's global subscriber can be set once per process),
//! modes interleaved over several rounds; the spread of mode (a) across rounds is the measurement
//! noise. Usage: `trace_overhead [--rounds N] [--iters N]` (parent), or `--mode M` (one child).
//! Env: MOBILEMOE_THREADS.

use mobilemoe_ops::*;
use mobilemoe_runner::profiling::PerfettoRecorder;
use std::time::Instant;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

const MODES: [&str; 4] = ["none", "filtered", "paused", "recording"];

fn child(mode: &str, iters: usize) {
    let mut rec = None;
    match mode {
        "none" => {}
        "filtered" => {
            let (_r, layer) = PerfettoRecorder::new(1 << 16);
            let sub = tracing_subscriber::registry().with(layer.with_filter(tracing_subscriber::filter::LevelFilter::INFO));
            tracing::subscriber::set_global_default(sub).unwrap();
        }
        "paused" | "recording" => {
            let r = PerfettoRecorder::install().unwrap();
            r.set_enabled(mode == "recording");
            rec = Some(r);
        }
        _ => panic!("unknown mode {mode}"),
    }
    let mut r = mobilemoe_ops::testing::Rng(0x1234_5678_9abc_def1);
    // One expert quantized, replicated: same bytes streamed per expert as distinct weights.
    let layer = mobilemoe_ops::testing::SLikeLayer::random(&mut r, false, false);
    let (spec, w) = (layer.spec, layer.weights());
    let d = spec.dim;
    let mut gen = |n: usize, sc: f32| r.vec(n, sc);
    let pool = ThreadPool::global();
    let ks = Kernels::best();
    let mut scratch = MoeScratch::default();
    let xs: Vec<Vec<f32>> = (0..16).map(|_| gen(d, 1.0)).collect();
    let mut out = vec![0f32; d];
    for x in &xs {
        moe_ffn(&spec, &w, x, 1, &mut out, &mut scratch, &pool, &ks).unwrap();
    }
    let mut t = Vec::with_capacity(iters);
    for i in 0..iters {
        let t0 = Instant::now();
        moe_ffn(&spec, &w, &xs[i % xs.len()], 1, &mut out, &mut scratch, &pool, &ks).unwrap();
        t.push(t0.elapsed().as_nanos() as f64 / 1e3);
    }
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // Cost of one span (create + enter + exit + close) in this mode: best of 200 batches of 1000.
    let mut span_ns = f64::MAX;
    for _ in 0..200 {
        let t0 = Instant::now();
        for i in 0..1000u64 {
            let _g = tracing::debug_span!("probe", i).entered();
            std::hint::black_box(&_g);
        }
        span_ns = span_ns.min(t0.elapsed().as_nanos() as f64 / 1000.0);
    }
    let events = rec.map(|r| r.stop().threads.iter().map(|t| t.events.len()).sum::<usize>()).unwrap_or(0);
    println!(
        "median_us={:.3} p10_us={:.3} p90_us={:.3} mean_us={:.3} span_ns={span_ns:.1} events={events}",
        t[iters / 2],
        t[iters / 10],
        t[iters * 9 / 10],
        t.iter().sum::<f64>() / iters as f64
    );
}

/// Decode-layer latency with no tracing subscriber, a filtered one, a paused Perfetto recorder and
/// a recording one (each mode in its own process, interleaved over rounds).
#[derive(clap::Parser)]
#[command(name = "trace_overhead")]
struct Args {
    /// Rounds of the four modes (the parent).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Layer calls per run.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..))]
    iters: u64,
    /// Run one mode in this process (what the parent starts).
    #[arg(long, value_parser = MODES)]
    mode: Option<String>,
}

fn main() {
    let Args { rounds, iters, mode } = <Args as clap::Parser>::parse();
    let (iters, rounds) = (iters as usize, rounds as usize);
    if let Some(m) = mode {
        child(&m, iters);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut med: Vec<Vec<f64>> = vec![vec![]; MODES.len()];
    let mut p10: Vec<Vec<f64>> = vec![vec![]; MODES.len()];
    let mut span: Vec<Vec<f64>> = vec![vec![]; MODES.len()];
    println!("decode layer (1 token, D=768 F=384 E=60 top-4 + shared F=1536, INT4 g32), {iters} calls per run");
    for r in 0..rounds {
        for mi in 0..MODES.len() {
            // Rotate the order per round so drift does not favour one mode.
            let m = MODES[(mi + r) % MODES.len()];
            let o = std::process::Command::new(&exe).args(["--mode", m, "--iters", &iters.to_string()]).output().unwrap();
            let s = String::from_utf8_lossy(&o.stdout);
            let field = |k: &str| -> f64 {
                s.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(k))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("child {m} failed: {s} {}", String::from_utf8_lossy(&o.stderr)))
            };
            println!("round {r} {m:>9}: {}", s.trim());
            let i = MODES.iter().position(|x| *x == m).unwrap();
            med[i].push(field("median_us="));
            p10[i].push(field("p10_us="));
            span[i].push(field("span_ns="));
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let base = median(&med[0]);
    let base10 = median(&p10[0]);
    let spread = |v: &[f64]| v.iter().cloned().fold(f64::MIN, f64::max) - v.iter().cloned().fold(f64::MAX, f64::min);
    println!("\n| mode | layer median (us) | vs none | layer p10 (us) | vs none | one span (ns) | 9 spans / layer p10 |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, m) in MODES.iter().enumerate() {
        let (v, v10, sp) = (median(&med[i]), median(&p10[i]), median(&span[i]));
        println!(
            "| {m} | {v:.1} | {:+.1}% | {v10:.1} | {:+.1}% | {sp:.1} | {:.4}% |",
            (v / base - 1.0) * 100.0,
            (v10 / base10 - 1.0) * 100.0,
            9.0 * sp / 1e3 / base10 * 100.0
        );
    }
    println!(
        "\nnoise: spread of the 'none' runs: median {:.1} us ({:.1}%), p10 {:.1} us ({:.1}%)",
        spread(&med[0]),
        spread(&med[0]) / base * 100.0,
        spread(&p10[0]),
        spread(&p10[0]) / base10 * 100.0
    );
}
