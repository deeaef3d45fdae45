//! Harness for the whole-decoder ops of `mobilemoe-ops` (ops/src/decoder.rs): attention with its
//! KV cache, RMSNorm, the INT4 embedding rows, the LM head and the dense SwiGLU FFN, on small
//! arbitrary geometries, positions and token ids (in range or not). Asserts: `Ok` exactly when the
//! input is valid, never a panic; on `Ok`, every kernel set and 1 vs 2 threads give the same bits;
//! finite inputs give finite outputs.
//!
//! Cost: the packed weights are random bytes + random positive scales (every byte is a valid INT4/INT8
//! code; the quantizer has its own target, ops_matrix_spec), made once per input, not quantized
//! from f32 once per kernel set and pool (that was 73% of the time); every SIMD kernel set runs
//! the attention calls on the 1-thread pool (the scalar set on one input in four), the best set
//! also on the 2-thread pool; the projections are bounded (`QKV_WEIGHTS`), at most 12 positions.

use crate::gen::Rng;
use arbitrary::{Arbitrary, Unstructured};
use mobilemoe_ops::decoder::{attention, embedding, lm_head_last, rms_norm, swiglu_ffn, AttentionSpec, KvCache, KvDType, RopeStyle};
use mobilemoe_ops::quant::{MatrixSpec, PackedMatrix, WeightBits};
use mobilemoe_ops::{Kernels, ThreadPool};

#[derive(Arbitrary, Debug)]
pub struct DecoderInput {
    dim_groups: u8,
    n_heads: u8,
    n_kv_heads: u8,
    half_dim: u8,
    max_seq: u8,
    positions: Vec<i16>,
    steps: u8,
    tokens: Vec<i16>,
    vocab: u8,
    kv_f16: bool,
    interleaved: bool,
    exact: bool,
    seed: u64,
}

/// Weights of the attention projections, at most this many (q/k/v rows x dim): the width shrinks
/// the KV-head count, then `dim`, never the head shape or the GQA ratio.
pub const QKV_WEIGHTS: usize = 1 << 14;

/// A random packed INT4 `[n, k]` matrix (group 32): random bytes, scales in (0, 0.03] (the
/// quantizer's range for weights of magnitude 0.2).
fn packed(r: &mut Rng, n: usize, k: usize) -> Option<PackedMatrix> {
    let spec = MatrixSpec::new(n, k, 32, WeightBits::Int4).ok()?;
    let mut data = vec![0u8; spec.data_bytes()];
    for c in data.chunks_mut(8) {
        c.copy_from_slice(&r.next_u64().to_le_bytes()[..c.len()]);
    }
    let scales = (0..spec.scale_count()).map(|_| (r.f32().abs() + 1.0 / 64.0) * 0.03).collect();
    Some(PackedMatrix { spec, data, scales })
}

/// The attention calls of one input (positions in chunks, one KV cache) with `kernels` on `pool`.
fn run_attention(
    inp: &DecoderInput,
    spec: &AttentionSpec,
    w: &mobilemoe_ops::decoder::AttentionWeights<'_>,
    kernels: &Kernels,
    pool: &ThreadPool,
) -> Option<Vec<Vec<f32>>> {
    let mut r = Rng(inp.seed | 1);
    let mut cache =
        KvCache::new(if inp.kv_f16 { KvDType::F16 } else { KvDType::F32 }, spec.n_kv_heads, spec.cache_rows(), spec.head_dim).ok()?;
    let mut scratch = Default::default();
    let mut outs = vec![];
    // a few calls that reuse the cache: the positions are split into chunks
    let n = inp.positions.len().min(12);
    let step = 1 + inp.steps as usize % 4;
    let mut i = 0;
    while i < n.max(1) {
        let chunk: Vec<i64> = inp.positions[i.min(n)..(i + step).min(n)].iter().map(|&p| p as i64).collect();
        let x: Vec<f32> = (0..chunk.len() * spec.dim).map(|_| r.f32()).collect();
        let mut out = vec![0f32; chunk.len() * spec.dim];
        let mut valid = chunk.iter().all(|&p| p >= 0 && (p as usize) < spec.max_seq_len);
        // a local layer's block (chunks here are <= 4 tokens: one block) must span < WINDOW_BLOCK
        let span = chunk.iter().max().zip(chunk.iter().min()).map_or(0, |(a, b)| a - b);
        valid &= !spec.is_local() || span < mobilemoe_ops::decoder::WINDOW_BLOCK as i64;
        let (mut kc, mut vc) = cache.views();
        let res = attention(spec, w, &x, &chunk, &mut kc, &mut vc, &mut out, &mut scratch, pool, kernels);
        assert_eq!(res.is_ok(), valid, "attention accept/reject: positions {chunk:?}, spec {spec:?}: {res:?}");
        if res.is_ok() {
            assert!(out.iter().all(|v| v.is_finite()), "non-finite attention output");
            outs.push(out);
        }
        i += step;
    }
    Some(outs)
}

pub fn ops_decoder(data: &[u8]) {
    let Ok(inp) = DecoderInput::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let mut n_kv = 1 + inp.n_kv_heads as usize % 3;
    // GQA ratio: 1..5 and 8 (the AVX-512 kernels are specialised on 1, 2, 4, 8).
    let rep = [1, 2, 3, 4, 5, 8][inp.n_heads as usize % 6];
    // head_dim: the specialised AVX-512 shapes (32, 64, 128) and others (generic path); the query
    // width must be a multiple of the group (32) for `wo` to exist.
    let mut hd = [32, 64, 128, 16, 48, 96, 8, 2 * (1 + inp.half_dim as usize % 40)][inp.half_dim as usize % 8];
    if !(n_kv * rep * hd).is_multiple_of(32) {
        hd = 32;
    }
    let mut dim = 32 * (1 + inp.dim_groups as usize % 3);
    // Cost bound: fewer KV heads (keeping the query width a multiple of 32), then a smaller dim.
    while n_kv > 1 && n_kv * (rep + 2) * hd * dim > QKV_WEIGHTS {
        n_kv -= 1;
    }
    if !(n_kv * rep * hd).is_multiple_of(32) {
        hd = 32;
    }
    while dim > 32 && n_kv * (rep + 2) * hd * dim > QKV_WEIGHTS {
        dim -= 32;
    }
    let spec = AttentionSpec {
        dim,
        n_heads: n_kv * rep,
        n_kv_heads: n_kv,
        head_dim: hd,
        max_seq_len: 1 + inp.max_seq as usize % 40,
        rope: if inp.interleaved { RopeStyle::Interleaved } else { RopeStyle::HalfSplit },
        exact: inp.exact,
        // MobileMoE's QK-norm and a sliding window (0 = global) from spare seed bits
        qk_norm: (inp.seed >> 8 & 1 == 1).then_some(1e-5),
        window: (inp.seed >> 9 & 15) as usize,
    };
    assert!(spec.validate().is_ok());
    let pool1 = crate::ops::pool(false);
    let pool2 = crate::ops::pool(true);
    // Attention: every kernel set (1 thread) and the best set on 2 threads give the same bits (when
    // the packed matrices exist: q width and dim must be multiples of the group).
    let mut r = Rng(inp.seed ^ 0xA77E);
    let (Some(wqkv), Some(wo)) = (packed(&mut r, spec.qkv_width(), spec.dim), packed(&mut r, spec.dim, spec.q_width())) else { return };
    let half = spec.head_dim / 2;
    let cos: Vec<f32> = (0..spec.max_seq_len * half).map(|i| ((i % 97) as f32 * 0.1).cos()).collect();
    let sin: Vec<f32> = (0..spec.max_seq_len * half).map(|i| ((i % 97) as f32 * 0.1).sin()).collect();
    let w = mobilemoe_ops::decoder::AttentionWeights { wqkv: wqkv.as_ref(), wo: wo.as_ref(), cos: &cos, sin: &sin };
    let best = Kernels::best();
    // The scalar set (a per-element loop, 63% of the time under coverage instrumentation) runs on
    // one input in four, chosen by its seed; the SIMD sets and thread counts are compared on all.
    // ops_kernels holds every SIMD kernel to the scalar one on arbitrary matrices.
    let with_scalar = inp.seed % 4 == 0 || Kernels::available().len() == 1;
    let sets = Kernels::available().into_iter().filter(|ks| with_scalar || ks.kind != mobilemoe_ops::KernelKind::Scalar);
    let runs = sets.map(|ks| (ks, pool1)).chain([(best, pool2)]);
    let mut first: Option<Vec<Vec<f32>>> = None;
    for (ks, pool) in runs {
        let Some(outs) = run_attention(&inp, &spec, &w, &ks, pool) else { return };
        match &first {
            None => first = Some(outs),
            Some(f) => assert!(
                f.len() == outs.len() && f.iter().flatten().zip(outs.iter().flatten()).all(|(a, b)| a.to_bits() == b.to_bits()),
                "attention differs between kernel sets / thread counts ({:?}, {} threads)",
                ks.kind,
                pool.threads()
            ),
        }
    }
    // Embedding, RMSNorm, LM head, SwiGLU on the same geometry.
    let mut r = Rng(inp.seed ^ 0x5EED);
    let vocab = 1 + inp.vocab as usize % 50;
    let Some(table) = packed(&mut r, vocab, dim) else { return };
    let toks: Vec<i64> = inp.tokens.iter().take(8).map(|&t| t as i64).collect();
    let mut e = vec![0f32; toks.len() * dim];
    let ok = toks.iter().all(|&t| t >= 0 && (t as usize) < vocab);
    assert_eq!(embedding(&table.as_ref(), &toks, &mut e).is_ok(), ok, "embedding accept/reject {toks:?} vocab {vocab}");
    let rows = toks.len().max(1);
    let x: Vec<f32> = (0..rows * dim).map(|_| r.f32() * 4.0).collect();
    let nw: Vec<f32> = (0..dim).map(|_| r.f32()).collect();
    let mut y = vec![0f32; rows * dim];
    rms_norm(&x, rows, &nw, 1e-5, &mut y).unwrap();
    assert!(y.iter().all(|v| v.is_finite()));
    assert!(rms_norm(&x, rows + 1, &nw, 1e-5, &mut y).is_err());
    let mut logits = vec![0f32; vocab];
    lm_head_last(&x, rows, &nw, 1e-5, &table.as_ref(), inp.exact, &mut logits, &mut Default::default(), pool2, &Kernels::best()).unwrap();
    assert!(logits.iter().all(|v| v.is_finite()));
    assert!(
        lm_head_last(&x, 0, &nw, 1e-5, &table.as_ref(), inp.exact, &mut logits, &mut Default::default(), pool2, &Kernels::best()).is_err()
    );
    let f = 32;
    if let (Some(w13), Some(w2)) = (packed(&mut r, 2 * f, dim), packed(&mut r, dim, f)) {
        let mut o = vec![0f32; rows * dim];
        swiglu_ffn(&w13.as_ref(), &w2.as_ref(), &x, rows, inp.exact, &mut o, &mut Default::default(), pool2, &Kernels::best()).unwrap();
        assert!(o.iter().all(|v| v.is_finite()));
        // swapped matrices are refused
        assert!(
            swiglu_ffn(&w2.as_ref(), &w13.as_ref(), &x, rows, inp.exact, &mut o, &mut Default::default(), pool2, &Kernels::best()).is_err()
        );
    }
}
