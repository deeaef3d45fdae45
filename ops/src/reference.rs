//! A naive, unfused MoE layer and dense linear written straight from docs/DESIGN.md: per token,
//! per selected expert, on unpacked integer weights. The fused, permuted, threaded `moe::moe_ffn`
//! (and `linear::linear`) must equal it bit for bit (same operation order); tests also check it
//! against plain fp32 formulas.
//!
//! Independent of the code it checks: the layout walk (section 2), the activation quantization
//! (section 3), the router dot product, the exponential, and the top-k selection (section 4) are
//! re-derived here as plain loops from the formulas, not imported. Where the production code fixes
//! a convention that decides the bits (the 8-lane order of the router dot product, the Cephes
//! `exp` polynomial behind sigmoid/SiLU, ties-to-even rounding), the same convention is written out
//! again in the most direct form (`round_ties_even`, `powi`, a full sort instead of a partial
//! insertion sort). Only the shape/validation types (`MoeSpec`, `MoeWeights::validate`,
//! `PackedRef`) are shared.

use crate::moe::{MoeSpec, MoeWeights};
use crate::quant::{MatrixSpec, PackedRef, WeightBits};
use crate::routing::{GroupScore, RouterConfig, ScoreFunc};
use std::cmp::Ordering;

/// Rows per tile and columns per chunk of the T16K4 layout (DESIGN section 2).
const TILE: usize = 16;
const CHUNK: usize = 4;

/// Integer weights `[n, k]` and scales `[n, k / G]` of a packed matrix (DESIGN section 2): tiles of
/// 16 rows, per group, chunks of 4 columns; a chunk holds row r's 4 values at bytes `4r..4r+4`
/// (INT8), or rows r and r + 8 in the low and high nibble of byte `4r + c` (INT4, value + 8).
/// Scales are stored per tile and group, 16 rows each.
pub fn unpack(w: &PackedRef<'_>) -> (Vec<i8>, Vec<f32>) {
    let (n, k, group) = (w.spec.n, w.spec.k, w.spec.group);
    let ng = k / group;
    let chunk_bytes = match w.spec.bits {
        WeightBits::Int4 => TILE * CHUNK / 2,
        WeightBits::Int8 => TILE * CHUNK,
    };
    let mut q = vec![0i8; n * k];
    let mut s = vec![0f32; n * ng];
    let mut chunks = w.data.chunks_exact(chunk_bytes);
    let scales_f32 = w.scales.to_f32_vec();
    let mut scales = scales_f32.chunks_exact(TILE);
    for t in 0..n.div_ceil(TILE) {
        let rows = TILE.min(n - t * TILE); // rows of this tile that exist (the rest is padding)
        for g in 0..ng {
            let tile_scales = scales.next().expect("scales cover the tiles");
            for (r, &sv) in tile_scales[..rows].iter().enumerate() {
                s[(t * TILE + r) * ng + g] = sv;
            }
            for c in 0..group / CHUNK {
                let bytes = chunks.next().expect("data covers the tiles");
                let col = g * group + c * CHUNK;
                // Row r's 4 values of this chunk go to q[row, col..col + 4].
                let mut put = |r: usize, vals: [i32; CHUNK]| {
                    let at = (t * TILE + r) * k + col;
                    for (d, v) in q[at..at + CHUNK].iter_mut().zip(vals) {
                        *d = v as i8;
                    }
                };
                match w.spec.bits {
                    WeightBits::Int8 => {
                        for r in 0..rows {
                            let b = &bytes[r * CHUNK..(r + 1) * CHUNK];
                            put(r, [0, 1, 2, 3].map(|j| b[j] as i8 as i32));
                        }
                    }
                    WeightBits::Int4 => {
                        for r in 0..rows {
                            let b = &bytes[(r % 8) * CHUNK..(r % 8 + 1) * CHUNK];
                            let nibble = |byte: u8| if r < 8 { byte & 0x0F } else { byte >> 4 };
                            put(r, [0, 1, 2, 3].map(|j| nibble(b[j]) as i32 - 8));
                        }
                    }
                }
            }
        }
    }
    (q, s)
}

/// Per-token asymmetric INT8 quantization of one row (DESIGN section 3, torchao's formulas):
/// `lo = min(min x, 0)`, `hi = max(max x, 0)`, `scale = max((hi - lo) / 255, eps)`,
/// `zp = clamp(-128 - round(lo / scale), -128, 127)`, `q = clamp(round(x * (1 / scale)) + zp)`,
/// rounding half to even. A row with a NaN or an infinity: q = 0, zp = 0, scale = NaN.
/// Returns (q, scale, zp).
pub fn quantize_row(x: &[f32]) -> (Vec<i8>, f32, i32) {
    if x.iter().any(|v| !v.is_finite()) {
        return (vec![0; x.len()], f32::NAN, 0);
    }
    let (mut lo, mut hi) = (0f32, 0f32);
    for &v in x {
        if v < lo {
            lo = v;
        }
        if v > hi {
            hi = v;
        }
    }
    let scale = ((hi - lo) / 255.0).max(f32::EPSILON);
    let zp = (-128.0 - (lo / scale).round_ties_even()).clamp(-128.0, 127.0);
    let inv = 1.0 / scale;
    let q = x.iter().map(|&v| ((v * inv).round_ties_even() + zp).clamp(-128.0, 127.0) as i8).collect();
    (q, scale, zp as i32)
}

/// Router logit: fp32 dot product in the crate's fixed order — 8 lanes (lane l sums the products
/// of elements l, l + 8, ... over the whole 8-element blocks), the tail summed separately, then
/// `((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7)) + tail`. Products and sums rounded separately.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let blocks = a.len() / 8 * 8;
    let mut lane = [0f32; 8];
    for i in 0..blocks {
        lane[i % 8] += a[i] * b[i];
    }
    let mut tail = 0f32;
    for i in blocks..a.len() {
        tail += a[i] * b[i];
    }
    ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7])) + tail
}

/// `e^x` by the crate's convention (DESIGN section 4): Cephes `expf` — clamp x to
/// [ln(MIN_POSITIVE), ln(MAX)], `n = round(x log2 e)`, `r = x - n ln 2` in two fused steps, the
/// degree-6 polynomial by fused Horner steps, times 2^(n/2 rounded down) then 2^(the rest);
/// above the range +inf, below it 0, NaN stays NaN.
pub fn exp(x: f32) -> f32 {
    let (lo, hi) = (-87.336_54f32, 88.722_83f32);
    let xc = x.clamp(lo, hi);
    let n = (xc * std::f32::consts::LOG2_E).round_ties_even();
    let r = n.mul_add(-0.693_359_4, xc);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4f32;
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = p.mul_add(r, c);
    }
    let p = p.mul_add(r * r, r) + 1.0;
    let ni = n as i32; // NaN -> 0: the result is NaN anyway
    let n1 = ni.div_euclid(2);
    let y = (p * 2f32.powi(n1)) * 2f32.powi(ni - n1);
    if x > hi {
        f32::INFINITY
    } else if x < lo {
        0.0
    } else {
        y
    }
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// Expert ids of the k best `keys`, by a full sort: descending, NaN below everything, equal keys
/// (including -0 = +0) by the lower index.
pub fn select(keys: &[f32], k: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..keys.len() as u32).collect();
    ids.sort_by(|&a, &b| {
        let (x, y) = (keys[a as usize], keys[b as usize]);
        let by_value = match (x.is_nan(), y.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => y.partial_cmp(&x).unwrap(),
        };
        by_value.then(a.cmp(&b))
    });
    ids.truncate(k);
    ids
}

/// The experts that group-limited routing lets compete (DESIGN section 4): all, or the members of
/// the `top_groups` groups with the best group scores (max, or sum of the two best keys).
fn eligible_experts(cfg: &RouterConfig, keys: &[f32]) -> Vec<bool> {
    let g = cfg.group_limit;
    let e = keys.len();
    if g.groups <= 1 || g.top_groups >= g.groups {
        return vec![true; e];
    }
    let per = e / g.groups;
    let group_scores: Vec<f32> = (0..g.groups)
        .map(|gi| {
            let best = select(&keys[gi * per..(gi + 1) * per], 2);
            let top1 = keys[gi * per + best[0] as usize];
            match g.score {
                GroupScore::Max => top1,
                GroupScore::TopTwoSum => top1 + keys[gi * per + best[1] as usize],
            }
        })
        .collect();
    let chosen = select(&group_scores, g.top_groups);
    (0..e).map(|i| chosen.contains(&((i / per) as u32))).collect()
}

/// `select` among the eligible experts only.
fn select_eligible(keys: &[f32], eligible: &[bool], k: usize) -> Vec<u32> {
    select(keys, keys.len()).into_iter().filter(|&i| eligible[i as usize]).take(k).collect()
}

/// PhiMoE `sparsemixer` weight of `pick` (DESIGN section 4): softmax at `pick` over the candidate
/// logits within the relative threshold `2 eps` of it.
fn sparsemixer_weight(logits: &[f32], pick: usize, candidates: &[bool], eps: f32) -> f32 {
    let m = logits[pick];
    let mut sum = 0f32;
    for (j, &s) in logits.iter().enumerate() {
        let factor = if s.abs() < m { m } else { s.abs() };
        // torch masks where `(m - s) / factor > 2 eps`: a NaN ratio is not masked
        let masked = (m - s) / factor > 2.0 * eps;
        if candidates[j] && !masked {
            sum += exp(s - m);
        }
    }
    exp(0.0) / sum
}

/// Routing of one token (DESIGN section 4): (expert ids, weights) in selection order.
pub fn route(cfg: &RouterConfig, logits: &[f32], bias: Option<&[f32]>) -> (Vec<u32>, Vec<f32>) {
    let k = cfg.top_k;
    // Divide by max(sum + renorm_eps, renorm_min): by default a sum below the smallest normal f32
    // divides by that instead (0 weights, not NaN).
    let renorm = |w: &mut Vec<f32>| {
        let mut sum = 0f32;
        for &v in w.iter() {
            sum += v;
        }
        let shifted = sum + cfg.renorm_eps;
        let div = if shifted < cfg.renorm_min { cfg.renorm_min } else { shifted };
        w.iter_mut().for_each(|v| *v /= div);
    };
    // The selection-only bias is added to every score function's keys.
    let pick = |keys: &[f32]| {
        let keys: Vec<f32> = match bias {
            Some(b) => keys.iter().zip(b).map(|(&v, &bv)| v + bv).collect(),
            None => keys.to_vec(),
        };
        select_eligible(&keys, &eligible_experts(cfg, &keys), k)
    };
    let (ids, mut wts) = match cfg.score_func {
        ScoreFunc::Softmax => {
            let ids = pick(logits);
            let mut max = f32::NEG_INFINITY;
            for &i in &ids {
                if logits[i as usize] > max {
                    max = logits[i as usize];
                }
            }
            let mut w: Vec<f32> = ids.iter().map(|&i| exp(logits[i as usize] - max)).collect();
            let mut sum = 0f32;
            for &v in &w {
                sum += v;
            }
            w.iter_mut().for_each(|v| *v /= sum);
            (ids, w)
        }
        ScoreFunc::SoftmaxAll => {
            let mut max = f32::NEG_INFINITY;
            for &l in logits {
                if l > max {
                    max = l;
                }
            }
            let mut p: Vec<f32> = logits.iter().map(|&l| exp(l - max)).collect();
            let mut sum = 0f32;
            for &v in &p {
                sum += v;
            }
            p.iter_mut().for_each(|v| *v /= sum);
            let ids = pick(&p);
            let mut w: Vec<f32> = ids.iter().map(|&i| p[i as usize]).collect();
            if cfg.renormalize {
                renorm(&mut w);
            }
            (ids, w)
        }
        ScoreFunc::Sigmoid | ScoreFunc::TopkSigmoid => {
            let s: Vec<f32> = logits.iter().map(|&l| sigmoid(l)).collect();
            // sigmoid: selection on the (biased) scores; the weights are the unbiased scores.
            // topk_sigmoid: the selection is on the (biased) logits themselves.
            let ids = if cfg.score_func == ScoreFunc::TopkSigmoid { pick(logits) } else { pick(&s) };
            let mut w: Vec<f32> = ids.iter().map(|&i| s[i as usize]).collect();
            if cfg.renormalize {
                renorm(&mut w);
            }
            (ids, w)
        }
        ScoreFunc::SparseMixer => {
            let first = select(logits, 1)[0];
            let mut rest = vec![true; logits.len()];
            rest[first as usize] = false;
            let second = select_eligible(logits, &rest, 1)[0];
            let w = vec![
                sparsemixer_weight(logits, first as usize, &vec![true; logits.len()], cfg.jitter_eps),
                sparsemixer_weight(logits, second as usize, &rest, cfg.jitter_eps),
            ];
            (vec![first, second], w)
        }
    };
    if cfg.route_scale != 1.0 {
        wts.iter_mut().for_each(|v| *v *= cfg.route_scale);
    }
    (ids, wts)
}

/// `y[n] = sum_g fma(...)` over unpacked weights, Q8 or exact numerics, for one row `x[k]`
/// (DESIGN section 3: per row, groups in order; Q8: integer group sums of (q_x - zp) q_w, then
/// `acc = fma(isum, scale_w, acc)`, `y = acc * scale_x`; exact: `part = fma(x, q_w, part)` per
/// group, `acc = fma(part, scale_w, acc)`).
fn matvec(q: &[i8], s: &[f32], n: usize, k: usize, group: usize, x: &[f32], exact: bool) -> Vec<f32> {
    let ng = k / group;
    let mut y = vec![0f32; n];
    if exact {
        for (r, yr) in y.iter_mut().enumerate() {
            let mut acc = 0f32;
            for g in 0..ng {
                let mut part = 0f32;
                let (xg, wg) = (&x[g * group..(g + 1) * group], &q[r * k + g * group..r * k + (g + 1) * group]);
                // In order, element by element (blocks of 8 only load the operands together:
                // one sanitizer check per block in the fuzz builds instead of one per element).
                for (xb, wb) in xg.chunks_exact(8).zip(wg.chunks_exact(8)) {
                    let (xb, wb): ([f32; 8], [i8; 8]) = (xb.try_into().unwrap(), wb.try_into().unwrap());
                    for (xv, wv) in xb.into_iter().zip(wb) {
                        part = xv.mul_add(wv as f32, part);
                    }
                }
                acc = part.mul_add(s[r * ng + g], acc);
            }
            *yr = acc;
        }
    } else {
        let (qa, sa, zp) = quantize_row(x);
        let xs: Vec<i32> = qa.iter().map(|&v| v as i32 - zp).collect();
        for (r, yr) in y.iter_mut().enumerate() {
            let mut acc = 0f32;
            for g in 0..ng {
                let (xg, wg) = (&xs[g * group..(g + 1) * group], &q[r * k + g * group..r * k + (g + 1) * group]);
                // |isum| <= 255 * 128 * 256 < 2^24: no overflow, so wrapping arithmetic is exact
                // (it lets the loop vectorise in builds with overflow checks, e.g. the fuzzers').
                let mut isum = 0i32;
                for (xb, wb) in xg.chunks_exact(8).zip(wg.chunks_exact(8)) {
                    let (xb, wb): ([i32; 8], [i8; 8]) = (xb.try_into().unwrap(), wb.try_into().unwrap());
                    for (a, b) in xb.into_iter().zip(wb) {
                        isum = isum.wrapping_add(a.wrapping_mul(b as i32));
                    }
                }
                acc = (isum as f32).mul_add(s[r * ng + g], acc);
            }
            *yr = acc * sa;
        }
    }
    y
}

/// Output-grouped scales (`MoeSpec::scales_out`): for each output group `g`, the row scaled by
/// `s[k, g]` (`s` is `[k, n / group]`), then [`matvec`] of the group's rows with unit scales.
fn matvec_out_grouped(q: &[i8], s: &[f32], n: usize, k: usize, group: usize, x: &[f32], exact: bool) -> Vec<f32> {
    let ng = n / group;
    let ones = vec![1f32; group * (k / group)];
    let mut y = vec![0f32; n];
    for g in 0..ng {
        let xs: Vec<f32> = (0..k).map(|kk| x[kk] * s[kk * ng + g]).collect();
        let yg = matvec(&q[g * group * k..(g + 1) * group * k], &ones, group, k, group, &xs, exact);
        y[g * group..(g + 1) * group].copy_from_slice(&yg);
    }
    y
}

/// One expert's (or the shared expert's) unpacked gate+up and down matrices.
struct Unpacked {
    spec13: MatrixSpec,
    w13: (Vec<i8>, Vec<f32>),
    spec2: MatrixSpec,
    w2: (Vec<i8>, Vec<f32>),
    /// Output-grouped scales `[K, N / group]` of w13 and w2 (then `w13.1`/`w2.1` are ones).
    out_scales: Option<(Vec<f32>, Vec<f32>)>,
}

impl Unpacked {
    fn new(w13: &PackedRef<'_>, w2: &PackedRef<'_>) -> Self {
        Self { spec13: w13.spec, w13: unpack(w13), spec2: w2.spec, w2: unpack(w2), out_scales: None }
    }
    /// `W2 (silu(W1 x) * W3 x)` (SwiGLU), W1 and W3 the two halves of the gate+up rows.
    fn ffn(&self, x: &[f32], exact: bool) -> Vec<f32> {
        let (a, b) = (&self.spec13, &self.spec2);
        let f = a.n / 2;
        let h = match &self.out_scales {
            Some((s13, _)) => matvec_out_grouped(&self.w13.0, s13, 2 * f, a.k, a.group, x, exact),
            None => matvec(&self.w13.0, &self.w13.1, 2 * f, a.k, a.group, x, exact),
        };
        let act: Vec<f32> = (0..f).map(|j| silu(h[j]) * h[f + j]).collect();
        match &self.out_scales {
            Some((_, s2)) => matvec_out_grouped(&self.w2.0, s2, b.n, b.k, b.group, &act, exact),
            None => matvec(&self.w2.0, &self.w2.1, b.n, b.k, b.group, &act, exact),
        }
    }
}

/// Naive dense linear `out[m, n] = x[m, k] @ W^T (+ bias)` (the bias added after the product).
/// Panics on invalid input (test-only helper).
pub fn linear_naive(w: &PackedRef<'_>, bias: Option<&[f32]>, x: &[f32], m: usize, exact: bool) -> Vec<f32> {
    let w = PackedRef::new(w.spec, w.data, w.scales).expect("valid weights");
    let (n, k) = (w.spec.n, w.spec.k);
    let (q, s) = unpack(&w);
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        let mut y = matvec(&q, &s, n, k, w.spec.group, &x[i * k..(i + 1) * k], exact);
        if let Some(b) = bias {
            y.iter_mut().zip(b).for_each(|(v, &bv)| *v += bv);
        }
        out.extend(y);
    }
    out
}

/// Expert `ex`'s slice of a stacked weight: every expert's matrix has the same byte and scale count.
fn expert<'a>(spec: MatrixSpec, data: &'a [u8], scales: crate::quant::ScaleRef<'a>, ex: usize, experts: usize) -> PackedRef<'a> {
    let (db, sc) = (data.len() / experts, scales.len() / experts);
    PackedRef { spec, data: &data[ex * db..(ex + 1) * db], scales: scales.slice(ex * sc..(ex + 1) * sc) }
}

/// Naive MoE layer for `x[t, D]`; panics on invalid input (test-only helper).
pub fn moe_ffn_naive(spec: &MoeSpec, w: &MoeWeights<'_>, x: &[f32], t: usize) -> Vec<f32> {
    w.validate(spec).expect("valid weights");
    let (d, e) = (spec.dim, spec.router.num_experts);
    let (s13, s2) = (spec.w13_spec().unwrap(), spec.w2_spec().unwrap());
    let mut out = vec![0f32; t * d];
    let mut experts: Vec<Option<Unpacked>> = (0..e).map(|_| None).collect(); // unpacked when first used
    let shared = w.shared.map(|sh| Unpacked::new(&sh.w13, &sh.w2));
    for i in 0..t {
        let xi = &x[i * d..(i + 1) * d];
        let logits: Vec<f32> = (0..e).map(|j| dot(xi, &w.router_w[j * d..(j + 1) * d])).collect();
        let (ids, wts) = route(&spec.router, &logits, w.expert_bias);
        let y = &mut out[i * d..(i + 1) * d];
        for (&ex, &wt) in ids.iter().zip(&wts) {
            let ex = ex as usize;
            let unpacked = experts[ex].get_or_insert_with(|| {
                if spec.scales_out {
                    // the integers with unit scales, the stored scales kept apart
                    let (o13, o2) = (vec![1f32; s13.scale_count()], vec![1f32; s2.scale_count()]);
                    let a = PackedRef {
                        spec: s13,
                        data: &w.w13[ex * s13.data_bytes()..(ex + 1) * s13.data_bytes()],
                        scales: (&o13[..]).into(),
                    };
                    let b = PackedRef { spec: s2, data: &w.w2[ex * s2.data_bytes()..(ex + 1) * s2.data_bytes()], scales: (&o2[..]).into() };
                    let mut u = Unpacked::new(&a, &b);
                    let (n13, n2) = (w.w13_scales.len() / e, w.w2_scales.len() / e);
                    let sc = |s: crate::quant::ScaleRef<'_>, n: usize| s.slice(ex * n..(ex + 1) * n).to_f32_vec();
                    u.out_scales = Some((sc(w.w13_scales, n13), sc(w.w2_scales, n2)));
                    u
                } else {
                    Unpacked::new(&expert(s13, w.w13, w.w13_scales, ex, e), &expert(s2, w.w2, w.w2_scales, ex, e))
                }
            });
            // weight_input: y += expert(w * x); otherwise y += w * expert(x).
            let (o, wt) = if spec.router.weight_input {
                let scaled: Vec<f32> = xi.iter().map(|&v| v * wt).collect();
                (unpacked.ffn(&scaled, spec.exact), 1.0f32)
            } else {
                (unpacked.ffn(xi, spec.exact), wt)
            };
            for (yv, ov) in y.iter_mut().zip(o) {
                *yv = wt.mul_add(ov, *yv);
            }
        }
        if let (Some(sh), Some(unpacked)) = (w.shared, &shared) {
            let o = unpacked.ffn(xi, spec.exact);
            let g = sh.gate.map(|gw| sigmoid(dot(xi, gw))).unwrap_or(1.0);
            for (yv, ov) in y.iter_mut().zip(o) {
                *yv = g.mul_add(ov, *yv);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! The re-derived conventions equal the production ones bit for bit on special values (the
    //! layer-level tests in ops/tests compare whole layers).
    use super::*;
    use crate::quant::PackedMatrix;

    fn specials() -> Vec<f32> {
        let mut v = vec![0.0, -0.0, 1.0, -1.0, 0.5, f32::MIN_POSITIVE, 1e-40, -1e-40, f32::MAX, -f32::MAX];
        v.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 88.7, 88.8, -87.3, -87.4, -103.9, 20.0, -20.0]);
        // random bit patterns (every exponent, NaN payloads), folded into (-200, 200)
        let mut r = crate::testing::Rng(0x1234_5678);
        for _ in 0..2000 {
            v.push(f32::from_bits(r.next_u64() as u32) % 200.0);
        }
        v
    }

    #[test]
    fn exp_sigmoid_silu_equal_production() {
        for x in specials() {
            for (a, b) in [(exp(x), crate::moe::exp_f32(x)), (sigmoid(x), crate::moe::sigmoid(x)), (silu(x), crate::moe::silu(x))] {
                assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "x = {x:e}: {a:e} vs {b:e}");
            }
        }
    }

    #[test]
    fn dot_and_quantize_row_equal_production() {
        let v = specials();
        for len in [1usize, 7, 8, 9, 31, 64, 100] {
            for start in (0..v.len() - 2 * len).step_by(97) {
                let (a, b) = (&v[start..start + len], &v[start + len..start + 2 * len]);
                let (x, y) = (dot(a, b), crate::routing::dot_f32(a, b));
                assert!(x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()), "dot len {len} at {start}");
            }
        }
        for group in [32usize, 64] {
            for start in (0..v.len() - 2 * group).step_by(61) {
                let x = &v[start..start + 2 * group];
                let (q, s, z) = quantize_row(x);
                let (mut q2, mut s2, mut z2, mut gs) = (vec![0i8; x.len()], 0f32, 0i32, vec![0i32; 2]);
                crate::act::quantize_row(x, group, &mut q2, &mut s2, &mut z2, &mut gs);
                assert_eq!((&q, z), (&q2, z2), "quantize_row at {start}");
                assert!(s.to_bits() == s2.to_bits() || (s.is_nan() && s2.is_nan()));
            }
        }
    }

    #[test]
    fn unpack_and_select_equal_production() {
        for bits in [WeightBits::Int4, WeightBits::Int8] {
            let spec = MatrixSpec::new(19, 64, 32, bits).unwrap();
            let w: Vec<f32> = specials().into_iter().filter(|v| v.is_finite()).take(19 * 64).collect();
            let p = PackedMatrix::quantize(&w, spec).unwrap();
            assert_eq!(unpack(&p.as_ref()), crate::quant::unpack(&p.as_ref()));
        }
        let v = specials();
        for start in (0..v.len() - 12).step_by(7) {
            let keys = &v[start..start + 12];
            for k in [1, 3, 12] {
                let mut ids = vec![0u32; k];
                crate::routing::top_k(keys, &mut ids);
                assert_eq!(select(keys, k), ids, "keys {keys:?}");
            }
        }
    }
}
