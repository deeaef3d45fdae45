//! Harnesses for the public entry points of `mobilemoe-ops`.
//!
//! Each harness derives its inputs with `arbitrary`, predicts whether the call is valid
//! (attributes in range, every buffer length matching its claimed shape) and asserts:
//! - the call returns `Ok` exactly when the input is valid, a typed `Err` otherwise (never panics);
//! - on `Ok`, every available kernel set (scalar, AVX2, AVX-512 VNNI, ...; ops_kernels), the naive
//!   reference `mobilemoe_ops::reference` (ops_linear, ops_moe_ffn) and both a 1-thread and a
//!   2-thread pool give the same bits (docs/DESIGN.md section 3), and a reused (grow-only) scratch
//!   gives the same bits as a fresh one;
//! - structural output properties (expert ids in range and distinct, untouched output columns).

use crate::gen::*;
use arbitrary::{Arbitrary, Unstructured};
use mobilemoe_ops::act::QuantActs;
use mobilemoe_ops::moe::{exp_f32, sigmoid}; // the library's deterministic exp: same scores, same order
use mobilemoe_ops::quant::{self, MatrixSpec, PackedRef, WeightBits};
use mobilemoe_ops::reference;
use mobilemoe_ops::routing::{self, GroupLimit, GroupScore, RouterConfig, ScoreFunc};
use mobilemoe_ops::{linear, moe_ffn, Kernels, LinearScratch, MoeScratch, MoeSpec, MoeWeights, OpsError, SharedExpert, ThreadPool};
use std::cell::RefCell;
use std::sync::OnceLock;

fn parse<'a, T: Arbitrary<'a>>(data: &'a [u8]) -> Option<T> {
    T::arbitrary_take_rest(Unstructured::new(data)).ok()
}

/// A 1-thread and a 2-thread pool shared by all iterations.
pub fn pool(two: bool) -> &'static ThreadPool {
    static P1: OnceLock<ThreadPool> = OnceLock::new();
    static P2: OnceLock<ThreadPool> = OnceLock::new();
    if two {
        P2.get_or_init(|| {
            // Idle workers spin 50 us by default before sleeping: after every job of every fuzz
            // iteration that is a core burnt next to the fuzzer (and the machine is usually shared).
            // The spin path still runs (64 pauses before the first clock read). Read once.
            if std::env::var_os("MOBILEMOE_SPIN_US").is_none() {
                std::env::set_var("MOBILEMOE_SPIN_US", "0");
            }
            ThreadPool::new(2)
        })
    } else {
        P1.get_or_init(|| ThreadPool::new(1))
    }
}

/// What `MatrixSpec::new` accepts (docs/DESIGN.md section 1-2).
pub fn spec_valid(n: usize, k: usize, g: usize, bits: WeightBits) -> bool {
    // Every derived size fits: padded rows x K elements, and data bytes + 4 bytes per scale.
    let fits = |elems: usize| {
        let data = if bits == WeightBits::Int4 { elems / 2 } else { elems };
        data.checked_add(4 * (elems / g)).is_some()
    };
    matches!(g, 32 | 64 | 128 | 256) && n > 0 && k > 0 && k.is_multiple_of(g) && mul(&[n.div_ceil(16), 16, k]).is_some_and(fits)
}

fn check_spec_sizes(spec: &MatrixSpec) {
    let (n, k, g) = (spec.n, spec.k, spec.group);
    let padded = spec.padded_rows();
    assert_eq!(padded % 16, 0);
    assert!(padded >= n && padded - n < 16);
    assert_eq!(spec.tiles() * 16, padded);
    assert_eq!(spec.groups(), k / g);
    assert_eq!(spec.chunks_per_group(), g / 4);
    let elems = padded.checked_mul(k).expect("MatrixSpec::new guarantees padded*k fits");
    let data = match spec.bits {
        WeightBits::Int4 => elems / 2,
        WeightBits::Int8 => elems,
    };
    assert_eq!(spec.data_bytes(), data);
    assert_eq!(spec.tile_bytes() * spec.tiles(), data);
    assert_eq!(spec.scale_count(), padded * (k / g));
    // Derived totals must not overflow (or panic) for any spec `new` accepted.
    let _ = spec.total_bytes();
}

// ------------------------------------------------------------------------------------------------
// MatrixSpec::new / PackedRef::new / quantize / pack / unpack

#[derive(Arbitrary, Debug)]
pub struct MatrixSpecInput {
    n: Dim,
    k: Dim,
    group: GroupSel,
    bits: BitsSel,
    data_delta: Delta,
    scales_delta: Delta,
    w: FloatFill,
    bytes: ByteFill,
    scales: FloatFill,
    bad_q: Option<(u16, i8)>,
}

pub fn ops_matrix_spec(data: &[u8]) {
    let Some(inp) = parse::<MatrixSpecInput>(data) else { return };
    let raw_bits = inp.bits.get();
    let bits = match WeightBits::from_bits(raw_bits) {
        Ok(b) => {
            assert!(raw_bits == 4 || raw_bits == 8);
            assert_eq!(b.bits(), raw_bits);
            b
        }
        Err(e) => {
            assert!(matches!(e, OpsError::BadWeightBits { .. }), "{e:?}");
            return;
        }
    };
    let g = inp.group.get();
    let n = inp.n.get(|s| s as usize % 72);
    let k = inp.k.get(|s| if s % 16 == 15 { s as usize } else { g.max(1) * (s as usize % 5) });
    let res = MatrixSpec::new(n, k, g, bits);
    assert_eq!(res.is_ok(), spec_valid(n, k, g, bits), "MatrixSpec::new({n}, {k}, {g}) = {res:?}");
    let Ok(spec) = res else {
        // Public fields: the same shape built without `new` is a typed error everywhere.
        let raw = MatrixSpec { n, k, group: g, bits };
        assert!(PackedRef::new(raw, &[], &[0f32; 0][..]).is_err());
        assert!(quant::quantize_rows(&[], raw).is_err());
        assert!(quant::pack(&[], &[], raw).is_err());
        return;
    };
    check_spec_sizes(&spec);

    let (dl, dok) = buf_len(Some(spec.data_bytes()), inp.data_delta.get());
    let (sl, sok) = buf_len(Some(spec.scale_count()), inp.scales_delta.get());
    let d = inp.bytes.make(dl);
    let s = inp.scales.make_scales(sl);
    let r = PackedRef::new(spec, &d, &s);
    assert_eq!(r.is_ok(), dok && sok, "PackedRef::new lens {dl}/{} {sl}/{}", spec.data_bytes(), spec.scale_count());
    let Ok(pr) = r else { return };
    if n * k > 1 << 16 {
        return;
    }
    let deq = pr.dequantize();
    assert_eq!(deq.len(), n * k);
    let (q, sc) = quant::unpack(&pr);
    assert!(q.iter().all(|&v| (v as i32) >= bits.qmin() && (v as i32) <= bits.qmax()));
    // pack(unpack(x)) round-trips on the real rows.
    let re = quant::pack(&q, &sc, spec).expect("unpacked values are packable");
    let (q2, s2) = quant::unpack(&re.as_ref());
    assert_eq!(q, q2);
    assert_eq!(same_bits(&sc, &s2), None);

    // Quantize fp32 weights (with NaN/inf): scales >= f32::MIN_POSITIVE (never NaN or 0; the
    // quantizer follows torchao's formula), q in range, round trip.
    let w = inp.w.make(n * k);
    let (qq, ss) = quant::quantize_rows(&w, spec).expect("sizes match");
    if let Some(i) = ss.iter().position(|&v| v.is_nan() || v < f32::MIN_POSITIVE) {
        let g = spec.groups();
        panic!(
            "scale {} below f32::MIN_POSITIVE or NaN for row {} group {}: {:?}",
            ss[i],
            i / g,
            i % g,
            &w[(i / g) * k + (i % g) * spec.group..][..spec.group]
        );
    }
    let pm = quant::PackedMatrix::quantize(&w, spec).expect("quantize");
    let (q3, s3) = quant::unpack(&pm.as_ref());
    assert_eq!(q3, qq);
    assert_eq!(same_bits(&s3, &ss), None);
    // Out-of-range integer weights are rejected by pack.
    if let Some((i, v)) = inp.bad_q {
        let mut q4 = qq.clone();
        q4[i as usize % (n * k)] = v;
        let out_of_range = (v as i32) < bits.qmin() || (v as i32) > bits.qmax();
        assert_eq!(quant::pack(&q4, &ss, spec).is_err(), out_of_range);
    }
    // Wrong-length inputs to quantize/pack: typed errors.
    assert!(quant::quantize_rows(&w[..w.len() - 1], spec).is_err());
    assert!(quant::pack(&qq[1..], &ss, spec).is_err());
    assert!(quant::pack(&qq, &ss[1..], spec).is_err());
}

// ------------------------------------------------------------------------------------------------
// Routing: router GEMM, score functions, NaN-safe top-k

#[derive(Arbitrary, Debug)]
pub struct RoutingInput {
    experts: Dim,
    top_k: Dim,
    tokens: Dim,
    d: u8,
    score: u8,
    renormalize: bool,
    route_scale: Option<Special>,
    x: FloatFill,
    w: FloatFill,
    bias: Option<FloatFill>,
    deltas: [Delta; 7],
    direct: FloatFill,
    direct_n: u8,
    direct_k: u8,
}

/// The routing attributes of format version 4, from one fuzzer byte (`score`, after the score
/// function): group limit, group score, sparsemixer threshold.
fn v4_routing(cfg: &mut RouterConfig, extra: u8) {
    cfg.group_limit = GroupLimit {
        groups: 1 + (extra % 4) as usize,
        top_groups: 1 + (extra / 4 % 4) as usize,
        score: if (extra / 16).is_multiple_of(2) { GroupScore::Max } else { GroupScore::TopTwoSum },
    };
    let pick = (extra / 32 % 8) as usize;
    cfg.jitter_eps = [0.0, 0.01, 0.3, -0.1, f32::NAN, 0.0, 0.0, 0.0][pick];
    // renormalisation: default, LFM2 (+1e-6), DeepSeek (+1e-20), ERNIE (min 1e-12), invalid ones
    let (eps, min) = [
        (0.0, f32::MIN_POSITIVE),
        (1e-6, f32::MIN_POSITIVE),
        (1e-20, f32::MIN_POSITIVE),
        (0.0, 1e-12),
        (0.0, f32::MIN_POSITIVE),
        (-1.0, f32::MIN_POSITIVE),
        (0.0, 0.0),
        (f32::INFINITY, 1.0),
    ][(extra / 2 % 8) as usize];
    cfg.renorm_eps = eps;
    cfg.renorm_min = min;
}

/// Validity of a router config, from docs/DESIGN.md section 4 (independent of `validate`).
fn router_valid(c: &RouterConfig) -> bool {
    let (e, k, g) = (c.num_experts, c.top_k, c.group_limit);
    let basic = e > 0 && k >= 1 && k <= e && c.route_scale.is_finite();
    let groups_fit = g.groups >= 1 && e % g.groups == 0 && g.top_groups >= 1 && g.top_groups <= g.groups;
    let limited = g.groups > 1 && g.top_groups < g.groups;
    let limit_ok = !limited
        || (k <= g.top_groups * (e / g.groups)
            && (g.score == GroupScore::Max || e / g.groups >= 2)
            && c.score_func != ScoreFunc::SparseMixer);
    let mixer_ok = c.score_func != ScoreFunc::SparseMixer || (k == 2 && !c.renormalize && c.jitter_eps >= 0.0 && c.jitter_eps.is_finite());
    let renorm_ok = c.renorm_eps >= 0.0 && c.renorm_eps.is_finite() && c.renorm_min > 0.0 && c.renorm_min.is_finite();
    basic && groups_fit && limit_ok && mixer_ok && renorm_ok
}

/// Equal bits, or both NaN (NaN payloads are not specified).
fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Top-k by the documented order: descending, NaN below everything, lowest index wins ties.
pub fn naive_top_k(scores: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (scores[a], scores[b]);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => a.cmp(&b),
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ => y.partial_cmp(&x).unwrap().then(a.cmp(&b)),
        }
    });
    idx.truncate(k);
    idx.into_iter().map(|i| i as u32).collect()
}

/// The keys the top-k ranks: the score function's (logits, probabilities, sigmoids) plus the
/// selection-only bias.
fn selection_scores(cfg: &RouterConfig, logits: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let mut keys = unbiased_keys(cfg, logits);
    if let Some(b) = bias {
        keys.iter_mut().zip(b).for_each(|(k, &bv)| *k += bv);
    }
    keys
}

fn unbiased_keys(cfg: &RouterConfig, logits: &[f32]) -> Vec<f32> {
    match cfg.score_func {
        ScoreFunc::Softmax | ScoreFunc::TopkSigmoid => logits.to_vec(),
        ScoreFunc::SparseMixer => unreachable!("sparsemixer is checked against the reference"),
        ScoreFunc::SoftmaxAll => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut v: Vec<f32> = logits.iter().map(|&l| exp_f32(l - max)).collect();
            let sum: f32 = v.iter().fold(0f32, |a, &b| a + b);
            v.iter_mut().for_each(|s| *s /= sum);
            v
        }
        ScoreFunc::Sigmoid => logits.iter().map(|&l| sigmoid(l)).collect(),
    }
}

pub fn ops_routing(data: &[u8]) {
    let Some(inp) = parse::<RoutingInput>(data) else { return };
    // Direct top_k on arbitrary scores (ids.len() may exceed scores.len()).
    {
        let scores = inp.direct.make(inp.direct_n as usize % 40);
        let mut ids = vec![u32::MAX; inp.direct_k as usize % 12];
        routing::top_k(&scores, &mut ids);
        let kk = ids.len().min(scores.len());
        assert_eq!(ids[..kk], naive_top_k(&scores, kk)[..], "top_k on {scores:?}");
        assert!(ids[kk..].iter().all(|&v| v == u32::MAX));
    }
    for f in ScoreFunc::ALL {
        assert_eq!(ScoreFunc::parse(f.name()).unwrap(), f);
    }
    assert!(ScoreFunc::parse("Softmax ").is_err());

    let e = inp.experts.get(|s| s as usize % 40);
    let k = inp.top_k.get(|s| s as usize % 12);
    let t = inp.tokens.get(|s| s as usize % 9);
    let d = 1 + inp.d as usize % 48;
    let route_scale = inp.route_scale.map(|s| s.value()).unwrap_or(1.0);
    let mut cfg = RouterConfig {
        num_experts: e,
        top_k: k,
        score_func: ScoreFunc::ALL[inp.score as usize % 5],
        renormalize: inp.renormalize,
        route_scale,
        ..Default::default()
    };
    v4_routing(&mut cfg, inp.score / 5);
    let cfg_ok = router_valid(&cfg);
    assert_eq!(cfg.validate().is_ok(), cfg_ok, "{cfg:?}");

    let dl = inp.deltas;
    let (xl, xok) = buf_len(mul(&[t, d]), dl[0].get());
    let (wl, wok) = buf_len(mul(&[e, d]), dl[1].get());
    let (bl, bok) = buf_len(Some(e), dl[2].get());
    let (ll, lok) = buf_len(mul(&[t, e]), dl[3].get());
    // The scratch (E + 2 * groups) may be longer than needed.
    let need = e.saturating_add(2 * cfg.group_limit.groups);
    let (sl, _) = buf_len(Some(need), dl[4].get());
    let sok = e <= CAP_ELEMS && sl >= need;
    let (il, iok) = buf_len(mul(&[t, k]), dl[5].get());
    let (ql, qok) = buf_len(mul(&[t, k]), dl[6].get());
    let x = inp.x.make(xl);
    let w = inp.w.make(wl);
    let bias = inp.bias.as_ref().map(|b| b.make(bl));
    let mut logits = vec![0f32; ll];
    let mut scratch = vec![0f32; sl];
    let mut ids = vec![u32::MAX; il];
    let mut wts = vec![0f32; ql];
    // sparsemixer takes no selection bias
    let bias_ok = bias.is_none() || (bok && cfg.score_func != ScoreFunc::SparseMixer);
    let expect_ok = cfg_ok && xok && wok && bias_ok && lok && sok && iok && qok;
    let r = routing::route(&cfg, &x, t, d, &w, bias.as_deref(), &mut logits, &mut scratch, &mut ids, &mut wts);
    assert_eq!(r.is_ok(), expect_ok, "route: {r:?}");
    if r.is_err() {
        return;
    }
    // Every token's ids are in range; the sort-based references (naive_top_k, reference::route)
    // check the first and last token and two more picked by a hash of the input: tokens route
    // independently, and sorting every token under coverage instrumentation made this target
    // spend 70% of its time in comparison tracing (381 exec/s).
    assert!(ids.iter().all(|&id| (id as usize) < e), "expert id out of range: {ids:?}");
    if t == 0 {
        return;
    }
    let h = fnv1a(data) as usize;
    let mut checked = vec![0, t - 1, h % t, (h / 7) % t];
    checked.sort_unstable();
    checked.dedup();
    for i in checked {
        let row = &ids[i * k..(i + 1) * k];
        let lrow = &logits[i * e..(i + 1) * e];
        let wrow = &wts[i * k..(i + 1) * k];
        let plain =
            cfg.group_limit.groups == 1 && matches!(cfg.score_func, ScoreFunc::Softmax | ScoreFunc::SoftmaxAll | ScoreFunc::Sigmoid);
        if plain {
            let sel = selection_scores(&cfg, lrow, bias.as_deref());
            assert_eq!(row, &naive_top_k(&sel, k)[..], "selection differs from the documented order");
        } else {
            // group limits, topk_sigmoid, sparsemixer: the naive reference, ids and weight bits
            let (rid, rw) = reference::route(&cfg, lrow, bias.as_deref());
            assert_eq!(row, &rid[..], "selection differs from the reference ({cfg:?}, logits {lrow:?})");
            assert!(wrow.iter().zip(&rw).all(|(&a, &b)| same_f32(a, b)), "weights {wrow:?} vs reference {rw:?}");
            let distinct: std::collections::BTreeSet<_> = row.iter().collect();
            assert_eq!(distinct.len(), k, "repeated expert in {row:?}");
        }
        if cfg.score_func == ScoreFunc::Softmax && lrow.iter().all(|v| v.is_finite()) && route_scale == 1.0 {
            assert!(wrow.iter().all(|&v| (0.0..=1.0).contains(&v)), "softmax weights {wrow:?}");
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Kernels::gemm_q8 / gemm_f32 directly (contract checks, cross-ISA bit equality, untouched columns)

#[derive(Arbitrary, Debug)]
pub struct KernelsInput {
    n: u8,
    k_units: u8,
    group: u8,
    int8: bool,
    m: u8,
    tile0: u8,
    tile1: u8,
    exact: bool,
    ldo_extra: u8,
    out_delta: Delta,
    corrupt: u8,
    raw_q: Option<ByteFill>,
    w: ByteFill,
    scales: FloatFill,
    x: FloatFill,
}

const SENTINEL: u32 = 0x7FA1_2345; // a signalling-NaN payload no kernel produces

pub fn ops_kernels(data: &[u8]) {
    let Some(inp) = parse::<KernelsInput>(data) else { return };
    let g = [32, 64, 128, 256][inp.group as usize % 4];
    let k = g * (1 + inp.k_units as usize % 4);
    let n = 1 + inp.n as usize % 64;
    let bits = if inp.int8 { WeightBits::Int8 } else { WeightBits::Int4 };
    let spec = MatrixSpec::new(n, k, g, bits).unwrap();
    let wd = inp.w.make(spec.data_bytes());
    let ws = inp.scales.make_scales(spec.scale_count());
    let w = PackedRef::new(spec, &wd, &ws).unwrap();
    let m = inp.m as usize % 9;
    let tiles = spec.tiles();
    let (t0, t1) = (inp.tile0 as usize % (tiles + 2), inp.tile1 as usize % (tiles + 2));
    let ldo = if inp.ldo_extra == 255 { n - 1 } else { n + inp.ldo_extra as usize % 5 };
    let need = if m == 0 { 0 } else { (m - 1) * ldo + n };
    let out_len = (need as isize + inp.out_delta.get()).max(0) as usize;
    let x = inp.x.make(m * k);

    let mut qa = QuantActs::default();
    qa.quantize(&x, m, k, g).unwrap();
    if let Some(raw) = &inp.raw_q {
        // Arbitrary int8 activations and zero points (all of [-128, 127] is in contract), with
        // `gsum = sum(q - zp)` per group as `QuantActs` computes it, unless the seed is odd: then
        // `gsum = sum(q)` (out of contract: SIMD results may differ, but must stay memory-safe).
        let bytes = raw.make(m * k + m);
        let (qb, zb) = bytes.split_at(m * k);
        for (q, &b) in qa.q.iter_mut().zip(qb) {
            *q = b as i8;
        }
        for (z, &b) in qa.zp.iter_mut().zip(zb) {
            *z = b as i8 as i32;
        }
        let ng = k / g;
        for i in 0..m {
            let zp = if raw.seed & 1 == 1 { 0 } else { qa.zp[i] };
            for gg in 0..ng {
                qa.gsum[i * ng + gg] = qa.q[i * k + gg * g..i * k + (gg + 1) * g].iter().map(|&v| v as i32 - zp).sum();
            }
        }
    }
    let in_contract = inp.raw_q.as_ref().is_none_or(|r| r.seed & 1 == 0);
    let full = qa.as_ref();
    let mut a = full;
    let mut xs: &[f32] = &x;
    let bad_zp = [200i32];
    let corrupt = inp.corrupt % 16;
    match corrupt {
        7 if m > 0 => a.zp = &full.zp[1..],
        8 => a.group = g * 2,
        9 if m > 0 => a.q = &full.q[1..],
        10 if m > 0 => a.gsum = &full.gsum[1..],
        11 if m > 0 => a.scale = &full.scale[1..],
        12 => a.m = m + 1,
        13 => a.k = k + g,
        14 if m > 0 => xs = &x[1..],
        15 if m == 1 => a.zp = &bad_zp, // a zero point outside [-128, 127]
        _ => {}
    }
    let acts_ok = a.group == g
        && a.k == k
        && a.q.len() == a.m * a.k
        && a.scale.len() == a.m
        && a.zp.len() == a.m
        && a.zp.iter().all(|z| (-128..=127).contains(z))
        && a.gsum.len() == a.m * (a.k / a.group);
    let geom_ok = |mm: usize| t0 <= t1 && t1 <= tiles && ldo >= n && (mm == 0 || ((mm - 1) * ldo + n) <= out_len);
    let expect_ok = if inp.exact { geom_ok(m) && xs.len() == m * k } else { geom_ok(a.m) && acts_ok };

    let mut reference: Option<Vec<f32>> = None;
    for ks in Kernels::available() {
        let mut out = vec![f32::from_bits(SENTINEL); out_len];
        let ok = if inp.exact { ks.gemm_f32(&w, t0..t1, xs, m, &mut out, ldo) } else { ks.gemm_q8(&w, t0..t1, &a, &mut out, ldo) };
        assert_eq!(ok, expect_ok, "{:?}: contract check disagrees", ks.kind);
        if !ok {
            assert!(out.iter().all(|v| v.to_bits() == SENTINEL), "{:?} wrote after refusing", ks.kind);
            continue;
        }
        // Columns outside the tile range, and row padding, are untouched.
        let (c0, c1) = (t0 * 16, (t1 * 16).min(n));
        for (idx, v) in out.iter().enumerate() {
            let (i, c) = (idx / ldo, idx % ldo);
            let written = i < m && c >= c0 && c < c1;
            assert_eq!(v.to_bits() != SENTINEL, written, "{:?}: element ({i}, {c}) written={}", ks.kind, !written);
        }
        if !in_contract {
            continue;
        }
        match &reference {
            None => reference = Some(out),
            Some(r) => {
                if let Some(p) = same_bits(r, &out) {
                    panic!("{:?} differs from scalar at {p}: {} vs {}", ks.kind, r[p], out[p]);
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// linear()

#[derive(Arbitrary, Debug)]
pub struct LinearInput {
    n: Dim,
    k: Dim,
    group: GroupSel,
    bits: BitsSel,
    m: Dim,
    exact: bool,
    unchecked_spec: u8,
    bias: Option<FloatFill>,
    deltas: [Delta; 5],
    w: ByteFill,
    scales: FloatFill,
    x: FloatFill,
    two_threads: bool,
}

/// Calls up to this many multiply-adds are always checked against `mobilemoe_ops::reference`
/// (ops_linear, ops_moe_ffn); larger ones 1 in 8.
pub const REF_MACS: usize = 1 << 10;

/// ops_linear checks 1 valid call in this many above `REF_MACS` against the reference, chosen by a
/// hash of the whole input: a choice by one fuzzer-chosen byte (`x.seed % 8`, as ops_moe_ffn still
/// does) was not 1 in 8, the corpus kept the inputs that ran the reference (new hit counts in its
/// loops) and their mutants inherited the byte, so the reference on large calls was 64% of the time.
pub const REF_EVERY: u64 = 8;

/// FNV-1a of `data`: a deterministic sample of inputs that no single byte decides.
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Multiply-adds per `linear` call in ops_linear (small claimed dims only), see there. 4K (was 16K):
/// every edge fits (two tiles of 17 rows x one group of 32 x 7 rows, 64 rows x one group of 32 x 2
/// rows, four groups of 256 x 4 rows).
pub const LINEAR_MACS: usize = 1 << 12;

pub fn ops_linear(data: &[u8]) {
    let Some(inp) = parse::<LinearInput>(data) else { return };
    let Ok(bits) = WeightBits::from_bits(inp.bits.get()) else { return };
    // Edges, not sizes: n = 0..39 (1, 15, 16, 17, 31..33: around the 16-row tile), k = 1..4 groups,
    // m = 0..8 rows, or (1 in 16) 64..71 rows (the prefill row-block split, m >= 64).
    let m = inp.m.get(|s| if s >= 232 { 64 + s as usize % 8 } else { s as usize % 9 });
    // The prefill split with groups of 32 or 64 only: one row of 64 x 256 is already 4x
    // LINEAR_MACS, and the grown corpus gathered there (its steady state fell to ~700 executions per
    // CPU second, in the exact-path kernel and the reference); the row split does not depend on the
    // group.
    let g = match inp.group.get() {
        128 | 256 if (64..72).contains(&m) => 64,
        g => g,
    };
    let mut n = inp.n.get(|s| s as usize % 40);
    let mut k = inp.k.get(|s| g.max(1) * (1 + s as usize % if g >= 128 { 2 } else { 4 }));
    // Cost bound (three runs and a reference under ASan + coverage instrumentation): above
    // LINEAR_MACS multiply-adds fewer output rows, unless the claimed weights are too large to be
    // allocated anyway (a huge claim stays huge: the buffers cannot match, the call must fail). A raw
    // claimed n of a few thousand rows used to pass here and cost ~0.5 s per execution.
    let allocated = mul(&[n, k]).is_some_and(|v| v <= CAP_ELEMS);
    if allocated && m.saturating_mul(n).saturating_mul(k) > LINEAR_MACS {
        n = (LINEAR_MACS / m.saturating_mul(k).max(1)).max(1);
        // One row is still m x k (up to 71 x 1024): then fewer groups, at least one (a k that is
        // not a multiple of the group stays as it is: the call is invalid and cheap).
        if g > 0 && k.is_multiple_of(g) && m.saturating_mul(k) > LINEAR_MACS {
            k = g * (LINEAR_MACS / m.saturating_mul(g).max(1)).max(1);
        }
    }
    let valid = spec_valid(n, k, g, bits);
    // MatrixSpec and PackedRef have public fields: a caller can build an unchecked spec, so
    // 1 input in 8 bypasses `new` (the op must still not panic).
    let spec = if inp.unchecked_spec % 8 == 7 {
        MatrixSpec { n, k, group: g, bits }
    } else {
        match MatrixSpec::new(n, k, g, bits) {
            Ok(s) => s,
            Err(_) => return,
        }
    };
    let (db, sc) = if valid { (Some(spec.data_bytes()), Some(spec.scale_count())) } else { (None, None) };
    let dl = inp.deltas;
    let (wl, wok) = buf_len(db, dl[0].get());
    let (sl, sok) = buf_len(sc, dl[1].get());
    let (xl, xok) = buf_len(mul(&[m, k]), dl[2].get());
    let (ol, ook) = buf_len(mul(&[m, n]), dl[3].get());
    let (bl, bok) = buf_len(Some(n), dl[4].get());
    let wd = inp.w.make(wl);
    let ws = inp.scales.make_scales(sl);
    let x = inp.x.make(xl);
    let bias = inp.bias.as_ref().map(|b| b.make(bl));
    let w = PackedRef { spec, data: &wd, scales: (&ws).into() };
    let expect_ok = valid && wok && sok && xok && ook && (bias.is_none() || bok);
    let mut out = vec![0f32; ol];
    let r = linear(&w, bias.as_deref(), &x, m, &mut out, inp.exact, &mut LinearScratch::default(), pool(inp.two_threads), &Kernels::best());
    assert_eq!(r.is_ok(), expect_ok, "linear: {r:?}");
    if r.is_err() {
        return;
    }
    // The same call on the other pool (other row/tile split) with a fresh scratch -> same bits.
    let mut out2 = vec![0f32; ol];
    linear(&w, bias.as_deref(), &x, m, &mut out2, inp.exact, &mut LinearScratch::default(), pool(!inp.two_threads), &Kernels::best())
        .expect("same call on the other pool");
    if let Some(p) = same_bits(&out, &out2) {
        panic!("linear: 1 vs 2 threads differ at {p}: {} vs {}", out[p], out2[p]);
    }
    // Against the naive reference (plain loops from DESIGN sections 2-3, `reference.rs`; the scalar
    // kernel's per-element `packed_q` was 95% of this target's time, and ops_kernels already checks
    // every kernel set against it on each tile shape). Every call up to REF_MACS multiply-adds (the
    // edges: one row, one tile, one group), 1 in `REF_EVERY` above (by input hash): under ASan +
    // coverage each memory access of the plain loops costs a shadow check and a traced comparison.
    if m.saturating_mul(n).saturating_mul(k) > REF_MACS && !fnv1a(data).is_multiple_of(REF_EVERY) {
        return;
    }
    let want = reference::linear_naive(&w, bias.as_deref(), &x, m, inp.exact);
    if let Some(p) = same_bits(&out, &want) {
        panic!("linear: best kernels vs the naive reference differ at {p}: {} vs {}", out[p], want[p]);
    }
}

// ------------------------------------------------------------------------------------------------
// moe_ffn()

#[derive(Arbitrary, Debug)]
pub struct MoeInput {
    dim: Dim,
    hidden: Dim,
    group: GroupSel,
    bits: BitsSel,
    experts: Dim,
    top_k: Dim,
    tokens: Dim,
    score: u8,
    renormalize: bool,
    route_scale: Option<Special>,
    exact: bool,
    shared_sel: u8,
    bias: Option<FloatFill>,
    shared_gate: Option<FloatFill>,
    x: FloatFill,
    router: FloatFill,
    w13: ByteFill,
    w13s: FloatFill,
    w2: ByteFill,
    w2s: FloatFill,
    sh13: ByteFill,
    sh2: FloatFill,
    deltas: [Delta; 13],
    two_threads: bool,
}

/// Shared expert buffers: gate+up spec, data, scales; down spec, data, scales; optional gate.
type SharedBufs = (MatrixSpec, Vec<u8>, Vec<f32>, MatrixSpec, Vec<u8>, Vec<f32>, Option<Vec<f32>>);

struct MoeBufs {
    x: Vec<f32>,
    router: Vec<f32>,
    bias: Option<Vec<f32>>,
    w13: Vec<u8>,
    w13s: Vec<f32>,
    w2: Vec<u8>,
    w2s: Vec<f32>,
    sh: Option<SharedBufs>,
    out_len: usize,
}

thread_local! {
    static REUSED: RefCell<MoeScratch> = RefCell::new(MoeScratch::default());
}

/// Multiply-adds per `moe_ffn` call in ops_moe_ffn (small claimed token counts), see there.
pub const MOE_MACS: usize = 1 << 17;
/// Largest stacked expert weight (bytes) ops_moe_ffn passes with a matching length.
pub const MOE_WEIGHT_BYTES: usize = 1 << 13;

pub fn ops_moe_ffn(data: &[u8]) {
    let Some(inp) = parse::<MoeInput>(data) else { return };
    let g = inp.group.get();
    let Ok(bits) = WeightBits::from_bits(inp.bits.get()) else { return };
    // Edges, not sizes: D and F one or two groups (three for G = 32), E = 0..8, top-k = 0..4 or
    // (1 in 4) k = E, t = 0..4 tokens or (1 in 8) 5..40. The valid calls' cost is bounded (three
    // fused runs and the reference under ASan): weights above MOE_WEIGHT_BYTES are claimed with a
    // mismatching buffer (invalid call), and t shrinks to keep a call under MOE_MACS multiply-adds.
    let mult = |s: u8| g.max(1) * (1 + s as usize % if g >= 64 { 2 } else { 3 });
    let d = inp.dim.get(mult);
    let f = inp.hidden.get(mult);
    let e = inp.experts.get(|s| s as usize % 9);
    let k = inp.top_k.get(|s| if s % 4 == 3 { e } else { s as usize % 5 });
    let mut t = inp.tokens.get(|s| if s >= 224 { 5 + s as usize % 36 } else { s as usize % 5 });
    // shared expert: none, consistent, or inconsistent (weights without shared_hidden and vice versa)
    let (fs, with_shared) = match inp.shared_sel % 8 {
        0..=3 => (0, false),
        4..=5 => (mult(inp.shared_sel / 8), true),
        6 => (0, true),
        _ => (mult(inp.shared_sel / 8), false),
    };
    let per_token = (k.saturating_mul(3).saturating_mul(f)).saturating_add(fs.saturating_mul(3)).saturating_mul(d);
    // (one token is always allowed: its cost is bounded by MOE_WEIGHT_BYTES). Raw claimed token
    // counts too, unless the activations are too large to be allocated anyway (then the call must
    // fail cheaply): a raw t of ~2000 tokens used to pass here and cost ~0.5 s per execution.
    let allocated = mul(&[t, d]).is_some_and(|v| v <= CAP_ELEMS);
    if allocated && t > 1 && t.saturating_mul(per_token) > MOE_MACS {
        t = (MOE_MACS / per_token.max(1)).max(1);
    }
    let route_scale = inp.route_scale.map(|s| s.value()).unwrap_or(1.0);
    let spec = MoeSpec {
        dim: d,
        hidden: f,
        shared_hidden: fs,
        group: g,
        bits,
        router: RouterConfig {
            num_experts: e,
            top_k: k,
            score_func: ScoreFunc::ALL[inp.score as usize % 5],
            renormalize: inp.renormalize,
            route_scale,
            // 1 time in 2 the weight scales the expert input (Llama 4)
            weight_input: inp.score / 5 % 2 == 1,
            ..Default::default()
        },
        exact: inp.exact,
        scales_out: false,
    };
    let mut spec = spec;
    v4_routing(&mut spec.router, inp.score / 10);
    let router_ok = router_valid(&spec.router);
    let f2 = f.checked_mul(2);
    let fs2 = fs.checked_mul(2);
    let s13_ok = f2.is_some_and(|f2| spec_valid(f2, d, g, bits));
    let s2_ok = spec_valid(d, f, g, bits);
    let sh_ok = fs == 0 || (fs2.is_some_and(|v| spec_valid(v, d, g, bits)) && spec_valid(d, fs, g, bits));
    let spec_ok = router_ok && s13_ok && s2_ok && sh_ok;
    assert_eq!(spec.validate().is_ok(), spec_ok, "MoeSpec::validate {spec:?}");
    let _ = MoeWeights::bytes_read(&spec, e); // a statistic: any spec, never panics

    let sizes = |valid: bool, n: Option<usize>, kk: usize| -> (Option<usize>, Option<usize>) {
        match (valid, n) {
            (true, Some(n)) => {
                let s = MatrixSpec::new(n, kk, g, bits).unwrap();
                (Some(s.data_bytes()), Some(s.scale_count()))
            }
            _ => (None, None),
        }
    };
    let (d13, c13) = sizes(s13_ok, f2, d);
    let (d2, c2) = sizes(s2_ok, Some(d), f);
    let dl = inp.deltas;
    let mut all_ok = true;
    let mut len = |exp: Option<usize>, i: usize| {
        let (l, ok) = buf_len(exp, dl[i].get());
        all_ok &= ok;
        l
    };
    let xl = len(mul(&[t, d]), 0);
    let rl = len(mul(&[e, d]), 1);
    let capped = |v: Option<usize>| v.filter(|&b| b <= MOE_WEIGHT_BYTES);
    let w13l = len(capped(d13.and_then(|b| mul(&[e, b]))), 2);
    let w13sl = len(c13.and_then(|b| mul(&[e, b])), 3);
    let w2l = len(capped(d2.and_then(|b| mul(&[e, b]))), 4);
    let w2sl = len(c2.and_then(|b| mul(&[e, b])), 5);
    let ol = len(mul(&[t, d]), 6);
    let mut opt_ok = true;
    let mut opt_len = |exp: Option<usize>, i: usize| {
        let (l, ok) = buf_len(exp, dl[i].get());
        opt_ok &= ok;
        l
    };
    let bl = inp.bias.as_ref().map(|_| opt_len(Some(e), 7));
    let mut sh = None;
    if with_shared {
        // Shared weights for the shapes implied by `fs` (or a small made-up shape when fs == 0).
        // fs == 0: weights of a valid shape for this group (the call must then be rejected).
        let fsx = if fs == 0 { mult(inp.shared_sel / 8) } else { fs };
        let (a, b) = (MatrixSpec::new(2 * fsx.min(1 << 20), d.max(1), g, bits), MatrixSpec::new(d.max(1), fsx, g, bits));
        if let (Ok(sa), Ok(sb)) = (a, b) {
            if sa.data_bytes() <= MOE_WEIGHT_BYTES && sb.data_bytes() <= MOE_WEIGHT_BYTES {
                let l13 = opt_len(Some(sa.data_bytes()), 8);
                let l13s = opt_len(Some(sa.scale_count()), 9);
                let l2 = opt_len(Some(sb.data_bytes()), 10);
                let l2s = opt_len(Some(sb.scale_count()), 11);
                let gate = inp.shared_gate.as_ref().map(|gf| gf.make(opt_len(Some(d), 12)));
                sh = Some((sa, inp.sh13.make(l13), inp.sh2.make_scales(l13s), sb, inp.sh13.make(l2), inp.sh2.make_scales(l2s), gate));
            }
        }
    }
    let shared_consistent = match (&sh, fs) {
        // No shared weights passed (none chosen, or they did not fit the size cap).
        (None, 0) => true,
        (Some(_), fs) => fs > 0,
        (None, _) => false,
    };
    let b = MoeBufs {
        x: inp.x.make(xl),
        router: inp.router.make(rl),
        bias: inp.bias.as_ref().map(|bf| bf.make(bl.unwrap())),
        w13: inp.w13.make(w13l),
        w13s: inp.w13s.make_scales(w13sl),
        w2: inp.w2.make(w2l),
        w2s: inp.w2s.make_scales(w2sl),
        sh,
        out_len: ol,
    };
    let shared = b.sh.as_ref().map(|(sa, d13, s13, sb, d2, s2, gate)| SharedExpert {
        w13: PackedRef { spec: *sa, data: d13, scales: s13.into() },
        w2: PackedRef { spec: *sb, data: d2, scales: s2.into() },
        gate: gate.as_deref(),
    });
    let w = MoeWeights {
        router_w: &b.router,
        expert_bias: b.bias.as_deref(),
        w13: &b.w13,
        w13_scales: (&b.w13s).into(),
        w2: &b.w2,
        w2_scales: (&b.w2s).into(),
        shared,
    };
    let bias_ok = b.bias.is_none() || spec.router.score_func != ScoreFunc::SparseMixer; // sparsemixer: no bias
    let expect_ok = spec_ok && all_ok && opt_ok && shared_consistent && bias_ok;
    let mut out = vec![0f32; b.out_len];
    let r = moe_ffn(&spec, &w, &b.x, t, &mut out, &mut MoeScratch::default(), pool(inp.two_threads), &Kernels::best());
    assert_eq!(r.is_ok(), expect_ok, "moe_ffn: {r:?} (spec_ok {spec_ok}, lens {all_ok} {opt_ok}, shared {shared_consistent})");
    if r.is_err() {
        return;
    }
    // Same call on the other pool with a fresh scratch -> same bits.
    let mut out2 = vec![0f32; b.out_len];
    moe_ffn(&spec, &w, &b.x, t, &mut out2, &mut MoeScratch::default(), pool(!inp.two_threads), &Kernels::best())
        .expect("same call, other pool");
    if let Some(p) = same_bits(&out, &out2) {
        panic!("moe_ffn: 1 vs 2 threads differ at {p}: {} vs {}", out[p], out2[p]);
    }
    // Same call on a scratch reused across fuzz iterations (grow-only buffers with stale contents).
    let mut out3 = vec![0f32; b.out_len];
    REUSED.with(|s| moe_ffn(&spec, &w, &b.x, t, &mut out3, &mut s.borrow_mut(), pool(true), &Kernels::best())).expect("reused scratch run");
    if let Some(p) = same_bits(&out, &out3) {
        panic!("moe_ffn: reused scratch differs at {p}: {} vs {}", out[p], out3[p]);
    }
    // Against the naive unfused reference (plain loops from DESIGN, `reference.rs`; the scalar
    // kernel's per-element `packed_q` took 80-90% of this target's time): every call up to REF_MACS
    // multiply-adds, 1 in 8 above (see ops_linear).
    if t.saturating_mul(per_token) > REF_MACS && inp.x.seed % 8 != 0 {
        return;
    }
    let want = reference::moe_ffn_naive(&spec, &w, &b.x, t);
    if let Some(p) = same_bits(&out, &want) {
        panic!("moe_ffn: fused (best kernels) vs the naive reference differ at {p}: {} vs {}", out[p], want[p]);
    }
}
