//! MoE layer benchmark: `mobilemoe_ops::moe_ffn` on S/M/L-like layers (INT4, group 32, sigmoid
//! routing, shared expert), tokens x threads, warm (weights L3-resident) and cold (the call cycles
//! through layer copies whose touched bytes exceed L3, so weights stream from DRAM), against the
//! scalar reference kernel and a streaming-read memory roofline measured in the same run.
//!
//! `cargo run --release -p mobilemoe-ops --bin moe_bench -- [--quick] [--json] [--layers S,M,L]
//!  [--tokens 1,8,32,128] [--threads 1,2] [--kernel NAME] [--no-scalar] [--no-cold]`

use clap::Parser;
use mobilemoe_ops::kernels::{KernelKind, Kernels};
use mobilemoe_ops::quant::{MatrixSpec, WeightBits};
use mobilemoe_ops::testing::Rng;
use mobilemoe_ops::*;
use std::time::Instant;

/// Fused MoE FFN benchmark (mobilemoe_ops::moe_ffn).
#[derive(Parser)]
#[command(name = "moe_bench", after_help = NOTES)]
struct Cli {
    /// Short run (CI smoke): layer S, tokens 1,128, small roofline buffer, few iterations.
    #[arg(long)]
    quick: bool,
    /// One JSON object per line instead of the markdown table.
    #[arg(long)]
    json: bool,
    /// Comma-separated subset of S,M,L (default S,M,L; quick: S). Names that match no layer
    /// measure only the roofline.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    layers: Option<Vec<String>>,
    /// Token counts (default 1,8,32,128; quick: 1,128).
    #[arg(long, value_delimiter = ',', value_name = "LIST", value_parser = positive)]
    tokens: Option<Vec<usize>>,
    /// Thread counts.
    #[arg(long, value_delimiter = ',', value_name = "LIST", value_parser = positive, default_value = "1,2")]
    threads: Vec<usize>,
    /// Kernel set: scalar, avx2, avx512vnni, neon, ... (default: the best for this CPU).
    #[arg(long, value_name = "NAME", value_parser = kernel_set)]
    kernel: Option<Kernels>,
    /// Skip the scalar-reference column.
    #[arg(long)]
    no_scalar: bool,
    /// Skip the cold (DRAM-streaming) variant.
    #[arg(long)]
    no_cold: bool,
    /// Target measuring time per row in ms (default 400; quick: 60).
    #[arg(long, value_name = "MS", value_parser = positive_ms)]
    budget_ms: Option<f64>,
    /// Time the bare kernels (1 thread, min of many calls) on MobileMoE-S's expert shapes.
    #[arg(long)]
    gemm_only: bool,
}

fn positive(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(format!("expected a positive integer, got {s:?}")),
    }
}

fn positive_ms(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("expected a positive number of milliseconds, got {s:?}")),
    }
}

fn kernel_set(s: &str) -> std::result::Result<Kernels, String> {
    let kind = KernelKind::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = KernelKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown kernel set {s:?} (one of {})", names.join(", "))
    })?;
    Kernels::get(kind).ok_or_else(|| format!("kernel set {s} is not supported on this CPU"))
}

const NOTES: &str = "Layers (MobileMoE's published shapes; INT4, group 32, sigmoid top-k routing with renormalisation, shared expert):
  S: D=768  F=384 E=60 top-4 shared F=1536  (MobileMoE-S, 20 layers)
  M: D=1024 F=512 E=60 top-4 shared F=2048  (MobileMoE-M, inferred from its totals: 26 layers)
  L: D=1280 F=640 E=60 top-4 shared F=2560  (MobileMoE-L, from its model card: 32 layers)

Columns: warm = the same layer every call (weights of the hit experts stay in the last-level cache);
cold = calls cycle through N layer copies so that N x (bytes touched per call) > 2 x LLC (read from
the machine; each copy holds only the experts it touches, at rotated slots), i.e.
weights come from DRAM as in a real decode over many layers. bytes = weight bytes read per call
(distinct experts hit + shared expert + router, data + scales). GB/s = bytes / median time.
roofline = bytes / (streaming-read bandwidth with the same thread count, measured in this run);
%roof = roofline time / median time. GOP/s counts 2 ops per multiply-add (router + experts + shared).
scalar = the same call with the scalar reference kernel (fewer iterations; '-' where skipped
because it would take too long). cpu ms = process CPU time per call over all threads (includes the
pool's spin-waiting): on a shared machine, compare it with ms median to see time lost to preemption.";

#[derive(Clone, Copy)]
struct LayerShape {
    name: &'static str,
    d: usize,
    f: usize,
    e: usize,
    k: usize,
    fs: usize,
}

/// MobileMoE's published layer shapes (docs/mobilemoe_format.md; M is inferred from its totals).
const LAYERS: [LayerShape; 3] = [
    LayerShape { name: "S", d: 768, f: 384, e: 60, k: 4, fs: 1536 },
    LayerShape { name: "M", d: 1024, f: 512, e: 60, k: 4, fs: 2048 },
    LayerShape { name: "L", d: 1280, f: 640, e: 60, k: 4, fs: 2560 },
];

/// The last-level cache size read from the machine (Linux sysfs: the largest data/unified cache
/// of cpu0), or 32 MiB if it cannot be read. VMs may report huge L3s (480 MiB seen): trust the
/// machine, not a constant.
fn llc_bytes() -> usize {
    let mut best = 0usize;
    for i in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
        let Ok(size) = std::fs::read_to_string(format!("{dir}/size")) else { continue };
        let ty = std::fs::read_to_string(format!("{dir}/type")).unwrap_or_default();
        if ty.trim() == "Instruction" {
            continue;
        }
        let t = size.trim();
        let (num, mul) = match t.chars().last() {
            Some('K') => (&t[..t.len() - 1], 1usize << 10),
            Some('M') => (&t[..t.len() - 1], 1 << 20),
            Some('G') => (&t[..t.len() - 1], 1 << 30),
            _ => (t, 1),
        };
        if let Ok(n) = num.parse::<usize>() {
            best = best.max(n * mul);
        }
    }
    if best == 0 {
        32 << 20
    } else {
        best
    }
}

/// One layer's buffers (random packed weights: the values do not matter for speed).
#[derive(Clone)]
struct LayerBuf {
    router_w: Vec<f32>,
    bias: Vec<f32>,
    w13: Vec<u8>,
    w13_s: Vec<f32>,
    w2: Vec<u8>,
    w2_s: Vec<f32>,
    sh13: Vec<u8>,
    sh13_s: Vec<f32>,
    sh2: Vec<u8>,
    sh2_s: Vec<f32>,
    gate: Vec<f32>,
}

fn moe_spec(l: &LayerShape) -> MoeSpec {
    MoeSpec {
        dim: l.d,
        hidden: l.f,
        shared_hidden: l.fs,
        group: 32,
        bits: WeightBits::Int4,
        router: RouterConfig {
            num_experts: l.e,
            top_k: l.k,
            score_func: ScoreFunc::Sigmoid,
            renormalize: true,
            route_scale: 2.5,
            renorm_eps: 1e-20,
            ..Default::default()
        },
        exact: false,
        scales_out: false,
    }
}

fn rand_matrix(r: &mut Rng, spec: MatrixSpec, count: usize) -> (Vec<u8>, Vec<f32>) {
    let mut d = vec![0u8; spec.data_bytes() * count];
    r.fill_bytes(&mut d);
    let s = (0..spec.scale_count() * count).map(|_| 0.002 + 0.001 * r.f()).collect();
    (d, s)
}

impl LayerBuf {
    fn random(spec: &MoeSpec, seed: u64) -> Self {
        let mut r = Rng(seed | 1);
        let e = spec.router.num_experts;
        let (w13, w13_s) = rand_matrix(&mut r, spec.w13_spec().unwrap(), e);
        let (w2, w2_s) = rand_matrix(&mut r, spec.w2_spec().unwrap(), e);
        let (sh13, sh13_s) = rand_matrix(&mut r, spec.shared_w13_spec().unwrap(), 1);
        let (sh2, sh2_s) = rand_matrix(&mut r, spec.shared_w2_spec().unwrap(), 1);
        let rs = 1.0 / (spec.dim as f32).sqrt();
        Self {
            router_w: (0..e * spec.dim).map(|_| r.f() * rs).collect(),
            bias: (0..e).map(|_| r.f() * 0.1).collect(),
            w13,
            w13_s,
            w2,
            w2_s,
            sh13,
            sh13_s,
            sh2,
            sh2_s,
            gate: (0..spec.dim).map(|_| r.f() * rs).collect(),
        }
    }
    /// A copy whose router rows are rotated by `rot` (expert e's row moves to slot (e+rot) % E)
    /// and which holds the data of the experts in `hit` (at their rotated slots) only; the other
    /// slots are zero pages never written (not resident). With the same input it computes the same
    /// output while touching its own, distinct pages.
    fn sparse_rotated(&self, spec: &MoeSpec, hit: &[usize], rot: usize) -> Self {
        let e = spec.router.num_experts;
        let d = spec.dim;
        let (b13, s13) = (self.w13.len() / e, self.w13_s.len() / e);
        let (b2, s2) = (self.w2.len() / e, self.w2_s.len() / e);
        let mut c = LayerBuf {
            router_w: vec![0.0; self.router_w.len()],
            bias: vec![0.0; e],
            w13: vec![0u8; self.w13.len()],
            w13_s: vec![0.0; self.w13_s.len()],
            w2: vec![0u8; self.w2.len()],
            w2_s: vec![0.0; self.w2_s.len()],
            sh13: self.sh13.clone(),
            sh13_s: self.sh13_s.clone(),
            sh2: self.sh2.clone(),
            sh2_s: self.sh2_s.clone(),
            gate: self.gate.clone(),
        };
        for src in 0..e {
            let dst = (src + rot) % e;
            c.router_w[dst * d..(dst + 1) * d].copy_from_slice(&self.router_w[src * d..(src + 1) * d]);
            c.bias[dst] = self.bias[src];
        }
        for &src in hit {
            let dst = (src + rot) % e;
            c.w13[dst * b13..(dst + 1) * b13].copy_from_slice(&self.w13[src * b13..(src + 1) * b13]);
            c.w13_s[dst * s13..(dst + 1) * s13].copy_from_slice(&self.w13_s[src * s13..(src + 1) * s13]);
            c.w2[dst * b2..(dst + 1) * b2].copy_from_slice(&self.w2[src * b2..(src + 1) * b2]);
            c.w2_s[dst * s2..(dst + 1) * s2].copy_from_slice(&self.w2_s[src * s2..(src + 1) * s2]);
        }
        c
    }
    fn weights(&self, spec: &MoeSpec) -> MoeWeights<'_> {
        MoeWeights {
            router_w: &self.router_w,
            expert_bias: Some(&self.bias),
            w13: &self.w13,
            w13_scales: (&self.w13_s).into(),
            w2: &self.w2,
            w2_scales: (&self.w2_s).into(),
            shared: Some(SharedExpert {
                w13: PackedRef::new(spec.shared_w13_spec().unwrap(), &self.sh13, &self.sh13_s).unwrap(),
                w2: PackedRef::new(spec.shared_w2_spec().unwrap(), &self.sh2, &self.sh2_s).unwrap(),
                gate: None, // MobileMoE's shared expert is ungated
            }),
        }
    }
}

use mobilemoe_ops::testing::process_cpu_s;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Streaming-read bandwidth (bytes/s) of `buf` with the pool's threads: median of `passes`.
fn read_bandwidth(buf: &[u64], pool: &ThreadPool, passes: usize) -> f64 {
    let threads = pool.threads();
    let items = threads * 16;
    let per = buf.len().div_ceil(items);
    let sink = std::sync::atomic::AtomicU64::new(0);
    let mut times = vec![];
    for _ in 0..passes + 1 {
        let t0 = Instant::now();
        pool.run(items, &|i| {
            let s = &buf[(i * per).min(buf.len())..((i + 1) * per).min(buf.len())];
            let mut acc = [0u64; 8];
            for c in s.chunks_exact(8) {
                for l in 0..8 {
                    acc[l] = acc[l].wrapping_add(c[l]);
                }
            }
            sink.fetch_add(acc.iter().fold(0u64, |a, &b| a.wrapping_add(b)), std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        times.push(t0.elapsed().as_secs_f64());
    }
    times.remove(0); // first pass warms the pool / TLB
    std::hint::black_box(sink.into_inner());
    (buf.len() * 8) as f64 / median(&mut times)
}

struct Row {
    layer: &'static str,
    variant: &'static str,
    kernel: &'static str,
    tokens: usize,
    threads: usize,
    iters: usize,
    copies: usize,
    ms_median: f64,
    ms_min: f64,
    cpu_ms: f64,
    experts_hit: usize,
    bytes: usize,
    gbps: f64,
    gops: f64,
    roofline_ms: f64,
    scalar_ms: Option<f64>,
}

/// `--json`: the roofline line (`bench_moe_vs_dense.py` reads its `gbps`).
#[derive(serde::Serialize)]
struct RooflineJson {
    kind: &'static str,
    threads: usize,
    buffer_mib: usize,
    gbps: f64,
}

/// `--json`: one measured row (`null` scalar columns where the scalar kernel was not run).
#[derive(serde::Serialize)]
struct MoeJson {
    kind: &'static str,
    layer: &'static str,
    variant: &'static str,
    kernel: &'static str,
    tokens: usize,
    threads: usize,
    ms_median: f64,
    ms_min: f64,
    cpu_ms_per_call: f64,
    iters: usize,
    copies: usize,
    experts_hit: usize,
    bytes_read: usize,
    gbps: f64,
    gops: f64,
    roofline_ms: f64,
    pct_roofline: f64,
    scalar_ms: Option<f64>,
    speedup_vs_scalar: Option<f64>,
}

/// One JSON object per line (non-finite numbers become `null`).
fn json_line<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn moe_json_line(r: &Row, ratio: Option<f64>) -> String {
    json_line(&MoeJson {
        kind: "moe",
        layer: r.layer,
        variant: r.variant,
        kernel: r.kernel,
        tokens: r.tokens,
        threads: r.threads,
        ms_median: round(r.ms_median, 4),
        ms_min: round(r.ms_min, 4),
        cpu_ms_per_call: round(r.cpu_ms, 4),
        iters: r.iters,
        copies: r.copies,
        experts_hit: r.experts_hit,
        bytes_read: r.bytes,
        gbps: round(r.gbps, 3),
        gops: round(r.gops, 3),
        roofline_ms: round(r.roofline_ms, 4),
        pct_roofline: round(100.0 * r.roofline_ms / r.ms_median, 2),
        scalar_ms: r.scalar_ms.map(|v| round(v, 4)),
        speedup_vs_scalar: ratio.map(|v| round(v, 4)),
    })
}

/// `v` rounded to `digits` decimals (the precision the table prints).
fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

/// Times `iters` calls (after one warm-up), cycling through `layers`; returns (median, min) ms.
#[allow(clippy::too_many_arguments)]
fn time_calls(
    spec: &MoeSpec,
    layers: &[LayerBuf],
    x: &[f32],
    t: usize,
    out: &mut [f32],
    scratch: &mut MoeScratch,
    pool: &ThreadPool,
    ks: &Kernels,
    budget_s: f64,
    min_iters: usize,
    max_iters: usize,
) -> (f64, f64, usize, f64) {
    let ws: Vec<MoeWeights<'_>> = layers.iter().map(|l| l.weights(spec)).collect();
    // Warm-up: one pass over every copy (and the scratch buffers).
    for w in &ws {
        moe_ffn(spec, w, x, t, out, scratch, pool, ks).unwrap();
    }
    let mut times = vec![];
    let start = Instant::now();
    let cpu0 = process_cpu_s();
    let mut i = 0;
    while times.len() < min_iters || (start.elapsed().as_secs_f64() < budget_s && times.len() < max_iters) {
        let w = &ws[i % ws.len()];
        i += 1;
        let t0 = Instant::now();
        moe_ffn(spec, w, x, t, out, scratch, pool, ks).unwrap();
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let cpu_ms = (process_cpu_s() - cpu0) * 1e3 / times.len() as f64;
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let n = times.len();
    (median(&mut times), min, n, cpu_ms)
}

fn main() {
    let cli = Cli::parse();
    let (quick, json, with_scalar, with_cold, gemm_mode) = (cli.quick, cli.json, !cli.no_scalar, !cli.no_cold, cli.gemm_only);
    let layer_names = cli.layers.map(|v| v.iter().map(|s| s.trim().to_uppercase()).collect::<Vec<String>>());
    let (tokens_list, threads_list, kernel, budget_ms) = (cli.tokens, cli.threads, cli.kernel, cli.budget_ms);
    let ks = kernel.unwrap_or_else(Kernels::best);
    if gemm_mode {
        gemm_only(ks);
        return;
    }
    let scalar = Kernels::get(KernelKind::Scalar).unwrap();
    let layer_names = layer_names.unwrap_or_else(|| if quick { vec!["S".into()] } else { vec!["S".into(), "M".into(), "L".into()] });
    let tokens_list = tokens_list.unwrap_or_else(|| if quick { vec![1, 128] } else { vec![1, 8, 32, 128] });
    let budget_s = budget_ms.unwrap_or(if quick { 60.0 } else { 400.0 }) / 1e3;
    let max_t = *tokens_list.iter().max().unwrap_or(&1);

    // Roofline: streaming read of a buffer 4x the last-level cache (at least 1 GiB), so that it
    // is an upper bound for any weight-streaming call (a cold row above 100% would mean the cold
    // setup still hits the cache).
    let llc = llc_bytes();
    let roof_bytes: usize = if quick { 256 << 20 } else { (4 * llc).max(1 << 30) };
    let mut roof = std::collections::BTreeMap::new();
    {
        let mut buf = vec![0u64; roof_bytes / 8];
        for (i, v) in buf.iter_mut().enumerate() {
            *v = i as u64;
        }
        for &th in &threads_list {
            let pool = ThreadPool::new(th);
            let bw = read_bandwidth(&buf, &pool, if quick { 3 } else { 5 });
            roof.insert(th, bw);
        }
    }
    if json {
        for (&threads, &bw) in &roof {
            println!("{}", json_line(&RooflineJson { kind: "roofline", threads, buffer_mib: roof_bytes >> 20, gbps: round(bw / 1e9, 2) }));
        }
    } else {
        println!("kernel: {} (scalar reference: {})", ks.kind.name(), if with_scalar { "measured, fewer iterations" } else { "skipped" });
        println!("last-level cache (read from the machine): {} MiB", llc >> 20);
        for (&th, &bw) in &roof {
            println!("roofline: streaming read of {} MiB, {th} thread(s): {:.1} GB/s", roof_bytes >> 20, bw / 1e9);
        }
        println!();
        println!("| layer | variant | tokens | threads | ms median | ms min | cpu ms | iters | experts hit | MB read | GB/s | GOP/s | roofline ms | %roof | scalar ms | x scalar |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    }

    for shape in LAYERS.iter().filter(|l| layer_names.iter().any(|n| n == l.name)) {
        let spec = moe_spec(shape);
        let base = LayerBuf::random(&spec, 0x5EED ^ shape.d as u64);
        let mut rx = Rng(99);
        let x_all: Vec<f32> = (0..max_t * shape.d).map(|_| rx.f()).collect();
        let mut out = vec![0f32; max_t * shape.d];
        let mut copies: Vec<LayerBuf> = vec![base];
        for &t in &tokens_list {
            let x = &x_all[..t * shape.d];
            let out = &mut out[..t * shape.d];
            // Distinct experts hit and bytes read per call.
            let mut scratch = MoeScratch::default();
            let pool1 = ThreadPool::new(1);
            moe_ffn(&spec, &copies[0].weights(&spec), x, t, out, &mut scratch, &pool1, &ks).unwrap();
            let hit = scratch.last_counts.iter().filter(|&&c| c > 0).count();
            let bytes = MoeWeights::bytes_read(&spec, hit);
            let macs = t * (shape.e * shape.d + shape.k * 3 * shape.f * shape.d + 3 * shape.fs * shape.d);
            // Cold: enough copies that the bytes touched between two uses of any byte exceed 2 x LLC.
            // A copy holds only the experts its call touches (the rest stay untouched zero pages,
            // so memory is copies x bytes touched), and each copy routes to different expert slots
            // (router rows rotated), so no two copies share touched pages.
            let want_copies = if with_cold {
                (2 * llc)
                    .div_ceil(bytes.max(1))
                    .saturating_add(1)
                    .clamp(2, (if quick { 512usize << 20 } else { 6usize << 30 }) / bytes.max(1))
            } else {
                1
            };
            // copies are specific to this call's routing: rebuild them for every token count
            copies.truncate(1);
            if copies.len() < want_copies {
                let hit: Vec<usize> = scratch.last_counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(e, _)| e).collect();
                while copies.len() < want_copies {
                    let c = copies.len();
                    copies.push(copies[0].sparse_rotated(&spec, &hit, c));
                }
            }
            for &th in &threads_list {
                let pool = ThreadPool::new(th);
                let roof_ms = bytes as f64 / roof[&th] * 1e3;
                // Scalar reference: only where it stays affordable (about 3 ns per multiply-add).
                let est_scalar_s = macs as f64 * 3e-9 / th as f64;
                let scalar_ms = (with_scalar && (!quick || t == 1) && est_scalar_s < if quick { 0.5 } else { 2.5 }).then(|| {
                    let iters = if est_scalar_s < 0.05 { 5 } else { 1 };
                    time_calls(&spec, &copies[..1], x, t, out, &mut scratch, &pool, &scalar, 0.0, iters, iters).0
                });
                let mut variants = vec![("warm", 1usize)];
                if with_cold {
                    variants.push(("cold", want_copies));
                }
                for (variant, nc) in variants {
                    let (ms, ms_min, iters, cpu_ms) =
                        time_calls(&spec, &copies[..nc], x, t, out, &mut scratch, &pool, &ks, budget_s, if quick { 5 } else { 11 }, 20_000);
                    let row = Row {
                        layer: shape.name,
                        variant,
                        kernel: ks.kind.name(),
                        tokens: t,
                        threads: th,
                        iters,
                        copies: nc,
                        ms_median: ms,
                        ms_min,
                        cpu_ms,
                        experts_hit: hit,
                        bytes,
                        gbps: bytes as f64 / (ms * 1e-3) / 1e9,
                        gops: 2.0 * macs as f64 / (ms * 1e-3) / 1e9,
                        roofline_ms: roof_ms,
                        scalar_ms: if variant == "warm" { scalar_ms } else { None },
                    };
                    print_row(&row, json);
                }
            }
        }
    }
}

fn print_row(r: &Row, json: bool) {
    let ratio = r.scalar_ms.map(|s| s / r.ms_median);
    if json {
        println!("{}", moe_json_line(r, ratio));
    } else {
        let opt = |v: Option<f64>, p: usize| v.map(|v| format!("{v:.p$}")).unwrap_or_else(|| "-".into());
        println!(
            "| {} | {}{} | {} | {} | {:.3} | {:.3} | {:.3} | {} | {} | {:.2} | {:.1} | {:.1} | {:.3} | {:.0}% | {} | {} |",
            r.layer,
            r.variant,
            if r.variant == "cold" { format!(" (x{})", r.copies) } else { String::new() },
            r.tokens,
            r.threads,
            r.ms_median,
            r.ms_min,
            r.cpu_ms,
            r.iters,
            r.experts_hit,
            r.bytes as f64 / 1e6,
            r.gbps,
            r.gops,
            r.roofline_ms,
            100.0 * r.roofline_ms / r.ms_median,
            opt(r.scalar_ms, 1),
            opt(ratio, 0),
        );
    }
}

/// Bare kernel timing: one matrix, `m` tokens, 1 thread, min over calls (robust to background load).
fn gemm_only(ks: Kernels) {
    use mobilemoe_ops::act::QuantActs;
    let mut r = Rng(5);
    // MobileMoE-S's expert gate+up, expert down and shared gate+up matrices
    for (n, k) in [(768usize, 768usize), (768, 384), (3072, 768)] {
        for bits in [WeightBits::Int4, WeightBits::Int8] {
            let spec = MatrixSpec::new(n, k, 32, bits).unwrap();
            let (d, s) = rand_matrix(&mut r, spec, 1);
            let w = PackedRef::new(spec, &d, &s).unwrap();
            for m in [1usize, 4, 8, 16, 128] {
                let x: Vec<f32> = (0..m * k).map(|_| r.f()).collect();
                let mut qa = QuantActs::default();
                qa.quantize(&x, m, k, 32).unwrap();
                let mut out = vec![0f32; m * n];
                let mut best = [f64::INFINITY; 2];
                let reps = (200_000_000 / (m * n * k)).clamp(5, 2000);
                for _ in 0..reps {
                    let t0 = Instant::now();
                    assert!(ks.gemm_q8(&w, 0..spec.tiles(), &qa.as_ref(), &mut out, n));
                    best[0] = best[0].min(t0.elapsed().as_secs_f64());
                    let t0 = Instant::now();
                    assert!(ks.gemm_f32(&w, 0..spec.tiles(), &x, m, &mut out, n));
                    best[1] = best[1].min(t0.elapsed().as_secs_f64());
                }
                let macs = (m * n * k) as f64;
                println!(
                    "{} {n}x{k} {bits:?} m={m}: q8 {:.1} us ({:.1} GMAC/s, {:.1} GB/s)  f32 {:.1} us ({:.1} GMAC/s)",
                    ks.kind.name(),
                    best[0] * 1e6,
                    macs / best[0] / 1e9,
                    spec.total_bytes() as f64 / best[0] / 1e9,
                    best[1] * 1e6,
                    macs / best[1] / 1e9
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_has_the_documented_keys_rounding_and_nulls() {
        let r = Row {
            layer: "S",
            variant: "warm",
            kernel: "avx2",
            tokens: 8,
            threads: 2,
            iters: 11,
            copies: 1,
            ms_median: 1.234_567,
            ms_min: 1.0,
            cpu_ms: 2.5,
            experts_hit: 7,
            bytes: 12_345_678,
            gbps: 10.123_456,
            gops: f64::NAN,
            roofline_ms: 0.5,
            scalar_ms: None,
        };
        let v: serde_json::Value = serde_json::from_str(&moe_json_line(&r, None)).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys.len(), 19, "{keys:?}");
        assert_eq!((v["kind"].as_str(), v["layer"].as_str(), v["tokens"].as_u64()), (Some("moe"), Some("S"), Some(8)));
        assert_eq!((v["ms_median"].as_f64(), v["gbps"].as_f64(), v["pct_roofline"].as_f64()), (Some(1.2346), Some(10.123), Some(40.5)));
        assert!(v["gops"].is_null() && v["scalar_ms"].is_null() && v["speedup_vs_scalar"].is_null());
        let roof = json_line(&RooflineJson { kind: "roofline", threads: 2, buffer_mib: 256, gbps: round(12.3456, 2) });
        assert_eq!(roof, r#"{"kind":"roofline","threads":2,"buffer_mib":256,"gbps":12.35}"#);
    }
}
