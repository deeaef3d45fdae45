//! Instruction-count bench for the expert GEMMs of a MobileMoE-S layer (D=1024, F=512, group 32,
//! INT4): fused gate+up `[2F=1024, D=1024]` and down `[D=1024, F=512]`, decode (1 token) and
//! prefill (128 tokens), Q8 path, one thread, all tiles; and one decode step of MobileMoE-S's
//! attention layer (D=768, 12 query heads, 4 KV heads, head_dim 64, interleaved RoPE + QK-norm,
//! fp16 KV cache, Q8 projections, one thread) at context depths 128 and 1024 (`attn_d128`,
//! `attn_d1024`: the whole op, projections included) and a 128-token prefill from position 0
//! (`attn_p128`).
//!
//! Kernel: `Kernels::best()`, i.e. the fastest this CPU supports unless `MOBILEMOE_KERNEL=
//! scalar|neon|neon-dotprod|neon-i8mm|avx2|avx512vnni` selects another (ignored if unsupported).
//! Each measured region is bracketed by two `getppid()` syscalls (markers for the qemu plugin
//! `scripts/qemu_plugin/insn_marker.c`, which prints its running instruction count on each);
//! stdout lists the regions in order: `REGION <name>`. Run by `scripts/insn_count_aarch64.sh`.
//! Natively it also prints wall time per region (a rough sanity check only).

use clap::Parser;
use mobilemoe_ops::act::QuantActs;
use mobilemoe_ops::decoder::{attention, AttentionScratch, AttentionSpec, AttentionWeights, KvCache, KvDType, KvSlice, RopeStyle};
use mobilemoe_ops::kernels::Kernels;
use mobilemoe_ops::testing::Rng;
use mobilemoe_ops::{MatrixSpec, PackedMatrix, PackedRef, ThreadPool, WeightBits};
use std::hint::black_box;
use std::time::Instant;

fn marker() {
    black_box(std::os::unix::process::parent_id());
}

/// Whether `--only` (a substring of region names) selects the region `name`.
fn selected(name: &str, only: Option<&str>) -> bool {
    match only {
        Some(o) => name.contains(o),
        None => true,
    }
}

/// One measured region: `step` once between the two markers, then the `REGION` line with its
/// wall time (natively a rough check; under qemu the plugin's counts are the numbers).
fn measure(name: &str, mut step: impl FnMut()) {
    let t = Instant::now();
    marker();
    step();
    marker();
    let dt = t.elapsed();
    println!("REGION {name} {:.3} ms", dt.as_secs_f64() * 1e3);
}

/// Instruction-count bench of the S-layer expert GEMMs (decode and prefill, Q8, one thread); run by
/// scripts/insn_count_aarch64.sh under qemu with the insn_marker plugin.
#[derive(Parser)]
#[command(name = "insn_bench", after_help = "Environment: MOBILEMOE_KERNEL (kernel set), INSN_BENCH_ONLY (as --only).")]
struct Cli {
    /// Only the regions whose name contains this text (gate_up_m1, down_m1, gate_up_m128, down_m128,
    /// attn_d128, attn_d1024, attn_p128).
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let ks = Kernels::best();
    println!("KERNEL {}", ks.kind.name());
    let mut r = Rng(0x1234_5678_9abc_def1);
    let (d, f, group) = (1024usize, 512usize, 32usize);
    let mats = [("gate_up", 2 * f, d), ("down", d, f)];
    let only = cli.only.or_else(|| std::env::var("INSN_BENCH_ONLY").ok());
    for &m in &[1usize, 128] {
        for &(name, n, k) in &mats {
            let region = format!("{name}_m{m}");
            if !selected(&region, only.as_deref()) {
                continue;
            }
            let spec = MatrixSpec::new(n, k, group, WeightBits::Int4).unwrap();
            let data: Vec<u8> = (0..spec.data_bytes()).map(|_| r.next_u64() as u8).collect();
            let scales: Vec<f32> = (0..spec.scale_count()).map(|_| r.f() * 0.01).collect();
            let w = PackedRef::new(spec, &data, &scales).unwrap();
            let x: Vec<f32> = (0..m * k).map(|_| r.f()).collect();
            let mut qa = QuantActs::default();
            qa.quantize(&x, m, k, group).unwrap();
            let a = qa.as_ref();
            let mut out = vec![0f32; m * n];
            let mut ok = false;
            measure(&region, || ok = ks.gemm_q8(&w, 0..spec.tiles(), &a, &mut out, n));
            assert!(ok);
            black_box(&out);
        }
    }
    attention_regions(&ks, &mut r, only.as_deref());
}

/// One decode token of S's attention layer at each depth: the cache's first `depth` slots hold
/// random fp16 K/V (written directly: a qemu prefill of 1024 tokens would dominate the run), the
/// token at position `depth` attends to slots `0..=depth`. A first call outside the markers grows
/// the scratch buffers, so allocation is not counted.
fn attention_regions(ks: &Kernels, r: &mut Rng, only: Option<&str>) {
    let (d, hq, hkv, hd, max_seq) = (768usize, 12usize, 4usize, 64usize, 2048usize);
    let spec = AttentionSpec {
        dim: d,
        n_heads: hq,
        n_kv_heads: hkv,
        head_dim: hd,
        max_seq_len: max_seq,
        rope: RopeStyle::Interleaved,
        exact: false,
        qk_norm: Some(1e-5),
        window: 0,
    };
    let packed = |n: usize, k: usize, r: &mut Rng| {
        PackedMatrix::quantize(&r.vec(n * k, 0.5), MatrixSpec::new(n, k, 32, WeightBits::Int4).unwrap()).unwrap()
    };
    let wqkv = packed(spec.qkv_width(), d, r);
    let wo = packed(d, spec.q_width(), r);
    let cos = r.vec(max_seq * hd / 2, 1.0);
    let sin = r.vec(max_seq * hd / 2, 1.0);
    let w = AttentionWeights { wqkv: wqkv.as_ref(), wo: wo.as_ref(), cos: &cos, sin: &sin };
    let mut cache = KvCache::new(KvDType::F16, hkv, max_seq, hd).unwrap();
    {
        let (kc, vc) = cache.views();
        for c in [kc, vc] {
            if let KvSlice::F16(s) = c {
                for x in s.iter_mut() {
                    *x = half::f16::from_f32(r.f());
                }
            }
        }
    }
    let pool = ThreadPool::new(1);
    let mut scratch = AttentionScratch::default();
    let x = r.vec(d, 1.0);
    let mut out = vec![0f32; d];
    for depth in [128i64, 1024] {
        let region = format!("attn_d{depth}");
        if !selected(&region, only) {
            continue;
        }
        let (mut kc, mut vc) = cache.views();
        let mut step = || attention(&spec, &w, &x, &[depth], &mut kc, &mut vc, &mut out, &mut scratch, &pool, ks).unwrap();
        step();
        measure(&region, &mut step);
        black_box(&out);
    }
    // prefill of 128 tokens at positions 0..128 (overwrites those slots; the decode regions ran)
    if selected("attn_p128", only) {
        let t_n = 128usize;
        let xs = r.vec(t_n * d, 1.0);
        let pos: Vec<i64> = (0..t_n as i64).collect();
        let mut outs = vec![0f32; t_n * d];
        let (mut kc, mut vc) = cache.views();
        let mut step = || attention(&spec, &w, &xs, &pos, &mut kc, &mut vc, &mut outs, &mut scratch, &pool, ks).unwrap();
        step();
        measure("attn_p128", &mut step);
        black_box(&outs);
    }
}
