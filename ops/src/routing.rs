//! MoE routing: router GEMM, score functions, NaN-safe top-k with lowest-index tie-break.
//! Every exponential is the crate's deterministic `moe::exp_f32` (the same bits on every ISA).

use crate::error::{check_len, mul_dims, OpsError, Result};
use crate::moe::{exp_f32, sigmoid};

/// Score function (wire names: `softmax`, `softmax_all`, `sigmoid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScoreFunc {
    /// Top-k over the logits, then softmax over the k selected (Mixtral).
    Softmax,
    /// Softmax over all experts, then top-k, optionally renormalised (Qwen-MoE, OLMoE).
    SoftmaxAll,
    /// Sigmoid scores; optional bias for selection only; normalised; times route_scale (DeepSeek-V3).
    Sigmoid,
}

impl ScoreFunc {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "softmax" => Ok(Self::Softmax),
            "softmax_all" => Ok(Self::SoftmaxAll),
            "sigmoid" => Ok(Self::Sigmoid),
            other => Err(OpsError::UnknownScoreFunc(other.to_string())),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Softmax => "softmax",
            Self::SoftmaxAll => "softmax_all",
            Self::Sigmoid => "sigmoid",
        }
    }
}

/// Routing attributes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RouterConfig {
    pub num_experts: usize,
    pub top_k: usize,
    pub score_func: ScoreFunc,
    /// Divide the selected weights by their sum (softmax_all, sigmoid).
    pub renormalize: bool,
    /// Multiplies the final weights.
    pub route_scale: f32,
}

impl RouterConfig {
    pub fn validate(&self) -> Result<()> {
        if self.num_experts == 0 {
            return Err(OpsError::ZeroDim { what: "num_experts" });
        }
        if self.top_k == 0 || self.top_k > self.num_experts {
            return Err(OpsError::BadTopK { top_k: self.top_k, num_experts: self.num_experts });
        }
        if !self.route_scale.is_finite() {
            return Err(OpsError::Invalid(format!("route_scale must be finite, got {}", self.route_scale)));
        }
        Ok(())
    }
}

/// Key for selection: NaN ranks below every number (including -inf) so it is never preferred.
#[inline]
fn better(a: f32, ia: usize, b: f32, ib: usize) -> bool {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => ia < ib,
        (true, false) => false,
        (false, true) => true,
        (false, false) => a > b || (a == b && ia < ib),
    }
}

/// Top-k of `scores` into `ids` (descending; ties and NaNs by lowest index). `ids.len()` is k.
/// Every id written is `< scores.len()`; if k > `scores.len()` only the first `scores.len()` ids
/// are written, and k = 0 or empty `scores` writes nothing (never panics).
pub fn top_k(scores: &[f32], ids: &mut [u32]) {
    let k = ids.len().min(scores.len());
    if k == 0 {
        return;
    }
    // Partial insertion sort: k is small (<= 8 typically) and E <= a few hundred.
    let mut n = 0usize;
    for (i, &s) in scores.iter().enumerate() {
        if n < k {
            ids[n] = i as u32;
            n += 1;
        } else if better(s, i, scores[ids[k - 1] as usize], ids[k - 1] as usize) {
            ids[k - 1] = i as u32;
        } else {
            continue;
        }
        // bubble the new element up
        let mut j = n - 1;
        while j > 0 && better(scores[ids[j] as usize], ids[j] as usize, scores[ids[j - 1] as usize], ids[j - 1] as usize) {
            ids.swap(j, j - 1);
            j -= 1;
        }
    }
}

/// Divisor of a renormalisation: the sum, clamped below at the smallest normal f32 so that an
/// all-zero selection (e.g. sigmoid scores that underflow) gives weights 0 instead of 0/0 = NaN
/// (ExecuTorch's `MOEFeedForward` clamps the same way). NaN stays NaN.
#[inline]
fn renorm_divisor(sum: f32) -> f32 {
    if sum < f32::MIN_POSITIVE {
        f32::MIN_POSITIVE
    } else {
        sum
    }
}

/// Route one token: `logits[E]` -> (`ids[k]`, `weights[k]`). `scratch` needs `E` floats.
pub fn route_token(
    cfg: &RouterConfig,
    logits: &[f32],
    expert_bias: Option<&[f32]>,
    scratch: &mut [f32],
    ids: &mut [u32],
    weights: &mut [f32],
) {
    let e = cfg.num_experts;
    let k = cfg.top_k;
    let scratch = &mut scratch[..e];
    match cfg.score_func {
        ScoreFunc::Softmax => {
            top_k(logits, &mut ids[..k]);
            let max = ids[..k].iter().map(|&i| logits[i as usize]).fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for j in 0..k {
                let v = exp_f32(logits[ids[j] as usize] - max);
                weights[j] = v;
                sum += v;
            }
            for w in &mut weights[..k] {
                *w /= sum;
            }
        }
        ScoreFunc::SoftmaxAll => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (s, &l) in scratch.iter_mut().zip(logits) {
                *s = exp_f32(l - max);
                sum += *s;
            }
            for s in scratch.iter_mut() {
                *s /= sum;
            }
            top_k(scratch, &mut ids[..k]);
            let mut sel = 0f32;
            for j in 0..k {
                weights[j] = scratch[ids[j] as usize];
                sel += weights[j];
            }
            if cfg.renormalize {
                let div = renorm_divisor(sel);
                for w in &mut weights[..k] {
                    *w /= div;
                }
            }
        }
        ScoreFunc::Sigmoid => {
            for (s, &l) in scratch.iter_mut().zip(logits) {
                *s = sigmoid(l);
            }
            match expert_bias {
                Some(b) => {
                    // Selection on biased scores; weights from the unbiased ones.
                    top_k_biased(scratch, b, &mut ids[..k]);
                }
                None => top_k(scratch, &mut ids[..k]),
            }
            let mut sel = 0f32;
            for j in 0..k {
                weights[j] = scratch[ids[j] as usize];
                sel += weights[j];
            }
            if cfg.renormalize {
                let div = renorm_divisor(sel);
                for w in &mut weights[..k] {
                    *w /= div;
                }
            }
        }
    }
    if cfg.route_scale != 1.0 {
        for w in &mut weights[..k] {
            *w *= cfg.route_scale;
        }
    }
}

/// Top-k over `scores + bias` without materialising the sum.
fn top_k_biased(scores: &[f32], bias: &[f32], ids: &mut [u32]) {
    let k = ids.len().min(scores.len());
    if k == 0 {
        return;
    }
    let key = |i: usize| scores[i] + bias[i];
    let mut n = 0usize;
    for i in 0..scores.len() {
        let s = key(i);
        if n < k {
            ids[n] = i as u32;
            n += 1;
        } else if better(s, i, key(ids[k - 1] as usize), ids[k - 1] as usize) {
            ids[k - 1] = i as u32;
        } else {
            continue;
        }
        let mut j = n - 1;
        while j > 0 && better(key(ids[j] as usize), ids[j] as usize, key(ids[j - 1] as usize), ids[j - 1] as usize) {
            ids.swap(j, j - 1);
            j -= 1;
        }
    }
}

/// Router for `t` tokens: `x[t, d]`, `router_w[E, d]` (fp32) -> `ids[t, k]`, `weights[t, k]`.
/// `logits` needs `t * E` floats, `scratch` `E`.
#[allow(clippy::too_many_arguments)]
pub fn route(
    cfg: &RouterConfig,
    x: &[f32],
    t: usize,
    d: usize,
    router_w: &[f32],
    expert_bias: Option<&[f32]>,
    logits: &mut [f32],
    scratch: &mut [f32],
    ids: &mut [u32],
    weights: &mut [f32],
) -> Result<()> {
    cfg.validate()?;
    let (e, k) = (cfg.num_experts, cfg.top_k);
    check_len("router input", mul_dims("router input", &[t, d])?, x.len())?;
    check_len("router weight", mul_dims("router weight", &[e, d])?, router_w.len())?;
    if let Some(b) = expert_bias {
        check_len("expert bias", e, b.len())?;
    }
    check_len("router logits scratch", mul_dims("router logits scratch", &[t, e])?, logits.len())?;
    check_len("expert ids", mul_dims("expert ids", &[t, k])?, ids.len())?;
    check_len("expert weights", mul_dims("expert weights", &[t, k])?, weights.len())?;
    if scratch.len() < e {
        return Err(OpsError::SizeMismatch { what: "router scratch", expected: e, got: scratch.len() });
    }
    router_logits(x, t, d, router_w, e, logits);
    for i in 0..t {
        route_token(cfg, &logits[i * e..(i + 1) * e], expert_bias, scratch, &mut ids[i * k..(i + 1) * k], &mut weights[i * k..(i + 1) * k]);
    }
    Ok(())
}

/// `logits[i, e] = sum_d x[i, d] * w[e, d]` in fp32 (4 partial sums, then added: auto-vectorises).
pub fn router_logits(x: &[f32], t: usize, d: usize, w: &[f32], e: usize, logits: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked above). Same code, 8-wide registers: the 8
            // accumulators of `dot_f32` become one ymm, identical operations and order.
            unsafe { router_logits_avx2(x, t, d, w, e, logits) };
            return;
        }
    }
    router_logits_generic(x, t, d, w, e, logits)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn router_logits_avx2(x: &[f32], t: usize, d: usize, w: &[f32], e: usize, logits: &mut [f32]) {
    router_logits_generic(x, t, d, w, e, logits)
}

#[inline(always)]
fn router_logits_generic(x: &[f32], t: usize, d: usize, w: &[f32], e: usize, logits: &mut [f32]) {
    for i in 0..t {
        let xr = &x[i * d..(i + 1) * d];
        for j in 0..e {
            logits[i * e + j] = dot_f32(xr, &w[j * d..(j + 1) * d]);
        }
    }
}

/// fp32 dot product with 8 independent accumulators (vectorised by the compiler).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    // chunks_exact: no bounds checks in the loop, so it vectorises (same operations and order).
    for (ca, cb) in a.chunks_exact(8).zip(b[..chunks * 8].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += ca[l] * cb[l];
        }
    }
    let mut s = 0f32;
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + s
}
