//! Instruction-count bench for the expert GEMMs of a MobileMoE-S layer (D=1024, F=512, group 32,
//! INT4): fused gate+up `[2F=1024, D=1024]` and down `[D=1024, F=512]`, decode (1 token) and
//! prefill (128 tokens), Q8 path, one thread, all tiles.
//!
//! Kernel: `Kernels::best()`, i.e. the fastest this CPU supports unless `MOBILEMOE_KERNEL=
//! scalar|neon|neon-dotprod|neon-i8mm|avx2|avx512vnni` selects another (ignored if unsupported).
//! Each measured region is bracketed by two `getppid()` syscalls (markers for the qemu plugin
//! `scripts/qemu_plugin/insn_marker.c`, which prints its running instruction count on each);
//! stdout lists the regions in order: `REGION <name>`. Run by `scripts/insn_count_aarch64.sh`.
//! Natively it also prints wall time per region (a rough sanity check only).

use clap::Parser;
use mobilemoe_ops::act::QuantActs;
use mobilemoe_ops::kernels::Kernels;
use mobilemoe_ops::testing::Rng;
use mobilemoe_ops::{MatrixSpec, PackedRef, WeightBits};
use std::hint::black_box;
use std::time::Instant;

fn marker() {
    black_box(std::os::unix::process::parent_id());
}

/// Instruction-count bench of the S-layer expert GEMMs (decode and prefill, Q8, one thread); run by
/// scripts/insn_count_aarch64.sh under qemu with the insn_marker plugin.
#[derive(Parser)]
#[command(name = "insn_bench", after_help = "Environment: MOBILEMOE_KERNEL (kernel set), INSN_BENCH_ONLY (as --only).")]
struct Cli {
    /// Only the regions whose name contains this text (gate_up_m1, down_m1, gate_up_m128, down_m128).
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
            if only.as_deref().is_some_and(|o| !region.contains(o)) {
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
            let t = Instant::now();
            marker();
            let ok = ks.gemm_q8(&w, 0..spec.tiles(), &a, &mut out, n);
            marker();
            let dt = t.elapsed();
            assert!(ok);
            black_box(&out);
            println!("REGION {region} {:.3} ms", dt.as_secs_f64() * 1e3);
        }
    }
}
