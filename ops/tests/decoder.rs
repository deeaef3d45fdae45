//! The whole-decoder ops (ops/src/decoder.rs) against plain f64 formulas written here, and the
//! SIMD builds of attention against the generic one, bit for bit.

mod common;
use common::Rng;
use mobilemoe_ops::decoder::*;
use mobilemoe_ops::*;

fn packed(r: &mut Rng, n: usize, k: usize) -> (PackedMatrix, Vec<f32>) {
    let w = r.vec(n * k, 0.5);
    let spec = MatrixSpec::new(n, k, 32, WeightBits::Int4).unwrap();
    let p = PackedMatrix::quantize(&w, spec).unwrap();
    let deq = p.as_ref().dequantize();
    (p, deq)
}

fn tables(max_seq: usize, hd: usize) -> (Vec<f32>, Vec<f32>) {
    let half = hd / 2;
    let (mut c, mut s) = (vec![0.0; max_seq * half], vec![0.0; max_seq * half]);
    for p in 0..max_seq {
        for i in 0..half {
            let inv = 1.0 / 10000f64.powf((2 * i) as f64 / hd as f64);
            let a = p as f64 * inv;
            c[p * half + i] = a.cos() as f32;
            s[p * half + i] = a.sin() as f32;
        }
    }
    (c, s)
}

/// f64 attention from the formulas: projections with the dequantized weights and exact fp32
/// activations (the `exact` path), RoPE half-split, causal softmax over positions <= p.
#[allow(clippy::too_many_arguments)]
fn naive_attention(
    spec: &AttentionSpec,
    wqkv: &[f32],
    wo: &[f32],
    cos: &[f32],
    sin: &[f32],
    x_all: &[Vec<f32>],
    positions: &[usize],
) -> Vec<Vec<f64>> {
    let (d, hd, hq, hkv) = (spec.dim, spec.head_dim, spec.n_heads, spec.n_kv_heads);
    let half = hd / 2;
    let qkv_w = spec.qkv_width();
    let mut ks: Vec<Vec<f64>> = vec![vec![0.0; hkv * hd]; spec.max_seq_len];
    let mut vs: Vec<Vec<f64>> = vec![vec![0.0; hkv * hd]; spec.max_seq_len];
    let mut qs = vec![];
    for (x, &p) in x_all.iter().zip(positions) {
        let mut row = vec![0.0f64; qkv_w];
        for (n, r) in row.iter_mut().enumerate() {
            *r = (0..d).map(|k| x[k] as f64 * wqkv[n * d + k] as f64).sum();
        }
        for h in 0..hq + hkv {
            let v = &mut row[h * hd..(h + 1) * hd];
            for i in 0..half {
                let (c, s) = (cos[p * half + i] as f64, sin[p * half + i] as f64);
                // half-split pairs i with i + half; interleaved (Meta, MobileMoE) 2i with 2i + 1
                let (ia, ib) = if spec.rope == RopeStyle::Interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
                let (a, b) = (v[ia], v[ib]);
                v[ia] = a * c - b * s;
                v[ib] = b * c + a * s;
            }
            if let Some(eps) = spec.qk_norm {
                // MobileMoE's weightless QK-norm after RoPE
                let ms = v.iter().map(|x| x * x).sum::<f64>() / hd as f64;
                let r = 1.0 / (ms + eps as f64).sqrt();
                v.iter_mut().for_each(|x| *x *= r);
            }
        }
        ks[p] = row[hq * hd..(hq + hkv) * hd].to_vec();
        vs[p] = row[(hq + hkv) * hd..].to_vec();
        qs.push(row[..hq * hd].to_vec());
    }
    let mut outs = vec![];
    for (q, &p) in qs.iter().zip(positions) {
        let mut ctx = vec![0.0f64; hq * hd];
        for h in 0..hq {
            let g = h / (hq / hkv);
            // a sliding window sees positions p - window + 1 ..= p
            let lo = if spec.window > 0 { (p + 1).saturating_sub(spec.window) } else { 0 };
            let sc: Vec<f64> =
                (lo..=p).map(|t| (0..hd).map(|i| q[h * hd + i] * ks[t][g * hd + i]).sum::<f64>() / (hd as f64).sqrt()).collect();
            let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = sc.iter().map(|v| (v - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for i in 0..hd {
                ctx[h * hd + i] = (lo..=p).map(|t| e[t - lo] / z * vs[t][g * hd + i]).sum();
            }
        }
        outs.push((0..d).map(|n| (0..hq * hd).map(|k| ctx[k] * wo[n * hq * hd + k] as f64).sum()).collect());
    }
    outs
}

fn run_attention(spec: &AttentionSpec, kv: KvDType, kernels: &Kernels, chunks: &[usize], seed: u64) -> (Vec<Vec<f32>>, Vec<Vec<f64>>) {
    let mut r = Rng(seed);
    let (wqkv, wqkv_deq) = packed(&mut r, spec.qkv_width(), spec.dim);
    let (wo, wo_deq) = packed(&mut r, spec.dim, spec.q_width());
    let (cos, sin) = tables(spec.max_seq_len, spec.head_dim);
    let w = AttentionWeights { wqkv: wqkv.as_ref(), wo: wo.as_ref(), cos: &cos, sin: &sin };
    let total: usize = chunks.iter().sum();
    let xs: Vec<Vec<f32>> = (0..total).map(|_| r.vec(spec.dim, 1.0)).collect();
    let mut cache = KvCache::new(kv, spec.n_kv_heads, spec.cache_rows(), spec.head_dim).unwrap();
    let mut scratch = AttentionScratch::default();
    let pool = ThreadPool::new(3);
    let mut got = vec![];
    let mut p0 = 0;
    for &c in chunks {
        let x: Vec<f32> = xs[p0..p0 + c].concat();
        let pos: Vec<i64> = (p0 as i64..(p0 + c) as i64).collect();
        let mut out = vec![0.0; c * spec.dim];
        let (mut kc, mut vc) = cache.views();
        attention(spec, &w, &x, &pos, &mut kc, &mut vc, &mut out, &mut scratch, &pool, kernels).unwrap();
        got.extend(out.chunks(spec.dim).map(|o| o.to_vec()));
        p0 += c;
    }
    let want = naive_attention(spec, &wqkv_deq, &wo_deq, &cos, &sin, &xs, &(0..total).collect::<Vec<_>>());
    (got, want)
}

fn spec(max_seq: usize) -> AttentionSpec {
    AttentionSpec {
        dim: 64,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 32,
        max_seq_len: max_seq,
        rope: RopeStyle::HalfSplit,
        exact: true,
        qk_norm: None,
        window: 0,
    }
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).powi(2)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn attention_matches_f64_formula_prefill_then_decode() {
    let s = spec(64);
    // prefill 20 tokens, then 5 decode steps, then a chunk of 3: positions advance, cache persists
    let (got, want) = run_attention(&s, KvDType::F32, &Kernels::best(), &[20, 1, 1, 1, 1, 1, 3], 7);
    assert_eq!(got.len(), 28);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let e = rel_err(g, w);
        assert!(e < 2e-5, "token {i}: relative error {e}");
    }
}

#[test]
fn mobilemoe_attention_interleaved_rope_and_qk_norm_match_the_formula() {
    let s = AttentionSpec { rope: RopeStyle::Interleaved, qk_norm: Some(1e-5), ..spec(64) };
    let (got, want) = run_attention(&s, KvDType::F32, &Kernels::best(), &[20, 1, 1, 3], 9);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let e = rel_err(g, w);
        assert!(e < 2e-5, "token {i}: relative error {e}");
    }
}

#[test]
fn sliding_window_attention_matches_the_formula_with_a_ring_cache() {
    // window 16 (ring of 48 slots) over 120 positions: prefill longer than window + block, decode
    // steps, chunks that wrap the ring; every kernel set, both cache types
    for ks in Kernels::available() {
        for kv in [KvDType::F32, KvDType::F16] {
            let s = AttentionSpec { window: 16, rope: RopeStyle::Interleaved, qk_norm: Some(1e-5), ..spec(128) };
            assert_eq!(s.cache_rows(), 48);
            let (got, want) = run_attention(&s, kv, &ks, &[70, 1, 1, 1, 33, 2, 12], 13);
            assert_eq!(got.len(), 120);
            let tol = if kv == KvDType::F32 { 2e-5 } else { 2e-3 };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let e = rel_err(g, w);
                assert!(e < tol, "{} {kv:?} token {i}: relative error {e}", ks.kind.name());
            }
        }
    }
}

#[test]
fn a_window_wider_than_the_context_gives_the_global_bits() {
    let global = spec(64);
    let local = AttentionSpec { window: 40, ..global };
    assert!(local.is_local() && local.cache_rows() == 64);
    let (a, _) = run_attention(&global, KvDType::F16, &Kernels::best(), &[30, 1, 1, 5], 3);
    let (b, _) = run_attention(&local, KvDType::F16, &Kernels::best(), &[30, 1, 1, 5], 3);
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        assert_eq!(x.to_bits(), y.to_bits());
    }
}

#[test]
fn fp16_cache_stays_close_to_fp32() {
    let s = spec(32);
    let (got, want) = run_attention(&s, KvDType::F16, &Kernels::best(), &[9, 1, 1], 9);
    for (g, w) in got.iter().zip(&want) {
        let e = rel_err(g, w);
        assert!(e < 2e-3, "fp16 cache: relative error {e}");
    }
}

#[test]
fn every_kernel_set_gives_identical_attention_bits() {
    // Shapes with and without the AVX-512 / AVX2 specialised kernels (head_dim 32/64/128 with 1 to
    // 8 query heads per KV head: MobileMoE-S has 3, MobileLLM-Pro 5; 48 has none), odd and even
    // context lengths (prefill 37, decode steps, a 16-token chunk), both cache types: every kernel
    // set must give the scalar set's bits.
    let shapes = [
        (64, 4, 2, 32),
        (128, 8, 2, 64),
        (160, 10, 2, 64),
        (96, 4, 2, 48),
        (192, 12, 4, 64),
        (64, 1, 1, 64),
        (384, 6, 1, 64),
        (256, 7, 1, 32),
        (256, 2, 1, 128),
    ];
    let kinds = Kernels::available();
    assert!(!kinds.is_empty());
    for (dim, n_heads, n_kv_heads, head_dim) in shapes {
        let s = AttentionSpec {
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            max_seq_len: 64,
            rope: RopeStyle::HalfSplit,
            exact: false,
            qk_norm: None,
            window: 0,
        };
        for kv in [KvDType::F16, KvDType::F32] {
            let mut reference: Option<Vec<Vec<f32>>> = None;
            for k in &kinds {
                let (got, _) = run_attention(&s, kv, k, &[37, 1, 1, 16, 1], 3);
                match &reference {
                    None => reference = Some(got),
                    Some(r) => assert!(
                        r.iter().flatten().zip(got.iter().flatten()).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{:?} differs from the first kernel set (head_dim {head_dim}, {kv:?})",
                        k.kind
                    ),
                }
            }
        }
    }
}

#[test]
fn attention_rejects_positions_outside_the_cache() {
    let s = spec(8);
    let mut r = Rng(1);
    let (wqkv, _) = packed(&mut r, s.qkv_width(), s.dim);
    let (wo, _) = packed(&mut r, s.dim, s.q_width());
    let (cos, sin) = tables(8, 32);
    let w = AttentionWeights { wqkv: wqkv.as_ref(), wo: wo.as_ref(), cos: &cos, sin: &sin };
    let mut cache = KvCache::new(KvDType::F16, 2, 8, 32).unwrap();
    let (mut kc, mut vc) = cache.views();
    let mut out = vec![0.0; 64];
    let pool = ThreadPool::new(1);
    for bad in [-1i64, 8, i64::MAX] {
        let e = attention(&s, &w, &r.vec(64, 1.0), &[bad], &mut kc, &mut vc, &mut out, &mut Default::default(), &pool, &Kernels::best());
        assert!(e.is_err(), "position {bad} accepted");
    }
    // a wrong number of positions for the rows
    let e = attention(&s, &w, &r.vec(128, 1.0), &[0], &mut kc, &mut vc, &mut out, &mut Default::default(), &pool, &Kernels::best());
    assert!(e.is_err());
}

/// A local (sliding-window) layer writes a block's K/V into the ring before its queries read it, so
/// the positions of one WINDOW_BLOCK-token block must span fewer than WINDOW_BLOCK: otherwise a
/// write could overwrite a slot a query of the same block still reads. Such a call is refused with
/// a message, and the same positions spread over blocks run.
#[test]
fn local_attention_refuses_a_block_whose_positions_span_too_far() {
    let s = AttentionSpec { window: 16, ..spec(128) };
    assert!(s.is_local());
    let mut r = Rng(5);
    let (wqkv, _) = packed(&mut r, s.qkv_width(), s.dim);
    let (wo, _) = packed(&mut r, s.dim, s.q_width());
    let (cos, sin) = tables(s.max_seq_len, s.head_dim);
    let w = AttentionWeights { wqkv: wqkv.as_ref(), wo: wo.as_ref(), cos: &cos, sin: &sin };
    let mut cache = KvCache::new(KvDType::F32, s.n_kv_heads, s.cache_rows(), s.head_dim).unwrap();
    let pool = ThreadPool::new(2);
    let run = |cache: &mut KvCache, pos: &[i64]| {
        let x = Rng(9).vec(pos.len() * s.dim, 1.0);
        let mut out = vec![0.0; pos.len() * s.dim];
        let (mut kc, mut vc) = cache.views();
        attention(&s, &w, &x, pos, &mut kc, &mut vc, &mut out, &mut Default::default(), &pool, &Kernels::best()).map(|_| out)
    };
    // One block (2 tokens) whose positions are WINDOW_BLOCK apart: refused.
    let e = run(&mut cache, &[0, WINDOW_BLOCK as i64]).unwrap_err().to_string();
    assert!(e.contains(&format!("within {WINDOW_BLOCK}")) && e.contains("0..=32"), "{e}");
    // The second block of a call is checked too (positions 32..63 are fine, then 64 and 100 are not).
    let mut pos: Vec<i64> = (32..64).collect();
    pos.extend([64, 100]);
    let e = run(&mut cache, &pos).unwrap_err().to_string();
    assert!(e.contains("64..=100"), "{e}");
    // Just inside the limit: one block spanning WINDOW_BLOCK - 1 runs.
    let out = run(&mut cache, &[0, WINDOW_BLOCK as i64 - 1]).unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
}

/// A KV cache larger than any address space is an `OutOfMemory` error, not a process abort.
#[test]
fn an_impossible_kv_cache_is_out_of_memory() {
    // 2^60 elements (4 EiB in f32, 2 EiB in f16): the element count fits usize, the allocation
    // cannot succeed on any machine.
    for kv in [KvDType::F32, KvDType::F16] {
        match KvCache::new(kv, 1 << 20, 1 << 20, 1 << 20) {
            Err(OpsError::OutOfMemory { what: "kv cache", bytes }) => assert_eq!(bytes, (1usize << 60) * kv.bytes()),
            Err(e) => panic!("{kv:?}: {e}"),
            Ok(_) => panic!("{kv:?}: a 2^60-element cache was allocated"),
        }
    }
}

#[test]
fn rms_norm_rope_and_embedding_follow_their_formulas() {
    let mut r = Rng(5);
    let (d, rows) = (96, 3);
    let x = r.vec(rows * d, 2.0);
    let w = r.vec(d, 1.0);
    let mut out = vec![0.0; rows * d];
    rms_norm(&x, rows, &w, 1e-5, &mut out).unwrap();
    for i in 0..rows {
        let xr = &x[i * d..(i + 1) * d];
        let ms: f64 = xr.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
        for k in 0..d {
            let want = xr[k] as f64 / (ms + 1e-5).sqrt() * w[k] as f64;
            assert!((out[i * d + k] as f64 - want).abs() <= 1e-5 * want.abs().max(1.0));
        }
    }
    assert!(rms_norm(&x, rows + 1, &w, 1e-5, &mut out).is_err());

    // RoPE: both conventions rotate pairs by the table angle
    let v0 = r.vec(8, 1.0);
    let (cos, sin) = ([0.6f32, 1.0, 0.0, -1.0], [0.8f32, 0.0, 1.0, 0.0]);
    let mut a = v0.clone();
    rope_head(&mut a, &cos, &sin, RopeStyle::HalfSplit);
    let mut b = v0.clone();
    rope_head(&mut b, &cos, &sin, RopeStyle::Interleaved);
    for i in 0..4 {
        assert_eq!(a[i], v0[i] * cos[i] - v0[i + 4] * sin[i]);
        assert_eq!(a[i + 4], v0[i + 4] * cos[i] + v0[i] * sin[i]);
        assert_eq!(b[2 * i], v0[2 * i] * cos[i] - v0[2 * i + 1] * sin[i]);
        assert_eq!(b[2 * i + 1], v0[2 * i + 1] * cos[i] + v0[2 * i] * sin[i]);
    }

    // embedding rows = dequantized rows of the packed matrix
    let (p, deq) = packed(&mut r, 40, 64);
    let toks = [3i64, 0, 39, 3];
    let mut e = vec![0.0; 4 * 64];
    embedding(&p.as_ref(), &toks, &mut e).unwrap();
    for (s, &t) in toks.iter().enumerate() {
        assert_eq!(&e[s * 64..(s + 1) * 64], &deq[t as usize * 64..(t as usize + 1) * 64]);
    }
    assert!(embedding(&p.as_ref(), &[40], &mut e[..64]).is_err());
    assert!(embedding(&p.as_ref(), &[-1], &mut e[..64]).is_err());
}

#[test]
fn lm_head_uses_the_last_row_and_swiglu_matches_formula() {
    let mut r = Rng(11);
    let (d, v, f) = (64, 48, 32);
    let (head, head_deq) = packed(&mut r, v, d);
    let x = r.vec(3 * d, 1.0);
    let nw = r.vec(d, 1.0);
    let pool = ThreadPool::new(2);
    let mut out = vec![0.0; v];
    lm_head_last(&x, 3, &nw, 1e-5, &head.as_ref(), true, &mut out, &mut Default::default(), &pool, &Kernels::best()).unwrap();
    let mut normed = vec![0.0; d];
    rms_norm(&x[2 * d..], 1, &nw, 1e-5, &mut normed).unwrap();
    for n in 0..v {
        let want: f64 = (0..d).map(|k| normed[k] as f64 * head_deq[n * d + k] as f64).sum();
        assert!((out[n] as f64 - want).abs() < 1e-4, "logit {n}");
    }
    let (w13, w13d) = packed(&mut r, 2 * f, d);
    let (w2, w2d) = packed(&mut r, d, f);
    let mut y = vec![0.0; 2 * d];
    swiglu_ffn(&w13.as_ref(), &w2.as_ref(), &x[..2 * d], 2, true, &mut y, &mut Default::default(), &pool, &Kernels::best()).unwrap();
    for row in 0..2 {
        let xr = &x[row * d..(row + 1) * d];
        let h: Vec<f64> = (0..2 * f).map(|n| (0..d).map(|k| xr[k] as f64 * w13d[n * d + k] as f64).sum()).collect();
        let act: Vec<f64> = (0..f).map(|i| h[i] / (1.0 + (-h[i]).exp()) * h[f + i]).collect();
        for n in 0..d {
            let want: f64 = (0..f).map(|k| act[k] * w2d[n * f + k] as f64).sum();
            assert!((y[row * d + n] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()), "swiglu row {row} col {n}");
        }
    }
}

#[test]
fn simd_dot_products_equal_the_16_lane_reference_bit_for_bit() {
    let mut r = Rng(21);
    let mut checked = 0;
    for n in [16usize, 32, 64, 128, 256] {
        for _ in 0..50 {
            let a = r.vec(n, 3.0);
            let b = r.vec(n, 3.0);
            let want = dot_lanes(&a, &b).to_bits();
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: feature checked; equal lengths, multiple of 16.
                    assert_eq!(unsafe { mobilemoe_ops::kernels::attn_dot::dot_avx512(&a, &b) }.to_bits(), want);
                    checked += 1;
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: as above.
                    assert_eq!(unsafe { mobilemoe_ops::kernels::attn_dot::dot_avx2(&a, &b) }.to_bits(), want);
                    checked += 1;
                }
            }
            #[cfg(target_arch = "aarch64")]
            {
                // SAFETY: NEON is baseline; equal lengths, multiple of 16.
                assert_eq!(unsafe { mobilemoe_ops::kernels::attn_dot::dot_neon(&a, &b) }.to_bits(), want);
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no SIMD dot product was checked on this CPU");
}

#[test]
fn fp16_conversion_is_exact_for_every_value() {
    for bits in 0..=u16::MAX {
        let want = half::f16::from_bits(bits).to_f32();
        let got = f16_bits_to_f32(bits);
        assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{bits:#06x}: {got} vs {want}");
    }
}
