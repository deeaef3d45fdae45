//! MoE routing: router GEMM, score functions, group-limited selection, NaN-safe top-k with
//! lowest-index tie-break. Every exponential is the crate's deterministic `moe::exp_f32` (the same
//! bits on every ISA).

use crate::error::{check_len, mul_dims, OpsError, Result};
use crate::moe::{exp_f32, sigmoid};

/// Score function (wire names: `softmax`, `softmax_all`, `sigmoid`, `topk_sigmoid`, `sparsemixer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScoreFunc {
    /// Top-k over the logits, then softmax over the k selected (Mixtral).
    Softmax,
    /// Softmax over all experts, then top-k, optionally renormalised (Qwen-MoE, OLMoE).
    SoftmaxAll,
    /// Sigmoid scores; optional bias for selection only; normalised; times route_scale (DeepSeek-V3).
    Sigmoid,
    /// Top-k over the logits, then the sigmoid of each selected logit (Llama 4).
    TopkSigmoid,
    /// PhiMoE's `sparsemixer` at inference, top-2: each pick (the best, then the best of the
    /// rest) is weighted by a softmax over the experts whose logit lies within a relative
    /// threshold `2 * jitter_eps` of the pick's.
    SparseMixer,
}

impl ScoreFunc {
    pub const ALL: [ScoreFunc; 5] = [Self::Softmax, Self::SoftmaxAll, Self::Sigmoid, Self::TopkSigmoid, Self::SparseMixer];

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| OpsError::UnknownScoreFunc(s.to_string()))
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Softmax => "softmax",
            Self::SoftmaxAll => "softmax_all",
            Self::Sigmoid => "sigmoid",
            Self::TopkSigmoid => "topk_sigmoid",
            Self::SparseMixer => "sparsemixer",
        }
    }
}

/// How a group of experts is scored for group-limited routing (wire names `max`, `top2_sum`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupScore {
    /// The best selection key in the group (DeepSeek-V2 `group_limited_greedy`).
    Max,
    /// The sum of the two best keys in the group (DeepSeek-V3 `noaux_tc`).
    TopTwoSum,
}

impl GroupScore {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "max" => Ok(Self::Max),
            "top2_sum" => Ok(Self::TopTwoSum),
            other => Err(OpsError::Invalid(format!("unknown group score {other:?} (max, top2_sum)"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Max => "max",
            Self::TopTwoSum => "top2_sum",
        }
    }
}

/// Group-limited routing: the experts form `groups` equal contiguous groups; only the experts of
/// the `top_groups` best groups (by `score` over the selection keys) can be selected.
/// `groups == 1` is no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GroupLimit {
    pub groups: usize,
    pub top_groups: usize,
    pub score: GroupScore,
}

impl GroupLimit {
    pub const NONE: GroupLimit = GroupLimit { groups: 1, top_groups: 1, score: GroupScore::Max };

    pub fn is_limited(&self) -> bool {
        self.groups > 1 && self.top_groups < self.groups
    }
}

impl Default for GroupLimit {
    fn default() -> Self {
        Self::NONE
    }
}

/// Routing attributes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RouterConfig {
    pub num_experts: usize,
    pub top_k: usize,
    pub score_func: ScoreFunc,
    /// Divide the selected weights by their sum (softmax_all, sigmoid, topk_sigmoid).
    pub renormalize: bool,
    /// Multiplies the final weights.
    pub route_scale: f32,
    /// Group-limited selection (DeepSeek); `GroupLimit::NONE` selects over all experts.
    pub group_limit: GroupLimit,
    /// The routing weight scales each expert's *input* (`expert(w * x)`, Llama 4) instead of its
    /// output (`w * expert(x)`); SwiGLU is not linear in `w`, so the two differ.
    pub weight_input: bool,
    /// `sparsemixer`'s `jitter_eps` (its threshold is `2 * jitter_eps`); 0 for the others.
    pub jitter_eps: f32,
    /// Renormalisation divides by `max(sum + renorm_eps, renorm_min)`: defaults 0 and
    /// `f32::MIN_POSITIVE` (an all-zero selection gets weights 0, not 0/0); LFM2-MoE adds 1e-6,
    /// DeepSeek-V3 1e-20, ERNIE 4.5 clamps at 1e-12.
    pub renorm_eps: f32,
    pub renorm_min: f32,
}

impl Default for RouterConfig {
    /// One expert, top-1 softmax: a base for `RouterConfig { num_experts, .., ..Default::default() }`.
    fn default() -> Self {
        RouterConfig {
            num_experts: 1,
            top_k: 1,
            score_func: ScoreFunc::Softmax,
            renormalize: false,
            route_scale: 1.0,
            group_limit: GroupLimit::NONE,
            weight_input: false,
            jitter_eps: 0.0,
            renorm_eps: 0.0,
            renorm_min: f32::MIN_POSITIVE,
        }
    }
}

impl RouterConfig {
    pub fn validate(&self) -> Result<()> {
        let (e, k) = (self.num_experts, self.top_k);
        if e == 0 {
            return Err(OpsError::ZeroDim { what: "num_experts" });
        }
        if k == 0 || k > e {
            return Err(OpsError::BadTopK { top_k: k, num_experts: e });
        }
        if !self.route_scale.is_finite() {
            return Err(OpsError::Invalid(format!("route_scale must be finite, got {}", self.route_scale)));
        }
        let g = self.group_limit;
        if g.groups == 0 || e % g.groups != 0 || g.top_groups == 0 || g.top_groups > g.groups {
            return Err(OpsError::Invalid(format!(
                "group limit: {} experts in {} groups, {} selected groups (need groups dividing the experts and 1 <= top_groups <= groups)",
                e, g.groups, g.top_groups
            )));
        }
        if g.is_limited() {
            let per = e / g.groups;
            if k > g.top_groups * per {
                return Err(OpsError::Invalid(format!(
                    "group limit: top_k = {k} exceeds the {} experts of the {} selected groups",
                    g.top_groups * per,
                    g.top_groups
                )));
            }
            if g.score == GroupScore::TopTwoSum && per < 2 {
                return Err(OpsError::Invalid("group score top2_sum needs at least 2 experts per group".into()));
            }
            if self.score_func == ScoreFunc::SparseMixer {
                return Err(OpsError::Invalid("sparsemixer routing has no group limit".into()));
            }
        }
        if !(self.renorm_eps.is_finite() && self.renorm_eps >= 0.0 && self.renorm_min.is_finite() && self.renorm_min > 0.0) {
            return Err(OpsError::Invalid(format!(
                "renorm_eps must be finite and >= 0 and renorm_min finite and > 0, got {} and {}",
                self.renorm_eps, self.renorm_min
            )));
        }
        if self.score_func == ScoreFunc::SparseMixer {
            if k != 2 || self.renormalize {
                return Err(OpsError::Invalid(format!(
                    "sparsemixer routing selects exactly 2 experts without renormalisation (top_k = {k}, renormalize = {})",
                    self.renormalize
                )));
            }
            if !(self.jitter_eps.is_finite() && self.jitter_eps >= 0.0) {
                return Err(OpsError::Invalid(format!("jitter_eps must be finite and >= 0, got {}", self.jitter_eps)));
            }
        }
        Ok(())
    }

    /// A selection bias fits: `E` floats, and not for sparsemixer (which takes none).
    pub fn check_bias(&self, bias: Option<&[f32]>) -> Result<()> {
        if let Some(b) = bias {
            check_len("expert bias", self.num_experts, b.len())?;
            if self.score_func == ScoreFunc::SparseMixer {
                return Err(OpsError::Invalid("sparsemixer routing takes no expert bias".into()));
            }
        }
        Ok(())
    }

    /// Floats of the `scratch` that `route_token` needs.
    pub fn scratch_len(&self) -> usize {
        self.num_experts + 2 * self.group_limit.groups
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
    top_k_by(scores.len(), |i| scores[i], |_| true, ids);
}

/// Top-k over the indices `0..n` that are `eligible`, ranked by `key` (as `top_k`). Writes at most
/// as many ids as there are eligible indices.
#[inline]
fn top_k_by(n: usize, key: impl Fn(usize) -> f32, eligible: impl Fn(usize) -> bool, ids: &mut [u32]) {
    let k = ids.len().min(n);
    if k == 0 {
        return;
    }
    // Partial insertion sort: k is small (<= 8 typically) and E <= a few hundred.
    let mut filled = 0usize;
    for i in (0..n).filter(|&i| eligible(i)) {
        let s = key(i);
        if filled < k {
            ids[filled] = i as u32;
            filled += 1;
        } else if better(s, i, key(ids[k - 1] as usize), ids[k - 1] as usize) {
            ids[k - 1] = i as u32;
        } else {
            continue;
        }
        // bubble the new element up
        let mut j = filled - 1;
        while j > 0 && better(key(ids[j] as usize), ids[j] as usize, key(ids[j - 1] as usize), ids[j - 1] as usize) {
            ids.swap(j, j - 1);
            j -= 1;
        }
    }
}

/// Divisor of a renormalisation: the (shifted) sum, clamped below at `min` (by default the
/// smallest normal f32, so that an all-zero selection, e.g. sigmoid scores that underflow, gives
/// weights 0 instead of 0/0 = NaN, as ExecuTorch's `MOEFeedForward` clamps). NaN stays NaN.
#[inline]
fn renorm_divisor(sum: f32, min: f32) -> f32 {
    if sum < min {
        min
    } else {
        sum
    }
}

/// Marks the `top_groups` best groups of `key` in `chosen` (1.0 chosen, 0.0 not): each group is
/// scored by `score` over its contiguous experts, groups ranked as `top_k` ranks experts.
/// `buf` holds the group scores (`groups` floats).
fn choose_groups(g: &GroupLimit, n: usize, key: &impl Fn(usize) -> f32, buf: &mut [f32], chosen: &mut [f32]) {
    let per = n / g.groups;
    for (gi, s) in buf.iter_mut().enumerate() {
        let members = gi * per..(gi + 1) * per;
        let mut best = [0u32; 2];
        let want = if g.score == GroupScore::TopTwoSum { 2 } else { 1 };
        top_k_by(per, |j| key(members.start + j), |_| true, &mut best[..want]);
        let first = key(members.start + best[0] as usize);
        // torch: `topk(2).values.sum()` (top2_sum, validated per >= 2) or `max` (per >= 1)
        *s = if want == 2 { first + key(members.start + best[1] as usize) } else { first };
    }
    for (gi, c) in chosen.iter_mut().enumerate() {
        let ahead = (0..g.groups).filter(|&h| better(buf[h], h, buf[gi], gi)).count();
        *c = if ahead < g.top_groups { 1.0 } else { 0.0 };
    }
}

/// Top-k of `key` (+ the selection-only `bias`) over the eligible experts: all, or those of the
/// chosen groups.
fn select(cfg: &RouterConfig, key: impl Fn(usize) -> f32, bias: Option<&[f32]>, group_scratch: &mut [f32], ids: &mut [u32]) {
    match bias {
        Some(b) => select_by(cfg, |i| key(i) + b[i], group_scratch, ids),
        None => select_by(cfg, key, group_scratch, ids),
    }
}

fn select_by(cfg: &RouterConfig, key: impl Fn(usize) -> f32, group_scratch: &mut [f32], ids: &mut [u32]) {
    let (e, g) = (cfg.num_experts, cfg.group_limit);
    if !g.is_limited() {
        top_k_by(e, key, |_| true, ids);
        return;
    }
    let (buf, chosen) = group_scratch[..2 * g.groups].split_at_mut(g.groups);
    choose_groups(&g, e, &key, buf, chosen);
    let per = e / g.groups;
    top_k_by(e, key, |i| chosen[i / per] != 0.0, ids);
}

/// `sparsemixer`'s weight of `pick` (the max over the candidates): `1 / sum exp(s_j - s_pick)`
/// over the candidates j with `(s_pick - s_j) / max(|s_j|, s_pick) <= 2 eps` (PhiMoE masks the
/// others with -inf before its softmax; the pick's own term is exp(0) = 1).
fn sparsemixer_weight(logits: &[f32], pick: usize, candidate: impl Fn(usize) -> bool, eps: f32) -> f32 {
    let m = logits[pick];
    let threshold = 2.0 * eps;
    let mut sum = 0f32;
    for (j, &s) in logits.iter().enumerate() {
        let a = s.abs();
        let factor = if a < m { m } else { a }; // torch clamp(min = m): NaN stays NaN
        let masked = (m - s) / factor > threshold;
        if candidate(j) && !masked {
            sum += exp_f32(s - m);
        }
    }
    1.0 / sum
}

/// Route one token: `logits[E]` -> (`ids[k]`, `weights[k]`). `scratch` needs
/// `cfg.scratch_len()` floats.
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
    let (scores, group_scratch) = scratch.split_at_mut(e);
    let ids = &mut ids[..k];
    let weights = &mut weights[..k];
    match cfg.score_func {
        ScoreFunc::Softmax => {
            select(cfg, |i| logits[i], expert_bias, group_scratch, ids);
            let max = ids.iter().map(|&i| logits[i as usize]).fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for j in 0..k {
                let v = exp_f32(logits[ids[j] as usize] - max);
                weights[j] = v;
                sum += v;
            }
            for w in weights.iter_mut() {
                *w /= sum;
            }
        }
        ScoreFunc::SoftmaxAll => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (s, &l) in scores.iter_mut().zip(logits) {
                *s = exp_f32(l - max);
                sum += *s;
            }
            for s in scores.iter_mut() {
                *s /= sum;
            }
            select(cfg, |i| scores[i], expert_bias, group_scratch, ids);
            gather_weights(cfg, scores, ids, weights);
        }
        ScoreFunc::Sigmoid => {
            for (s, &l) in scores.iter_mut().zip(logits) {
                *s = sigmoid(l);
            }
            // Selection on the biased scores; weights from the unbiased ones.
            select(cfg, |i| scores[i], expert_bias, group_scratch, ids);
            gather_weights(cfg, scores, ids, weights);
        }
        ScoreFunc::TopkSigmoid => {
            select(cfg, |i| logits[i], expert_bias, group_scratch, ids);
            for (s, &l) in scores.iter_mut().zip(logits) {
                *s = sigmoid(l);
            }
            gather_weights(cfg, scores, ids, weights);
        }
        ScoreFunc::SparseMixer => {
            // k = 2 (validated): the best logit, then the best of the others.
            top_k_by(e, |i| logits[i], |_| true, &mut ids[..1]);
            let first = ids[0] as usize;
            top_k_by(e, |i| logits[i], |i| i != first, &mut ids[1..2]);
            let second = ids[1] as usize;
            weights[0] = sparsemixer_weight(logits, first, |_| true, cfg.jitter_eps);
            weights[1] = sparsemixer_weight(logits, second, |j| j != first, cfg.jitter_eps);
        }
    }
    if cfg.route_scale != 1.0 {
        for w in weights.iter_mut() {
            *w *= cfg.route_scale;
        }
    }
}

/// `weights[j] = scores[ids[j]]`, divided by their sum if `cfg.renormalize`.
fn gather_weights(cfg: &RouterConfig, scores: &[f32], ids: &[u32], weights: &mut [f32]) {
    let mut sel = 0f32;
    for (w, &i) in weights.iter_mut().zip(ids) {
        *w = scores[i as usize];
        sel += *w;
    }
    if cfg.renormalize {
        let div = renorm_divisor(sel + cfg.renorm_eps, cfg.renorm_min);
        for w in weights.iter_mut() {
            *w /= div;
        }
    }
}

/// Router for `t` tokens: `x[t, d]`, `router_w[E, d]` (fp32) -> `ids[t, k]`, `weights[t, k]`.
/// `logits` needs `t * E` floats, `scratch` `cfg.scratch_len()`.
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
    cfg.check_bias(expert_bias)?;
    check_len("router logits scratch", mul_dims("router logits scratch", &[t, e])?, logits.len())?;
    check_len("expert ids", mul_dims("expert ids", &[t, k])?, ids.len())?;
    check_len("expert weights", mul_dims("expert weights", &[t, k])?, weights.len())?;
    if scratch.len() < cfg.scratch_len() {
        return Err(OpsError::SizeMismatch { what: "router scratch", expected: cfg.scratch_len(), got: scratch.len() });
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
