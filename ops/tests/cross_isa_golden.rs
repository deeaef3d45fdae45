//! The same bits on every ISA: fixed inputs through every op of the crate (MoE layer on the Q8
//! and exact paths with each routing feature, dense linears with f32/f16/bf16 scales, attention
//! with fp16/fp32 caches and both RoPE styles, RMSNorm, embedding, LM head, dense SwiGLU), each
//! output hashed bit for bit (FNV-1a over the f32 bits). The expected digests below were computed
//! on x86-64; every kernel set of this CPU must reproduce them, and `make test-aarch64` runs this
//! file under qemu on cortex-a53 (NEON), cortex-a76 (dotprod) and max (i8mm), so x86-64 and
//! aarch64 are held to identical outputs on one input set (docs/DESIGN.md, section 3).
//!
//! Inputs come from the integer xorshift generator and RoPE tables are random values, not
//! trigonometry: nothing here goes through a libm whose last bit could differ between platforms.
//! After an intended change of numerics, `GOLDEN_PRINT=1 cargo test --release -p mobilemoe-ops
//! --test cross_isa_golden -- --nocapture` prints the new table.

mod common;
use common::{router, Layer, Rng};
use mobilemoe_ops::decoder::*;
use mobilemoe_ops::*;

/// (case, digest of its outputs), computed on x86-64 (AVX-512 VNNI, AVX2 and scalar agree; the
/// MobileMoE cases were added on an AVX2 machine, where AVX2 and scalar agree).
const GOLDEN: &[(&str, u64)] = &[
    ("moe q8 int4 sigmoid+bias+scale, shared, 1 token(s)", 0x493ef612bd781458),
    ("moe q8 int4 sigmoid+bias+scale, shared, 7 token(s)", 0x61bdc078246c4320),
    ("moe exact int4 sigmoid+bias+scale, shared, 1 token(s)", 0xad476dfe9d7acb64),
    ("moe exact int4 sigmoid+bias+scale, shared, 7 token(s)", 0x6fe7bb388f0fbb59),
    ("moe q8 int8 softmax_all, gated shared, 1 token(s)", 0xa31bba2d95900372),
    ("moe q8 int8 softmax_all, gated shared, 7 token(s)", 0xc0cabae0af7e7e45),
    ("moe exact int8 softmax, gated shared, 1 token(s)", 0x195ca8fe3b67bd0d),
    ("moe exact int8 softmax, gated shared, 7 token(s)", 0xee98237530cd44a9),
    ("moe q8 group-limited top-2-sum, 1 token(s)", 0xd4b1b26232b37968),
    ("moe q8 group-limited top-2-sum, 7 token(s)", 0xe5a080dd48cfee09),
    ("moe q8 topk_sigmoid weight on input, 1 token(s)", 0x2ef81ff70e38d88b),
    ("moe q8 topk_sigmoid weight on input, 7 token(s)", 0x559040b62d506dcd),
    ("moe q8 sparsemixer, 1 token(s)", 0x292d8e74865340dd),
    ("moe q8 sparsemixer, 7 token(s)", 0x87c5f63e5e4a81a7),
    ("moe q8 softmax, no shared, 1 token(s)", 0xdee5537e9ae2361f),
    ("moe q8 softmax, no shared, 7 token(s)", 0x707b990ad5f8c68b),
    ("moe q8 output-grouped fp16 scales (MobileMoE QAT), 1 token(s)", 0x33dff05c7c97dc18),
    ("moe q8 output-grouped fp16 scales (MobileMoE QAT), 7 token(s)", 0x7c7a9e199bcba225),
    ("moe exact output-grouped fp16 scales (MobileMoE QAT), 1 token(s)", 0x2d88cf2d18dab4dd),
    ("moe exact output-grouped fp16 scales (MobileMoE QAT), 7 token(s)", 0x4b61a3b8fe884c6e),
    ("linear q8 Int4 f32 scales", 0x51c6a406e5108830),
    ("linear q8 Int4 f16 scales", 0x1fc120ed2d91e79d),
    ("linear q8 Int4 bf16 scales", 0x52ad3bc690a8079a),
    ("linear q8 Int8 f32 scales", 0x7fada2fa359a3eab),
    ("linear q8 Int8 f16 scales", 0x6baa93c30e6b772d),
    ("linear q8 Int8 bf16 scales", 0xd981a10afe394013),
    ("linear exact Int4 f32 scales", 0x77d0ffee480e6579),
    ("linear exact Int4 f16 scales", 0x1ce8d06ca0be2c41),
    ("linear exact Int4 bf16 scales", 0x6be9eaeb6b5ad9d4),
    ("linear exact Int8 f32 scales", 0xc7c77be4ee479f6c),
    ("linear exact Int8 f16 scales", 0xe511cd17dc47421b),
    ("linear exact Int8 bf16 scales", 0xa9777feba85320ff),
    ("attention F16 cache, HalfSplit, exact=false", 0xfb96cb3fd48dd178),
    ("attention F16 cache, HalfSplit, exact=true", 0xc4096d95f39b89a5),
    ("attention F16 cache, Interleaved, exact=false", 0x41c0ea410b09c8c2),
    ("attention F16 cache, Interleaved, exact=true", 0x8a1f1555575c8aa3),
    ("attention F16 cache, head_dim 64, 4 heads per KV head", 0x816f20bea0b1845e),
    ("attention F32 cache, HalfSplit, exact=false", 0x869b42523f2c1f00),
    ("attention F32 cache, HalfSplit, exact=true", 0x1fbb9ff0cdfd5922),
    ("attention F32 cache, Interleaved, exact=false", 0xfdcfe74731babdc4),
    ("attention F32 cache, Interleaved, exact=true", 0xd644c96628bd4472),
    ("attention F32 cache, head_dim 64, 4 heads per KV head", 0x3aa050ba81c59624),
    ("attention F16 cache, MobileMoE: interleaved RoPE + QK-norm, head_dim 64, 4 heads per KV head", 0x8c2f587a1444c0a2),
    ("attention F16 cache, sliding window 8 (ring cache), 2 heads per KV head", 0xa2e63e546aed88c8),
    ("attention F32 cache, MobileMoE: interleaved RoPE + QK-norm, head_dim 64, 4 heads per KV head", 0x9f4cfe5b46a1ee4a),
    ("attention F32 cache, sliding window 8 (ring cache), 2 heads per KV head", 0x8ebc8589dfeef8b6),
    ("rms_norm, embedding, lm_head, swiglu_ffn, rope, exact=false", 0x1f20ac1626dc61e6),
    ("rms_norm, embedding, lm_head, swiglu_ffn, rope, exact=true", 0x219da2a4c63d3bc8),
];

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn f32s(&mut self, v: &[f32]) -> &mut Self {
        for x in v {
            for b in x.to_bits().to_le_bytes() {
                self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        self
    }
}

fn digest(v: &[f32]) -> u64 {
    Fnv::new().f32s(v).0
}

/// MobileMoE's QAT experts: the layer's integers with output-grouped fp16 scales
/// (`[E, K, N / 32]`), sigmoid + bias routing with route scale 2.5 and eps 1e-20, ungated shared.
fn moe_out_grouped_case(k: &Kernels, pool: &ThreadPool, exact: bool, t: usize) -> u64 {
    let sig = RouterConfig { renorm_eps: 1e-20, ..router(8, 2, ScoreFunc::Sigmoid, true, 2.5) };
    let spec = MoeSpec { scales_out: true, ..moe_spec(exact, WeightBits::Int4, sig) };
    let layer = Layer::random(MoeSpec { scales_out: false, ..spec }, 0x66, true, false);
    let mut r = Rng(0x77);
    let (e, d, f) = (8, spec.dim, spec.hidden);
    let mut scales = |n: usize| -> Vec<half::f16> { (0..n).map(|_| half::f16::from_f32(0.02 + 0.01 * r.f())).collect() };
    let (s13, s2) = (scales(e * d * (2 * f / 32)), scales(e * f * (d / 32)));
    let w = MoeWeights { w13_scales: (&s13[..]).into(), w2_scales: (&s2[..]).into(), ..layer.weights() };
    let x = Rng(0x88).vec(t * d, 1.5);
    let mut out = vec![0f32; t * d];
    moe_ffn(&spec, &w, &x, t, &mut out, &mut MoeScratch::default(), pool, k).unwrap();
    digest(&out)
}

fn moe_case(k: &Kernels, pool: &ThreadPool, spec: MoeSpec, seed: u64, bias: bool, gate: bool, t: usize) -> u64 {
    let layer = Layer::random(spec, seed, bias, gate);
    let x = Rng(seed ^ 0x5151).vec(t * spec.dim, 1.5);
    let mut out = vec![0f32; t * spec.dim];
    moe_ffn(&layer.spec, &layer.weights(), &x, t, &mut out, &mut MoeScratch::default(), pool, k).unwrap();
    digest(&out)
}

fn moe_spec(exact: bool, bits: WeightBits, router: RouterConfig) -> MoeSpec {
    MoeSpec { dim: 64, hidden: 32, shared_hidden: 64, group: 32, bits, router, exact, scales_out: false }
}

fn packed(r: &mut Rng, n: usize, k: usize, group: usize, bits: WeightBits) -> PackedMatrix {
    PackedMatrix::quantize(&r.vec(n * k, 0.3), MatrixSpec::new(n, k, group, bits).unwrap()).unwrap()
}

fn linear_case(k: &Kernels, pool: &ThreadPool, exact: bool, bits: WeightBits, scales: ScaleType) -> u64 {
    let mut r = Rng(0x11 + exact as u64 + 2 * (bits == WeightBits::Int8) as u64);
    let (n, kd, m) = (48, 96, 3);
    let w = packed(&mut r, n, kd, 32, bits);
    let narrow = OwnedScales::from_f32(scales, &w.scales.iter().map(|&s| scales.round(s)).collect::<Vec<_>>());
    let w = PackedRef::new(w.spec, &w.data, narrow.as_ref()).unwrap();
    let bias = r.vec(n, 0.2);
    let x = r.vec(m * kd, 2.0);
    let mut out = vec![0f32; m * n];
    linear(&w, Some(&bias), &x, m, &mut out, exact, &mut LinearScratch::default(), pool, k).unwrap();
    digest(&out)
}

/// (dim, query heads, KV heads, head_dim): 2 query heads per KV head, and S's 4 with head_dim 64.
const ATTN_SHAPES: [(usize, usize, usize, usize); 2] = [(64, 4, 2, 32), (128, 8, 2, 64)];

fn attention_case(k: &Kernels, pool: &ThreadPool, shape: (usize, usize, usize, usize), kv: KvDType, rope: RopeStyle, exact: bool) -> u64 {
    attention_case_qk(k, pool, shape, kv, rope, exact, None)
}

fn attention_case_qk(
    k: &Kernels,
    pool: &ThreadPool,
    shape: (usize, usize, usize, usize),
    kv: KvDType,
    rope: RopeStyle,
    exact: bool,
    qk_norm: Option<f32>,
) -> u64 {
    attention_case_full(k, pool, shape, kv, rope, exact, qk_norm, 0)
}

#[allow(clippy::too_many_arguments)]
fn attention_case_full(
    k: &Kernels,
    pool: &ThreadPool,
    shape: (usize, usize, usize, usize),
    kv: KvDType,
    rope: RopeStyle,
    exact: bool,
    qk_norm: Option<f32>,
    window: usize,
) -> u64 {
    let (dim, n_heads, n_kv_heads, head_dim) = shape;
    let spec = AttentionSpec { dim, n_heads, n_kv_heads, head_dim, max_seq_len: 48, rope, exact, qk_norm, window };
    let mut r = Rng(0x22);
    let wqkv = packed(&mut r, spec.qkv_width(), spec.dim, 32, WeightBits::Int4);
    let wo = packed(&mut r, spec.dim, spec.q_width(), 32, WeightBits::Int4);
    // cos/sin tables: random values (no libm), the shape the blob stores
    let half = spec.head_dim / 2;
    let (cos, sin) = (r.vec(spec.max_seq_len * half, 1.0), r.vec(spec.max_seq_len * half, 1.0));
    let w = AttentionWeights { wqkv: wqkv.as_ref(), wo: wo.as_ref(), cos: &cos, sin: &sin };
    let mut cache = KvCache::new(kv, spec.n_kv_heads, spec.cache_rows(), spec.head_dim).unwrap();
    let mut scratch = AttentionScratch::default();
    let mut h = Fnv::new();
    let mut p0 = 0;
    // prefill 21 tokens (an odd count: slot pairs and a last single slot), two decode steps, a
    // chunk of 5
    for c in [21usize, 1, 1, 5] {
        let x = r.vec(c * spec.dim, 1.0);
        let pos: Vec<i64> = (p0 as i64..(p0 + c) as i64).collect();
        let mut out = vec![0f32; c * spec.dim];
        let (mut kc, mut vc) = cache.views();
        attention(&spec, &w, &x, &pos, &mut kc, &mut vc, &mut out, &mut scratch, pool, k).unwrap();
        h.f32s(&out);
        p0 += c;
    }
    h.0
}

fn dense_cases(k: &Kernels, pool: &ThreadPool, exact: bool) -> u64 {
    let mut r = Rng(0x33 + exact as u64);
    let (d, f, v, rows) = (64, 96, 80, 4);
    let mut h = Fnv::new();
    let x = r.vec(rows * d, 1.0);
    let norm_w = r.vec(d, 1.0);
    let mut normed = vec![0f32; rows * d];
    rms_norm(&x, rows, &norm_w, 1e-5, &mut normed).unwrap();
    h.f32s(&normed);
    let emb = packed(&mut r, v, d, 32, WeightBits::Int4);
    let mut rows_out = vec![0f32; 3 * d];
    embedding(&emb.as_ref(), &[0, 79, 17], &mut rows_out).unwrap();
    h.f32s(&rows_out);
    let mut logits = vec![0f32; v];
    lm_head_last(&x, rows, &norm_w, 1e-5, &emb.as_ref(), exact, &mut logits, &mut DenseScratch::default(), pool, k).unwrap();
    h.f32s(&logits);
    let w13 = packed(&mut r, 2 * f, d, 32, WeightBits::Int4);
    let w2 = packed(&mut r, d, f, 32, WeightBits::Int4);
    let mut ffn = vec![0f32; rows * d];
    swiglu_ffn(&w13.as_ref(), &w2.as_ref(), &x, rows, exact, &mut ffn, &mut DenseScratch::default(), pool, k).unwrap();
    h.f32s(&ffn);
    let mut rope = r.vec(32, 1.0);
    let (c, s) = (r.vec(16, 1.0), r.vec(16, 1.0));
    rope_head(&mut rope, &c, &s, RopeStyle::HalfSplit);
    rope_head(&mut rope, &c, &s, RopeStyle::Interleaved);
    h.f32s(&rope);
    h.0
}

/// Every case on kernel set `k`, in a fixed order.
fn run_all(k: &Kernels) -> Vec<(String, u64)> {
    let pool = ThreadPool::new(2);
    let mut v = vec![];
    let sig = RouterConfig { renormalize: true, ..router(8, 2, ScoreFunc::Sigmoid, true, 2.5) };
    let grouped = RouterConfig { group_limit: GroupLimit { groups: 4, top_groups: 2, score: GroupScore::TopTwoSum }, ..sig };
    let llama4 = RouterConfig { weight_input: true, ..router(8, 1, ScoreFunc::TopkSigmoid, false, 1.0) };
    let mixer = RouterConfig { jitter_eps: 0.01, ..router(8, 2, ScoreFunc::SparseMixer, false, 1.0) };
    let cases: [(&str, MoeSpec, bool, bool); 8] = [
        ("moe q8 int4 sigmoid+bias+scale, shared", moe_spec(false, WeightBits::Int4, sig), true, false),
        ("moe exact int4 sigmoid+bias+scale, shared", moe_spec(true, WeightBits::Int4, sig), true, false),
        (
            "moe q8 int8 softmax_all, gated shared",
            moe_spec(false, WeightBits::Int8, router(8, 3, ScoreFunc::SoftmaxAll, true, 1.0)),
            false,
            true,
        ),
        (
            "moe exact int8 softmax, gated shared",
            moe_spec(true, WeightBits::Int8, router(8, 2, ScoreFunc::Softmax, false, 1.0)),
            false,
            true,
        ),
        ("moe q8 group-limited top-2-sum", moe_spec(false, WeightBits::Int4, grouped), true, false),
        ("moe q8 topk_sigmoid weight on input", moe_spec(false, WeightBits::Int4, llama4), false, false),
        ("moe q8 sparsemixer", moe_spec(false, WeightBits::Int4, mixer), false, true),
        (
            "moe q8 softmax, no shared",
            MoeSpec { shared_hidden: 0, ..moe_spec(false, WeightBits::Int4, router(8, 2, ScoreFunc::Softmax, false, 1.0)) },
            false,
            false,
        ),
    ];
    for (i, (name, spec, bias, gate)) in cases.into_iter().enumerate() {
        for t in [1, 7] {
            v.push((format!("{name}, {t} token(s)"), moe_case(k, &pool, spec, 100 + i as u64, bias, gate, t)));
        }
    }
    for exact in [false, true] {
        for t in [1, 7] {
            let path = if exact { "exact" } else { "q8" };
            v.push((
                format!("moe {path} output-grouped fp16 scales (MobileMoE QAT), {t} token(s)"),
                moe_out_grouped_case(k, &pool, exact, t),
            ));
        }
    }
    for exact in [false, true] {
        for bits in [WeightBits::Int4, WeightBits::Int8] {
            for sc in [ScaleType::F32, ScaleType::F16, ScaleType::Bf16] {
                let path = if exact { "exact" } else { "q8" };
                v.push((format!("linear {path} {bits:?} {} scales", sc.name()), linear_case(k, &pool, exact, bits, sc)));
            }
        }
    }
    for kv in [KvDType::F16, KvDType::F32] {
        for rope in [RopeStyle::HalfSplit, RopeStyle::Interleaved] {
            for exact in [false, true] {
                v.push((
                    format!("attention {kv:?} cache, {rope:?}, exact={exact}"),
                    attention_case(k, &pool, ATTN_SHAPES[0], kv, rope, exact),
                ));
            }
        }
        v.push((
            format!("attention {kv:?} cache, head_dim 64, 4 heads per KV head"),
            attention_case(k, &pool, ATTN_SHAPES[1], kv, RopeStyle::HalfSplit, false),
        ));
    }
    for kv in [KvDType::F16, KvDType::F32] {
        v.push((
            format!("attention {kv:?} cache, MobileMoE: interleaved RoPE + QK-norm, head_dim 64, 4 heads per KV head"),
            attention_case_qk(k, &pool, ATTN_SHAPES[1], kv, RopeStyle::Interleaved, false, Some(1e-5)),
        ));
        v.push((
            format!("attention {kv:?} cache, sliding window 8 (ring cache), 2 heads per KV head"),
            attention_case_full(k, &pool, ATTN_SHAPES[0], kv, RopeStyle::HalfSplit, false, None, 8),
        ));
    }
    for exact in [false, true] {
        v.push((format!("rms_norm, embedding, lm_head, swiglu_ffn, rope, exact={exact}"), dense_cases(k, &pool, exact)));
    }
    v
}

#[test]
fn every_kernel_set_gives_the_golden_bits() {
    let print = std::env::var_os("GOLDEN_PRINT").is_some();
    for k in Kernels::available() {
        let got = run_all(&k);
        if print {
            println!("kernel set {}:", k.kind.name());
            for (name, d) in &got {
                println!("    (\"{name}\", 0x{d:016x}),");
            }
            continue;
        }
        assert_eq!(got.len(), GOLDEN.len(), "the case list and GOLDEN differ in length");
        for ((name, d), (gname, gd)) in got.iter().zip(GOLDEN) {
            assert_eq!(name, gname, "case order");
            assert_eq!(d, gd, "{name}: kernel set {} gives digest 0x{d:016x}, x86-64 gave 0x{gd:016x}", k.kind.name());
        }
    }
}
