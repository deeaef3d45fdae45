//! The fused MoE FFN: route -> quantize -> permute -> gate_up -> act -> down -> scatter (+ shared).

use crate::act::{QuantActs, QuantActsRef};
use crate::error::{check_len, mul_dims, OpsError, Result};
use crate::kernels::{Kernels, OutPtr};
use crate::quant::{MatrixSpec, PackedRef, ScaleRef, WeightBits};
use crate::routing::{self, RouterConfig};
use crate::threadpool::ThreadPool;
use tracing::debug_span;

/// Shapes and attributes of one MoE layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeSpec {
    /// Model dimension D.
    pub dim: usize,
    /// Expert hidden dimension F.
    pub hidden: usize,
    /// Shared expert hidden dimension (0: no shared expert).
    pub shared_hidden: usize,
    pub group: usize,
    pub bits: WeightBits,
    pub router: RouterConfig,
    /// fp32 activations with on-the-fly dequantisation instead of the int8 (Q8) path.
    pub exact: bool,
    /// Routed experts' scales grouped along the *output* dimension (MobileMoE's QAT release:
    /// experts stored `[E, in, out]`, groups of `group` along `out`): `w13_scales` is
    /// `[E, D, 2F / group]`, `w2_scales` `[E, F, D / group]`, and the packed `w13`/`w2` hold the
    /// integers alone (unit scales). Each output group then multiplies its input row by that
    /// group's scales before the integer GEMM: exact, no re-quantization (docs/DESIGN.md 2b).
    pub scales_out: bool,
}

impl MoeSpec {
    pub fn w13_spec(&self) -> Result<MatrixSpec> {
        MatrixSpec::new(double(self.hidden, "2 * hidden_dim")?, self.dim, self.group, self.bits)
    }
    pub fn w2_spec(&self) -> Result<MatrixSpec> {
        MatrixSpec::new(self.dim, self.hidden, self.group, self.bits)
    }
    pub fn shared_w13_spec(&self) -> Result<MatrixSpec> {
        MatrixSpec::new(double(self.shared_hidden, "2 * shared_hidden_dim")?, self.dim, self.group, self.bits)
    }
    pub fn shared_w2_spec(&self) -> Result<MatrixSpec> {
        MatrixSpec::new(self.dim, self.shared_hidden, self.group, self.bits)
    }
    pub fn validate(&self) -> Result<()> {
        self.router.validate()?;
        self.w13_spec()?;
        self.w2_spec()?;
        if self.scales_out && (self.dim % self.group != 0 || (2 * self.hidden) % self.group != 0) {
            return Err(OpsError::Invalid(format!(
                "output-grouped expert scales need group {} to divide dim {} and 2 * hidden {}",
                self.group,
                self.dim,
                2 * self.hidden
            )));
        }
        if self.shared_hidden > 0 {
            self.shared_w13_spec()?;
            self.shared_w2_spec()?;
        }
        Ok(())
    }
}

/// `2 * v` or a typed overflow error (a huge claimed hidden dim must not panic).
fn double(v: usize, what: &'static str) -> Result<usize> {
    v.checked_mul(2).ok_or(OpsError::Overflow { what })
}

/// Weights of the shared expert.
#[derive(Clone, Copy, Debug)]
pub struct SharedExpert<'a> {
    pub w13: PackedRef<'a>,
    pub w2: PackedRef<'a>,
    /// Optional `[D]` sigmoid gate (Qwen-MoE `shared_expert_gate`).
    pub gate: Option<&'a [f32]>,
}

/// Borrowed weights of one MoE layer (zero copy).
#[derive(Clone, Copy, Debug)]
pub struct MoeWeights<'a> {
    /// `[E, D]` fp32.
    pub router_w: &'a [f32],
    /// `[E]` selection-only bias (sigmoid routing).
    pub expert_bias: Option<&'a [f32]>,
    /// `[E, w13 bytes]`, `[E, w13 scales]`.
    pub w13: &'a [u8],
    pub w13_scales: ScaleRef<'a>,
    /// `[E, w2 bytes]`, `[E, w2 scales]`.
    pub w2: &'a [u8],
    pub w2_scales: ScaleRef<'a>,
    pub shared: Option<SharedExpert<'a>>,
}

impl<'a> MoeWeights<'a> {
    /// Checks every buffer size against `spec`.
    pub fn validate(&self, spec: &MoeSpec) -> Result<()> {
        spec.validate()?;
        let e = spec.router.num_experts;
        let (s13, s2) = (spec.w13_spec()?, spec.w2_spec()?);
        check_len("router weight", mul_dims("router weight", &[e, spec.dim])?, self.router_w.len())?;
        spec.router.check_bias(self.expert_bias)?;
        check_len("w13 data", mul_dims("w13 data", &[e, s13.data_bytes()])?, self.w13.len())?;
        check_len("w2 data", mul_dims("w2 data", &[e, s2.data_bytes()])?, self.w2.len())?;
        if spec.scales_out {
            // [E, K, N / group]: one scale per input row and output group
            check_len("w13 scales (output-grouped)", mul_dims("w13 scales", &[e, s13.k, s13.n / s13.group])?, self.w13_scales.len())?;
            check_len("w2 scales (output-grouped)", mul_dims("w2 scales", &[e, s2.k, s2.n / s2.group])?, self.w2_scales.len())?;
        } else {
            check_len("w13 scales", mul_dims("w13 scales", &[e, s13.scale_count()])?, self.w13_scales.len())?;
            check_len("w2 scales", mul_dims("w2 scales", &[e, s2.scale_count()])?, self.w2_scales.len())?;
        }
        match (&self.shared, spec.shared_hidden) {
            (None, 0) => {}
            (Some(sh), f) if f > 0 => {
                if sh.w13.spec != spec.shared_w13_spec()? || sh.w2.spec != spec.shared_w2_spec()? {
                    return Err(OpsError::Invalid("shared expert weights do not match shared_hidden/dim/group".into()));
                }
                check_len("shared w13 data", sh.w13.spec.data_bytes(), sh.w13.data.len())?;
                check_len("shared w13 scales", sh.w13.spec.scale_count(), sh.w13.scales.len())?;
                check_len("shared w2 data", sh.w2.spec.data_bytes(), sh.w2.data.len())?;
                check_len("shared w2 scales", sh.w2.spec.scale_count(), sh.w2.scales.len())?;
                if let Some(g) = sh.gate {
                    check_len("shared expert gate", spec.dim, g.len())?;
                }
            }
            (None, _) => return Err(OpsError::Invalid("shared_hidden > 0 but no shared expert weights".into())),
            (Some(_), _) => return Err(OpsError::Invalid("shared expert weights given but shared_hidden = 0".into())),
        }
        Ok(())
    }

    /// Expert `e`'s gate+up matrix; `s13` is `spec.w13_spec()` of the spec `validate` accepted.
    pub fn expert_w13(&self, s13: MatrixSpec, e: usize) -> PackedRef<'a> {
        expert_slice(s13, self.w13, self.w13_scales, e)
    }

    /// Expert `e`'s down matrix; `s2` is `spec.w2_spec()` of the spec `validate` accepted.
    pub fn expert_w2(&self, s2: MatrixSpec, e: usize) -> PackedRef<'a> {
        expert_slice(s2, self.w2, self.w2_scales, e)
    }

    /// Expert `e`'s gate+up integers with unit scales `unit` (>= `s13.scale_count()` ones), for
    /// output-grouped scales.
    fn expert_w13_unit<'u>(&self, s13: MatrixSpec, e: usize, unit: &'u [f32]) -> PackedRef<'u>
    where
        'a: 'u,
    {
        let db = s13.data_bytes();
        PackedRef { spec: s13, data: &self.w13[e * db..(e + 1) * db], scales: ScaleRef::F32(&unit[..s13.scale_count()]) }
    }

    /// Expert `e`'s down integers with unit scales (see [`Self::expert_w13_unit`]).
    fn expert_w2_unit<'u>(&self, s2: MatrixSpec, e: usize, unit: &'u [f32]) -> PackedRef<'u>
    where
        'a: 'u,
    {
        let db = s2.data_bytes();
        PackedRef { spec: s2, data: &self.w2[e * db..(e + 1) * db], scales: ScaleRef::F32(&unit[..s2.scale_count()]) }
    }

    /// Weight bytes the layer reads for `t` tokens routed to `distinct_experts` experts.
    pub fn bytes_read(spec: &MoeSpec, distinct_experts: usize) -> usize {
        let bytes = |s: Result<MatrixSpec>| s.map(|s| s.total_bytes()).unwrap_or(0);
        let per = bytes(spec.w13_spec()).saturating_add(bytes(spec.w2_spec()));
        let shared = if spec.shared_hidden > 0 { bytes(spec.shared_w13_spec()).saturating_add(bytes(spec.shared_w2_spec())) } else { 0 };
        // Saturating: an unvalidated spec with huge dims must not panic (this is a statistic).
        let router = spec.router.num_experts.saturating_mul(spec.dim).saturating_mul(4);
        distinct_experts.saturating_mul(per).saturating_add(shared).saturating_add(router)
    }
}

/// Expert `e` of stacked `[E, ...]` data and scales (sizes checked by `MoeWeights::validate`).
fn expert_slice<'a>(spec: MatrixSpec, data: &'a [u8], scales: ScaleRef<'a>, e: usize) -> PackedRef<'a> {
    let (db, sc) = (spec.data_bytes(), spec.scale_count());
    PackedRef { spec, data: &data[e * db..(e + 1) * db], scales: scales.slice(e * sc..(e + 1) * sc) }
}

/// One GEMM work item: `matrix` (an expert id, or `SHARED`) over activation rows
/// `row0 .. row0 + rows`, output tiles `tile0 .. tile1`.
#[derive(Clone, Copy, Debug)]
struct GemmItem {
    matrix: u32,
    row0: u32,
    rows: u32,
    tile0: u32,
    tile1: u32,
}
const SHARED: u32 = u32::MAX;

/// Reusable buffers; grow-only, so after a warm-up call at the largest token count no call allocates.
#[derive(Default)]
pub struct MoeScratch {
    logits: Vec<f32>,
    route_tmp: Vec<f32>,
    ids: Vec<u32>,
    weights: Vec<f32>,
    counts: Vec<u32>,
    offsets: Vec<u32>,
    /// pair index (in expert-sorted order) of token i's j-th choice: `pos[i*k + j]`
    pos: Vec<u32>,
    pair_token: Vec<u32>,
    fill: Vec<u32>,
    qx: QuantActs,
    qg: QuantActs,
    qh: QuantActs,
    qsh: QuantActs,
    xg: Vec<f32>,
    h: Vec<f32>,
    act: Vec<f32>,
    o: Vec<f32>,
    sh_h: Vec<f32>,
    sh_act: Vec<f32>,
    sh_o: Vec<f32>,
    items: Vec<GemmItem>,
    /// Ones: the weight scales of output-grouped experts (their scales act on the input rows).
    unit_scales: Vec<f32>,
    /// Per-expert token counts of the last call (routing statistics).
    pub last_counts: Vec<u32>,
}

fn grow<T: Clone + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

/// Tiles per work item: small enough that decode (one token, k experts) gives every thread
/// several items, large enough to amortise dispatch.
fn tile_block(total_tiles: usize, rows: usize, threads: usize) -> usize {
    let target_items = threads * 8;
    let per = total_tiles.div_ceil(target_items).max(1);
    // Many rows per item: smaller blocks are fine; few rows: keep at least 2 tiles.
    if rows >= 32 {
        per.clamp(1, 8)
    } else {
        per.clamp(2, 16)
    }
}

/// Runs the fused MoE FFN on `x[t, D]` into `out[t, D]`:
/// route -> permute -> quantize/gather -> gate_up -> act -> down -> scatter (+ shared expert).
#[allow(clippy::too_many_arguments)]
pub fn moe_ffn(
    spec: &MoeSpec,
    w: &MoeWeights<'_>,
    x: &[f32],
    t: usize,
    out: &mut [f32],
    scratch: &mut MoeScratch,
    pool: &ThreadPool,
    kernels: &Kernels,
) -> Result<()> {
    let _span = debug_span!("moe_ffn", tokens = t, experts = spec.router.num_experts, top_k = spec.router.top_k).entered();
    w.validate(spec)?;
    let d = spec.dim;
    let tk = mul_dims("tokens x top_k", &[t, spec.router.top_k])?;
    check_len("moe input", mul_dims("moe input", &[t, d])?, x.len())?;
    check_len("moe output", mul_dims("moe output", &[t, d])?, out.len())?;
    if t == 0 {
        return Ok(());
    }
    let run = MoeRun { spec, w, x, t, tk, threads: pool.threads() };
    scratch.route(&run)?;
    scratch.permute(&run);
    scratch.gather_activations(&run)?;
    scratch.gate_up(&run, pool, kernels)?;
    scratch.activate(&run, pool)?;
    scratch.down(&run, pool, kernels)?;
    scratch.scatter(&run, out);
    Ok(())
}

/// The arguments of one `moe_ffn` call, validated, shared by its steps.
struct MoeRun<'c, 'w> {
    spec: &'c MoeSpec,
    w: &'c MoeWeights<'w>,
    x: &'c [f32],
    /// Tokens.
    t: usize,
    /// Tokens x top_k: the (token, choice) pairs.
    tk: usize,
    threads: usize,
}

impl MoeScratch {
    /// Router logits -> top-k expert ids and weights per token.
    fn route(&mut self, r: &MoeRun<'_, '_>) -> Result<()> {
        let _g = debug_span!("route").entered();
        let (t, e, tk) = (r.t, r.spec.router.num_experts, r.tk);
        grow(&mut self.logits, t * e);
        let rs = r.spec.router.scratch_len();
        grow(&mut self.route_tmp, rs);
        grow(&mut self.ids, tk);
        grow(&mut self.weights, tk);
        routing::route(
            &r.spec.router,
            r.x,
            t,
            r.spec.dim,
            r.w.router_w,
            r.w.expert_bias,
            &mut self.logits[..t * e],
            &mut self.route_tmp[..rs],
            &mut self.ids[..tk],
            &mut self.weights[..tk],
        )
    }

    /// Counting sort of the (token, choice) pairs by expert: per-expert counts and offsets, each
    /// pair's slot (`pos`) and each slot's token (`pair_token`).
    fn permute(&mut self, r: &MoeRun<'_, '_>) {
        let _g = debug_span!("permute").entered();
        let (e, k, tk) = (r.spec.router.num_experts, r.spec.router.top_k, r.tk);
        self.counts.clear();
        self.counts.resize(e, 0);
        for &id in &self.ids[..tk] {
            self.counts[id as usize] += 1;
        }
        self.offsets.clear();
        self.offsets.resize(e + 1, 0);
        for j in 0..e {
            self.offsets[j + 1] = self.offsets[j] + self.counts[j];
        }
        grow(&mut self.pos, tk);
        grow(&mut self.pair_token, tk);
        self.fill.clear();
        self.fill.extend_from_slice(&self.offsets[..e]);
        for p in 0..tk {
            let ex = self.ids[p] as usize;
            let slot = self.fill[ex];
            self.fill[ex] += 1;
            self.pos[p] = slot;
            self.pair_token[slot as usize] = (p / k) as u32;
        }
        self.last_counts.clear();
        self.last_counts.extend_from_slice(&self.counts);
    }

    /// The experts' input rows in slot order: fp32 copies (exact path and output-grouped scales,
    /// which quantize per output group later) or the tokens' Q8 rows.
    fn gather_activations(&mut self, r: &MoeRun<'_, '_>) -> Result<()> {
        let _g = debug_span!("quantize").entered();
        let (d, tk) = (r.spec.dim, r.tk);
        let og = r.spec.scales_out;
        if r.spec.router.weight_input {
            // expert(w * x): every pair has its own input row, quantized as a row of its own.
            grow(&mut self.xg, tk * d);
            let k = r.spec.router.top_k;
            for p in 0..tk {
                let (tok, slot) = (p / k, self.pos[p] as usize);
                let wt = self.weights[p];
                for (g, &v) in self.xg[slot * d..(slot + 1) * d].iter_mut().zip(&r.x[tok * d..(tok + 1) * d]) {
                    *g = v * wt;
                }
            }
            if !r.spec.exact {
                if !og {
                    self.qg.quantize(&self.xg[..tk * d], tk, d, r.spec.group)?;
                }
                if r.w.shared.is_some() {
                    self.qx.quantize(r.x, r.t, d, r.spec.group)?; // the shared expert's input
                }
            }
        } else if r.spec.exact || og {
            grow(&mut self.xg, tk * d);
            for p in 0..tk {
                let tok = self.pair_token[p] as usize;
                self.xg[p * d..(p + 1) * d].copy_from_slice(&r.x[tok * d..(tok + 1) * d]);
            }
            if og && !r.spec.exact && r.w.shared.is_some() {
                self.qx.quantize(r.x, r.t, d, r.spec.group)?; // the shared expert's input
            }
        } else {
            self.qx.quantize(r.x, r.t, d, r.spec.group)?;
            self.qg.reset(tk, d, r.spec.group);
            for p in 0..tk {
                let tok = self.pair_token[p] as usize;
                self.qg.copy_row_from(p, &self.qx, tok);
            }
        }
        Ok(())
    }

    /// `h = x @ w13^T` for the experts (over gathered rows) and the shared expert (all tokens),
    /// as one pool job.
    fn gate_up(&mut self, r: &MoeRun<'_, '_>, pool: &ThreadPool, kernels: &Kernels) -> Result<()> {
        let _g = debug_span!("gate_up").entered();
        let (t, d, f, fs, tk) = (r.t, r.spec.dim, r.spec.hidden, r.spec.shared_hidden, r.tk);
        let (s13, shared) = (r.spec.w13_spec()?, r.w.shared);
        grow(&mut self.h, tk * 2 * f);
        if shared.is_some() {
            grow(&mut self.sh_h, t * 2 * fs);
        }
        let og = r.spec.scales_out;
        self.items.clear();
        push_items(&mut self.items, &self.counts, &self.offsets, (2 * f).div_ceil(16), r.threads, tiles_per_group(r.spec));
        if shared.is_some() {
            push_shared(&mut self.items, t, (2 * fs).div_ceil(16), r.threads);
        }
        if og {
            self.unit_scales.resize(s13.scale_count().max(r.spec.w2_spec()?.scale_count()), 1.0);
        }
        let h_out = OutPtr::new(&mut self.h[..tk * 2 * f], 2 * f);
        let sh_out = if shared.is_some() { Some(OutPtr::new(&mut self.sh_h[..t * 2 * fs], 2 * fs)) } else { None };
        let acts = if og {
            Acts::OutGrouped {
                pairs: &self.xg[..tk * d],
                scales: r.w.w13_scales,
                exact: r.spec.exact,
                shared_q8: self.qx.as_ref(),
                shared_f32: r.x,
            }
        } else if r.spec.exact {
            Acts::F32(&self.xg[..tk * d], r.x)
        } else {
            // (without a shared expert no item reads the second rows: `qx` may not be quantized then)
            Acts::Q8(self.qg.as_ref(), if shared.is_some() { self.qx.as_ref() } else { self.qg.as_ref() })
        };
        let (w, unit) = (r.w, &self.unit_scales);
        run_gemms(
            pool,
            kernels,
            &self.items,
            |m| match m {
                SHARED => shared.unwrap().w13,
                _ if og => w.expert_w13_unit(s13, m as usize, unit),
                _ => w.expert_w13(s13, m as usize),
            },
            acts,
            h_out,
            sh_out,
        )
    }

    /// SwiGLU of `h`, then (Q8 path) the per-row requantization for the down projection;
    /// row-parallel over the pool (inline when small, e.g. decode).
    fn activate(&mut self, r: &MoeRun<'_, '_>, pool: &ThreadPool) -> Result<()> {
        let _g = debug_span!("act").entered();
        let (t, f, fs, tk, group) = (r.t, r.spec.hidden, r.spec.shared_hidden, r.tk, r.spec.group);
        grow(&mut self.act, tk * f);
        // (output-grouped scales quantize per output group in the down GEMM instead)
        let qh = if r.spec.exact || r.spec.scales_out {
            None
        } else {
            self.qh.reset(tk, f, group);
            Some(&mut self.qh)
        };
        swiglu_quantize(pool, &self.h[..tk * 2 * f], f, &mut self.act[..tk * f], qh)?;
        if r.w.shared.is_some() {
            grow(&mut self.sh_act, t * fs);
            let qsh = if r.spec.exact {
                None
            } else {
                self.qsh.reset(t, fs, group);
                Some(&mut self.qsh)
            };
            swiglu_quantize(pool, &self.sh_h[..t * 2 * fs], fs, &mut self.sh_act[..t * fs], qsh)?;
        }
        Ok(())
    }

    /// `o = act @ w2^T` for the experts and the shared expert, as one pool job.
    fn down(&mut self, r: &MoeRun<'_, '_>, pool: &ThreadPool, kernels: &Kernels) -> Result<()> {
        let _g = debug_span!("down").entered();
        let (t, d, f, fs, tk) = (r.t, r.spec.dim, r.spec.hidden, r.spec.shared_hidden, r.tk);
        let (s2, shared) = (r.spec.w2_spec()?, r.w.shared);
        grow(&mut self.o, tk * d);
        if shared.is_some() {
            grow(&mut self.sh_o, t * d);
        }
        let og = r.spec.scales_out;
        let tiles2 = d.div_ceil(16);
        self.items.clear();
        push_items(&mut self.items, &self.counts, &self.offsets, tiles2, r.threads, tiles_per_group(r.spec));
        if shared.is_some() {
            push_shared(&mut self.items, t, tiles2, r.threads);
        }
        let o_out = OutPtr::new(&mut self.o[..tk * d], d);
        let sh_out = if shared.is_some() { Some(OutPtr::new(&mut self.sh_o[..t * d], d)) } else { None };
        let sh_act = &self.sh_act[..if shared.is_some() { t * fs } else { 0 }];
        let acts = if og {
            Acts::OutGrouped {
                pairs: &self.act[..tk * f],
                scales: r.w.w2_scales,
                exact: r.spec.exact,
                shared_q8: self.qsh.as_ref(),
                shared_f32: sh_act,
            }
        } else if r.spec.exact {
            Acts::F32(&self.act[..tk * f], sh_act)
        } else {
            Acts::Q8(self.qh.as_ref(), if shared.is_some() { self.qsh.as_ref() } else { self.qh.as_ref() })
        };
        let (w, unit) = (r.w, &self.unit_scales);
        run_gemms(
            pool,
            kernels,
            &self.items,
            |m| match m {
                SHARED => shared.unwrap().w2,
                _ if og => w.expert_w2_unit(s2, m as usize, unit),
                _ => w.expert_w2(s2, m as usize),
            },
            acts,
            o_out,
            sh_out,
        )
    }

    /// `y[i] = sum_j w_ij * o[pos(i, j)]` (+ `gate_i * shared(x_i)`), choices in order.
    fn scatter(&self, r: &MoeRun<'_, '_>, out: &mut [f32]) {
        let _g = debug_span!("scatter").entered();
        let (d, k) = (r.spec.dim, r.spec.router.top_k);
        for i in 0..r.t {
            let y = &mut out[i * d..(i + 1) * d];
            y.fill(0.0);
            for j in 0..k {
                // weight_input: the weight already scaled the expert's input.
                let wt = if r.spec.router.weight_input { 1.0 } else { self.weights[i * k + j] };
                let p = self.pos[i * k + j] as usize;
                crate::act::fma_axpy(y, wt, &self.o[p * d..(p + 1) * d]);
            }
            if let Some(sh) = r.w.shared {
                let g = match sh.gate {
                    Some(gw) => sigmoid(routing::dot_f32(&r.x[i * d..(i + 1) * d], gw)),
                    None => 1.0,
                };
                crate::act::fma_axpy(y, g, &self.sh_o[i * d..(i + 1) * d]);
            }
        }
    }
}

/// Items of the routed experts; `align` tiles never split (an output group of scales).
fn push_items(items: &mut Vec<GemmItem>, counts: &[u32], offsets: &[u32], tiles: usize, threads: usize, align: usize) {
    let active = counts.iter().filter(|&&c| c > 0).count().max(1);
    let rows_avg = counts.iter().map(|&c| c as usize).sum::<usize>() / active;
    let blk = tile_block(tiles * active, rows_avg, threads).next_multiple_of(align.max(1));
    for (ex, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let mut t0 = 0;
        while t0 < tiles {
            let t1 = (t0 + blk).min(tiles);
            items.push(GemmItem { matrix: ex as u32, row0: offsets[ex], rows: c, tile0: t0 as u32, tile1: t1 as u32 });
            t0 = t1;
        }
    }
}

fn push_shared(items: &mut Vec<GemmItem>, t: usize, tiles: usize, threads: usize) {
    let blk = tile_block(tiles, t, threads);
    let mut t0 = 0;
    while t0 < tiles {
        let t1 = (t0 + blk).min(tiles);
        items.push(GemmItem { matrix: SHARED, row0: 0, rows: t as u32, tile0: t0 as u32, tile1: t1 as u32 });
        t0 = t1;
    }
}

/// Activations of the routed pairs and of the shared expert's rows.
#[derive(Clone, Copy)]
enum Acts<'a> {
    Q8(QuantActsRef<'a>, QuantActsRef<'a>),
    F32(&'a [f32], &'a [f32]),
    /// Output-grouped expert scales (`MoeSpec::scales_out`): the pairs' fp32 rows, scaled by each
    /// output group's scales `[E, K, N / group]` inside the item, then quantized (unless `exact`);
    /// the shared expert's rows as Q8 or fp32 (per `exact`).
    OutGrouped {
        pairs: &'a [f32],
        scales: ScaleRef<'a>,
        exact: bool,
        shared_q8: QuantActsRef<'a>,
        shared_f32: &'a [f32],
    },
}

thread_local! {
    /// Per-thread scaled rows and their quantization for output-grouped scales (grow only).
    static OG_TLS: std::cell::RefCell<(Vec<f32>, QuantActs)> = std::cell::RefCell::new((Vec::new(), QuantActs::default()));
}

/// Tiles of one output group when expert scales are grouped along the output (items must not
/// split a group); 1 otherwise.
fn tiles_per_group(spec: &MoeSpec) -> usize {
    if spec.scales_out {
        tiles_in_group(spec.group)
    } else {
        1
    }
}

/// Tiles of `TILE_ROWS` output rows in one output group of `group` rows (at least 1).
fn tiles_in_group(group: usize) -> usize {
    (group / crate::quant::TILE_ROWS).max(1)
}

/// `dst[r, k] = src[r, k] * scales[base + k * stride]` for `rows` rows of `k` (one output group's
/// scales of every input row, widened to f32 exactly).
fn scale_rows(src: &[f32], k: usize, scales: ScaleRef<'_>, base: usize, stride: usize, dst: &mut [f32]) {
    macro_rules! go {
        ($s:expr, $to:expr) => {
            for (d, x) in dst.chunks_exact_mut(k).zip(src.chunks_exact(k)) {
                for (kk, (o, &v)) in d.iter_mut().zip(x).enumerate() {
                    *o = v * $to($s[base + kk * stride]);
                }
            }
        };
    }
    match scales {
        ScaleRef::F32(s) => go!(s, |v: f32| v),
        ScaleRef::F16(s) => go!(s, |v: half::f16| v.to_f32()),
        ScaleRef::Bf16(s) => go!(s, |v: half::bf16| v.to_f32()),
    }
}

/// One routed item with output-grouped scales: per output group in its tiles, the rows scaled by
/// the group's scales, then the integer GEMM (unit weight scales) on the group's tiles.
#[allow(clippy::too_many_arguments)]
fn og_item(
    kernels: &Kernels,
    wref: &PackedRef<'_>,
    e: usize,
    tiles: std::ops::Range<usize>,
    src: &[f32],
    rows: usize,
    scales: ScaleRef<'_>,
    exact: bool,
    sub: OutPtr,
) -> bool {
    let (k, n, g) = (wref.spec.k, wref.spec.n, wref.spec.group);
    let ng = n / g;
    let tpg = tiles_in_group(g);
    let per_expert = k * ng;
    if src.len() != rows * k || scales.len() < (e + 1) * per_expert || tiles.start % tpg != 0 || tiles.end % tpg != 0 {
        return false;
    }
    OG_TLS.with(|tls| {
        let mut guard = tls.borrow_mut();
        let (xs, qa) = &mut *guard;
        grow(xs, rows * k);
        let mut ok = true;
        for grp in tiles.start / tpg..tiles.end / tpg {
            scale_rows(src, k, scales, e * per_expert + grp, ng, &mut xs[..rows * k]);
            let gt = grp * tpg..(grp + 1) * tpg;
            // SAFETY: as in `run_gemms`: `sub` points into a buffer alive for the pool job, and this
            // item alone writes its rows' columns of these tiles.
            ok &= if exact {
                unsafe { kernels.gemm_f32_raw(wref, gt, &xs[..rows * k], rows, sub) }
            } else {
                qa.quantize(&xs[..rows * k], rows, k, g).is_ok() && unsafe { kernels.gemm_q8_raw(wref, gt, &qa.as_ref(), sub) }
            };
        }
        ok
    })
}

fn run_gemms<'w>(
    pool: &ThreadPool,
    kernels: &Kernels,
    items: &[GemmItem],
    matrix: impl Fn(u32) -> PackedRef<'w> + Sync,
    acts: Acts<'_>,
    out: OutPtr,
    shared_out: Option<OutPtr>,
) -> Result<()> {
    let failed = std::sync::atomic::AtomicBool::new(false);
    pool.run(items.len(), &|idx| {
        let it = items[idx];
        let wref = matrix(it.matrix);
        let (row0, rows) = (it.row0 as usize, it.rows as usize);
        let is_shared = it.matrix == SHARED;
        let dst = if is_shared { shared_out.unwrap() } else { out };
        // Output rows of this item start at row0 of `dst`.
        let sub = dst.rows_from(row0);
        let tiles = it.tile0 as usize..it.tile1 as usize;
        // SAFETY (every raw GEMM below): `out`/`shared_out` point into the caller's buffers, which
        // outlive `pool.run`; items cover disjoint (matrix rows, tile) ranges, so no two threads
        // write one element, and nothing reads the buffers until the job has joined.
        let ok = match acts {
            Acts::Q8(pairs, sh) => {
                let a = if is_shared { sh.rows(row0, rows) } else { pairs.rows(row0, rows) };
                unsafe { kernels.gemm_q8_raw(&wref, tiles, &a, sub) }
            }
            Acts::F32(pairs, sh) => {
                let src = if is_shared { sh } else { pairs };
                let kd = wref.spec.k;
                unsafe { kernels.gemm_f32_raw(&wref, tiles, &src[row0 * kd..(row0 + rows) * kd], rows, sub) }
            }
            Acts::OutGrouped { shared_q8, shared_f32, exact, .. } if is_shared => {
                if exact {
                    let kd = wref.spec.k;
                    unsafe { kernels.gemm_f32_raw(&wref, tiles, &shared_f32[row0 * kd..(row0 + rows) * kd], rows, sub) }
                } else {
                    unsafe { kernels.gemm_q8_raw(&wref, tiles, &shared_q8.rows(row0, rows), sub) }
                }
            }
            Acts::OutGrouped { pairs, scales, exact, .. } => {
                let kd = wref.spec.k;
                og_item(kernels, &wref, it.matrix as usize, tiles, &pairs[row0 * kd..(row0 + rows) * kd], rows, scales, exact, sub)
            }
        };
        if !ok {
            failed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .map_err(|_| OpsError::Panicked("kernel"))?;
    if failed.into_inner() {
        return Err(OpsError::Internal("kernel contract check failed"));
    }
    Ok(())
}

/// A raw pointer shared by pool items that write disjoint ranges.
#[derive(Clone, Copy)]
struct SyncPtr<T>(*mut T);
// SAFETY: only used to write disjoint element ranges from different threads (see its users).
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    /// A method (not field access) so closures capture the whole `Sync` wrapper.
    fn get(self) -> *mut T {
        self.0
    }
}

/// `act = swiglu_rows(h)` and, if `qa` is given (already `reset` to `rows x f`), its per-row Q8
/// quantization: the same per-row functions as the serial code (bit-identical), split over the
/// pool in row blocks of at least ~16k elements.
fn swiglu_quantize(pool: &ThreadPool, h: &[f32], f: usize, act: &mut [f32], qa: Option<&mut QuantActs>) -> Result<()> {
    let rows = act.len() / f;
    debug_assert_eq!(h.len(), rows * 2 * f);
    let blk = rows.div_ceil(pool.threads() * 4).max((16384 / f).max(1));
    let items = rows.div_ceil(blk.max(1));
    let group = qa.as_ref().map_or(f, |q| q.group);
    let ng = f / group;
    if let Some(q) = &qa {
        assert!(q.k == f && q.q.len() >= rows * f && q.scale.len() >= rows && q.zp.len() >= rows && q.gsum.len() >= rows * ng);
    }
    let act_p = SyncPtr(act.as_mut_ptr());
    let q_p =
        qa.map(|q| (SyncPtr(q.q.as_mut_ptr()), SyncPtr(q.scale.as_mut_ptr()), SyncPtr(q.zp.as_mut_ptr()), SyncPtr(q.gsum.as_mut_ptr())));
    pool.run(items, &|it| {
        let (r0, r1) = (it * blk, ((it + 1) * blk).min(rows));
        // SAFETY: item `it` alone touches rows r0..r1 (disjoint across items) of `act` (rows*f),
        // and of the quantized buffers (checked above: rows*f, rows, rows*ng); all outlive `run`.
        let a = unsafe { std::slice::from_raw_parts_mut(act_p.get().add(r0 * f), (r1 - r0) * f) };
        swiglu_rows(&h[r0 * 2 * f..r1 * 2 * f], f, a);
        if let Some((qp, sp, zp, gp)) = q_p {
            for r in r0..r1 {
                // SAFETY: as above, row r belongs to this item only.
                let (q, sc, z, gs) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(qp.get().add(r * f), f),
                        &mut *sp.get().add(r),
                        &mut *zp.get().add(r),
                        std::slice::from_raw_parts_mut(gp.get().add(r * ng), ng),
                    )
                };
                crate::act::quantize_row(&a[(r - r0) * f..(r - r0 + 1) * f], group, q, sc, z, gs);
            }
        }
    })
    .map_err(|_| OpsError::Panicked("SwiGLU"))
}

/// `act[p, j] = silu(h[p, j]) * h[p, F + j]` for rows of width 2F.
/// Vectorised (AVX-512 / AVX2+FMA builds of the same code) where the CPU allows: `silu` uses only
/// correctly rounded IEEE operations (explicit fma), so every build gives the same bits.
pub fn swiglu_rows(h: &[f32], f: usize, act: &mut [f32]) {
    if f == 0 {
        return; // no columns (and `chunks_exact(0)` would panic)
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the enabled features (checked above).
            unsafe { swiglu_rows_avx512(h, f, act) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            unsafe { swiglu_rows_avx2(h, f, act) };
            return;
        }
    }
    swiglu_rows_generic(h, f, act)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn swiglu_rows_avx512(h: &[f32], f: usize, act: &mut [f32]) {
    swiglu_rows_generic(h, f, act)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_rows_avx2(h: &[f32], f: usize, act: &mut [f32]) {
    swiglu_rows_generic(h, f, act)
}

#[inline(always)]
fn swiglu_rows_generic(h: &[f32], f: usize, act: &mut [f32]) {
    for (hr, ar) in h.chunks_exact(2 * f).zip(act.chunks_exact_mut(f)) {
        let (gate, up) = hr.split_at(f);
        for ((a, &g), &u) in ar.iter_mut().zip(gate).zip(up) {
            *a = silu(g) * u;
        }
    }
}

/// `x * sigmoid(x) = x / (1 + exp(-x))`, with the deterministic `exp_f32` below.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp_f32(-x))
}

/// `1 / (1 + exp(-x))` with the deterministic `exp_f32` (routing scores, the shared-expert gate):
/// the same bits on every ISA and build. +inf -> 1, -inf -> 0, NaN -> NaN.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// The constants of [`exp_f32`] (shared with the SIMD attention kernels that compute the same
/// function four lanes at a time, `kernels::attn_neon`).
pub(crate) mod exp_consts {
    pub const HI: f32 = 88.722_83; // ln(f32::MAX)
    pub const LO: f32 = -87.336_54; // ln(f32::MIN_POSITIVE)
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: (v + MAGIC) - MAGIC rounds |v| < 2^22 to nearest even
    pub const C1: f32 = 0.693_359_4; // 0.693359375, exact in few bits
    pub const C2: f32 = -2.121_944_4e-4;
    /// Polynomial in r, highest degree first (Horner with fused multiply-adds); Cephes writes the
    /// last one 5.0000001e-1, which is 0.5 in f32.
    pub const POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
}

/// `e^x` in f32, branch-free (vectorises), identical bits on every platform and build: only
/// IEEE add/mul/fma (explicit `mul_add`, never contracted implicitly), compares and exponent bit
/// arithmetic. Cephes `expf` reduction and polynomial (max error about 1 ulp on the normal range).
/// `x > ln(f32::MAX)` gives +inf, `x < ln(f32::MIN_POSITIVE)` gives 0 (no subnormal results),
/// NaN gives NaN. (libm `expf` is not used because its bits differ between libms/ISAs and a
/// libm call per element cannot vectorise.)
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    use exp_consts::*;
    let xc = x.clamp(LO, HI);
    let tn = xc * LOG2E + MAGIC;
    let n = tn - MAGIC; // integral, in [-126, 128]
    let r = n.mul_add(-C1, xc);
    let r = n.mul_add(-C2, r);
    let mut p = POLY[0];
    for &c in &POLY[1..] {
        p = p.mul_add(r, c);
    }
    let p = p.mul_add(r * r, r) + 1.0;
    // 2^n as two normal powers of two (n in [-126, 128]): exact scaling, one final rounding.
    // n from the low mantissa bits of tn (tn = 1.5*2^23 + n exactly): integer ops only, so this
    // vectorises (a saturating `n as i32` would not). For NaN the value is garbage but y is NaN.
    let ni = (tn.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let n1 = ni >> 1;
    let n2 = ni - n1;
    let s1 = f32::from_bits((n1.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((n2.wrapping_add(127) as u32) << 23);
    let y = (p * s1) * s2;
    if x > HI {
        f32::INFINITY
    } else if x < LO {
        0.0
    } else {
        y // NaN propagates through clamp and the arithmetic
    }
}
