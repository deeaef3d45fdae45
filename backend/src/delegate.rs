//! Per-program delegate state: the validated graph, zero-copy views of the weights, and the
//! scratch buffers (behind a mutex so two threads may execute one program).

use crate::error::{Error, ErrorCode, Result};
use mobilemoe_ops::decoder::{
    add, attention, embedding, lm_head_last, rms_norm, swiglu_ffn, AttentionScratch, AttentionWeights, DenseScratch, KvCache,
};
use mobilemoe_ops::{
    linear, moe_ffn, Kernels, LinearScratch, MatrixSpec, MoeScratch, MoeWeights, OwnedScales, PackedRef, ScaleRef, ScaleType, SharedExpert,
    ThreadPool,
};
use mobilemoe_schema::read::{Graph, NodeOp};
use std::ops::Range;
use std::sync::Mutex;

enum BlobStore {
    /// Borrowed from the runtime (the processed FreeableBuffer), valid until the delegate drops.
    Static(&'static [u8]),
    Owned(Vec<u8>),
}

/// A float constant in its element type (f32 tensors, per-group weight scales in f32, f16 or
/// bf16): used in place when aligned for its type, else copied once at init.
enum FloatConst {
    InPlace(Range<usize>, ScaleType),
    Copied(OwnedScales),
}

/// Everything one execution mutates, sized from the graph at init (KV caches, slot plan) or grown
/// to the largest token count seen (activation slots, kernel scratch): no allocation per call
/// once warmed up.
#[derive(Default)]
struct RunState {
    moe: MoeScratch,
    lin: LinearScratch,
    attn: AttentionScratch,
    dense: DenseScratch,
    /// Activation buffers shared by tensors whose lifetimes do not overlap (see `plan_slots`).
    slots: Vec<Vec<f32>>,
    /// One KV cache per Attention node, in node order.
    kv: Vec<KvCache>,
    /// Address tables of one call (pointer as usize, length), kept to avoid reallocating them.
    loc: Vec<Option<(usize, usize)>>,
    int_loc: Vec<Option<(usize, usize)>>,
    /// Shapes of the last call, reused while the input shapes repeat (decode).
    shapes_key: Vec<Vec<i64>>,
    shapes: Vec<Option<Vec<i64>>>,
}

/// One graph input of [`Delegate::execute_typed`].
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
}

impl Input<'_> {
    fn len(&self) -> usize {
        match self {
            Input::F32(s) => s.len(),
            Input::I64(s) => s.len(),
        }
    }
}

pub struct Delegate {
    blob: BlobStore,
    graph: Graph,
    floats: Vec<Option<FloatConst>>,
    kernels: Kernels,
    /// MoeFfn nodes in the graph (layer numbering for profiling).
    n_moe: usize,
    /// `slot_of[tensor]`: the activation slot of an intermediate tensor (None: input, output,
    /// constant).
    slot_of: Vec<Option<usize>>,
    state: Mutex<RunState>,
}

/// Assigns intermediate activations to reusable slots: a tensor takes a free slot when its node
/// runs and frees it after its last reader (greedy interval colouring in node order).
fn plan_slots(graph: &Graph) -> (Vec<Option<usize>>, usize) {
    let nt = graph.tensors.len();
    let mut last_use = vec![0usize; nt];
    for (i, n) in graph.nodes.iter().enumerate() {
        for x in n.op.inputs() {
            last_use[x] = i;
        }
    }
    let mut slot_of = vec![None; nt];
    let mut free: Vec<usize> = Vec::new();
    let mut n_slots = 0;
    for (i, n) in graph.nodes.iter().enumerate() {
        let o = n.op.out();
        if !graph.outputs.contains(&o) {
            let s = free.pop().unwrap_or_else(|| {
                n_slots += 1;
                n_slots - 1
            });
            slot_of[o] = Some(s);
        }
        // free the slots whose last reader is this node (after the output took its slot, so a
        // node never writes the buffer it reads)
        for x in n.op.inputs() {
            if last_use[x] == i {
                if let Some(s) = slot_of[x] {
                    if !free.contains(&s) {
                        free.push(s);
                    }
                }
            }
        }
        if last_use[o] < i || !graph.nodes.iter().skip(i + 1).any(|m| m.op.inputs().contains(&o)) {
            // never read (dead output): its slot is free again right away
            if let Some(s) = slot_of[o] {
                if !free.contains(&s) {
                    free.push(s);
                }
            }
        }
    }
    (slot_of, n_slots)
}

/// Checked element count of a shape.
pub fn numel(shape: &[i64]) -> std::result::Result<usize, String> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| if d < 0 { None } else { acc.checked_mul(d as usize) })
        .ok_or_else(|| format!("invalid shape {shape:?}"))
}

impl Delegate {
    /// Parse + validate a blob owned by the delegate (tests, tools). A malformed blob is
    /// `InvalidProgram`, a format version this build does not read `NotSupported`, a KV cache that
    /// cannot be allocated `OutOfMemory`.
    pub fn from_vec(blob: Vec<u8>) -> Result<Self> {
        Self::build(BlobStore::Owned(blob))
    }

    /// # Safety
    /// `blob` must stay valid and unchanged for the delegate's lifetime (it is the runtime's
    /// processed buffer, freed only after `destroy`).
    pub unsafe fn from_static(blob: &'static [u8]) -> Result<Self> {
        Self::build(BlobStore::Static(blob))
    }

    fn bytes(&self) -> &[u8] {
        match &self.blob {
            BlobStore::Static(b) => b,
            BlobStore::Owned(v) => v,
        }
    }

    fn build(blob: BlobStore) -> Result<Self> {
        let bytes: &[u8] = match &blob {
            BlobStore::Static(b) => b,
            BlobStore::Owned(v) => v,
        };
        let graph = mobilemoe_schema::parse(bytes)?;
        let mut floats = Vec::with_capacity(graph.tensors.len());
        let (mut copied, mut copied_bytes) = (0usize, 0usize);
        for t in &graph.tensors {
            use mobilemoe_schema::fb::DType;
            let Some(r) = t.data.clone() else {
                floats.push(None);
                continue;
            };
            let t = match t.dtype {
                DType::F32 => ScaleType::F32,
                DType::F16 => ScaleType::F16,
                DType::BF16 => ScaleType::Bf16,
                _ => {
                    floats.push(None);
                    continue;
                }
            };
            let b = &bytes[r.clone()];
            let c = if (b.as_ptr() as usize) % t.bytes() == 0 {
                FloatConst::InPlace(r, t)
            } else {
                copied += 1;
                copied_bytes += b.len();
                FloatConst::Copied(OwnedScales::from_le_bytes(t, b))
            };
            floats.push(Some(c));
        }
        if copied > 0 {
            crate::logging::warn(&format!(
                "delegate blob is not 4-byte aligned in memory: copied {copied} float constants ({copied_bytes} bytes) once at init; \
                 the u8 weights are still used in place"
            ));
        }
        let (slot_of, n_slots) = plan_slots(&graph);
        let mut kv = Vec::new();
        for n in &graph.nodes {
            if let NodeOp::Attention(a) = &n.op {
                // The reader checked the geometry: what is left to fail is the allocation (a
                // program asking for more memory than there is) or, defensively, the program.
                let cache = KvCache::new(a.kv, a.spec.n_kv_heads, a.spec.cache_rows(), a.spec.head_dim).map_err(|e| {
                    let e = Error::from(e);
                    let code = if e.code == ErrorCode::OutOfMemory { e.code } else { ErrorCode::InvalidProgram };
                    Error::new(code, e.message).context(format!("node {}", n.name))
                })?;
                kv.push(cache);
            }
        }
        let state = RunState { slots: vec![Vec::new(); n_slots], kv, ..Default::default() };
        let n_moe = graph.nodes.iter().filter(|n| matches!(n.op, NodeOp::MoeFfn(_))).count();
        Ok(Self { blob, graph, floats, kernels: Kernels::best(), n_moe, slot_of, state: Mutex::new(state) })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    fn f32c(&self, id: usize) -> &[f32] {
        match self.scales(id) {
            ScaleRef::F32(v) => v,
            _ => &[],
        }
    }

    /// A float constant in its stored type (the reader checked the dtype and shape; an id that is
    /// not a float constant views as empty).
    fn scales(&self, id: usize) -> ScaleRef<'_> {
        match &self.floats[id] {
            // In place: `build` checked the alignment for the type.
            Some(FloatConst::InPlace(r, t)) => {
                let b = &self.bytes()[r.clone()];
                match t {
                    ScaleType::F32 => ScaleRef::F32(bytemuck::cast_slice(b)),
                    ScaleType::F16 => ScaleRef::F16(bytemuck::cast_slice(b)),
                    ScaleType::Bf16 => ScaleRef::Bf16(bytemuck::cast_slice(b)),
                }
            }
            Some(FloatConst::Copied(v)) => v.as_ref(),
            None => ScaleRef::F32(&[]),
        }
    }

    fn u8c(&self, id: usize) -> &[u8] {
        self.graph.constant(self.bytes(), id).unwrap_or(&[])
    }

    /// Shapes of every tensor for the given input shapes (activations only).
    fn infer(&self, input_shapes: &[&[i64]]) -> Result<Vec<Option<Vec<i64>>>> {
        let g = &self.graph;
        if input_shapes.len() != g.inputs.len() {
            return Err(format!("expected {} inputs, got {}", g.inputs.len(), input_shapes.len()).into());
        }
        let mut shapes: Vec<Option<Vec<i64>>> = vec![None; g.tensors.len()];
        for (i, (&id, &s)) in g.inputs.iter().zip(input_shapes).enumerate() {
            let t = &g.tensors[id];
            let ok = s.len() == t.shape.len()
                && (s.last() == t.shape.last() || t.shape.last() == Some(&-1))
                && (t.dynamic_leading || s == t.shape.as_slice())
                && s.iter().all(|&d| d >= 0);
            if !ok {
                return Err(Error::invalid_argument(format!(
                    "input {i} has shape {s:?}, expected {:?}{}",
                    t.shape,
                    if t.dynamic_leading { " (leading dimensions may vary)" } else { "" }
                )));
            }
            numel(s)?;
            shapes[id] = Some(s.to_vec());
        }
        for n in &g.nodes {
            let xs = shapes[n.op.x()].as_deref().ok_or_else(|| format!("node {}: input not computed", n.name))?;
            let os = n.op.out_shape(xs).ok_or_else(|| format!("node {}: input shape {xs:?} has too low a rank", n.name))?;
            let rows = numel(xs)? / n.op.in_features().max(1);
            match &n.op {
                NodeOp::Add(a) if shapes[a.b].as_deref() != Some(xs) => {
                    return Err(format!("node {}: operands have shapes {xs:?} and {:?}", n.name, shapes[a.b]).into());
                }
                NodeOp::Attention(a) => {
                    let ps = shapes[a.input_pos].as_deref().unwrap_or(&[]);
                    if numel(ps)? != rows {
                        return Err(format!("node {}: input_pos has shape {ps:?} for {rows} tokens", n.name).into());
                    }
                }
                NodeOp::LmHead(_) if rows == 0 => return Err(format!("node {}: no tokens", n.name).into()),
                _ => {}
            }
            let t = &g.tensors[n.op.out()];
            if !t.dynamic_leading && os != t.shape {
                return Err(format!("node {}: output shape {os:?} differs from the static shape {:?}", n.name, t.shape).into());
            }
            numel(&os)?;
            shapes[n.op.out()] = Some(os);
        }
        Ok(shapes)
    }

    /// Output shapes for the given input shapes.
    pub fn output_shapes(&self, input_shapes: &[&[i64]]) -> Result<Vec<Vec<i64>>> {
        let shapes = self.infer(input_shapes)?;
        Ok(self.graph.outputs.iter().map(|&o| shapes[o].clone().unwrap_or_default()).collect())
    }

    /// Runs the graph on F32 inputs (see [`Delegate::execute_typed`]).
    pub fn execute(&self, inputs: &[(&[f32], &[i64])], outputs: &mut [&mut [f32]]) -> Result<()> {
        let typed: Vec<(Input<'_>, &[i64])> = inputs.iter().map(|&(d, s)| (Input::F32(d), s)).collect();
        self.execute_typed(&typed, outputs)
    }

    fn packed(&self, spec: MatrixSpec, data: usize, scales: usize) -> Result<PackedRef<'_>> {
        Ok(PackedRef::new(spec, self.u8c(data), self.scales(scales))?)
    }

    /// Runs the graph. `inputs[i]` = (data, shape) of graph input i, whose dtype must match the
    /// graph's; `outputs[j]` must already have the size given by `output_shapes`. Bad inputs are
    /// `InvalidArgument`; an activation buffer that cannot grow is `OutOfMemory`.
    pub fn execute_typed(&self, inputs: &[(Input<'_>, &[i64])], outputs: &mut [&mut [f32]]) -> Result<()> {
        let g = &self.graph;
        if inputs.len() != g.inputs.len() {
            return Err(format!("expected {} inputs, got {}", g.inputs.len(), inputs.len()).into());
        }
        if outputs.len() != g.outputs.len() {
            return Err(format!("expected {} outputs, got {}", g.outputs.len(), outputs.len()).into());
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *st;
        // shapes: recomputed only when the input shapes change (prefill -> decode)
        let same = st.shapes_key.len() == inputs.len() && st.shapes_key.iter().zip(inputs).all(|(k, (_, s))| k.as_slice() == *s);
        if !same {
            let in_shapes: Vec<&[i64]> = inputs.iter().map(|x| x.1).collect();
            st.shapes = self.infer(&in_shapes)?;
            st.shapes_key = inputs.iter().map(|x| x.1.to_vec()).collect();
        }
        let shapes = &st.shapes;
        for (i, ((data, s), &id)) in inputs.iter().zip(&g.inputs).enumerate() {
            if data.len() != numel(s)? {
                return Err(format!("input {i}: {} values for shape {s:?}", data.len()).into());
            }
            let want = g.tensors[id].dtype;
            let ok = matches!(
                (data, want),
                (Input::F32(_), mobilemoe_schema::fb::DType::F32) | (Input::I64(_), mobilemoe_schema::fb::DType::I64)
            );
            if !ok {
                return Err(format!("input {i}: dtype does not match the graph's {want:?}").into());
            }
        }
        for (j, o) in outputs.iter().enumerate() {
            let want = numel(shapes[g.outputs[j]].as_deref().unwrap_or(&[]))?;
            if o.len() != want {
                return Err(format!("output {j}: buffer has {} values, expected {want}", o.len()).into());
            }
        }
        // Where each activation lives: (ptr, len). Inputs, outputs, or a slot.
        // (address tables reused from the state: no allocation per call)
        let mut loc = std::mem::take(&mut st.loc);
        loc.clear();
        loc.resize(g.tensors.len(), None);
        let mut int_loc = std::mem::take(&mut st.int_loc);
        int_loc.clear();
        int_loc.resize(g.tensors.len(), None);
        for (&id, (data, _)) in g.inputs.iter().zip(inputs) {
            match data {
                Input::F32(d) => loc[id] = Some((d.as_ptr() as usize, d.len())),
                Input::I64(d) => int_loc[id] = Some((d.as_ptr() as usize, d.len())),
            }
        }
        for (&id, o) in g.outputs.iter().zip(outputs.iter_mut()) {
            loc[id] = Some((o.as_mut_ptr() as usize, o.len()));
        }
        for n in &g.nodes {
            let id = n.op.out();
            if let Some(s) = self.slot_of[id] {
                let len = numel(shapes[id].as_deref().unwrap_or(&[]))?;
                let buf = &mut st.slots[s];
                if buf.len() < len {
                    // sized by the call's token count: a failure is an error, not an abort
                    buf.try_reserve_exact(len - buf.len()).map_err(|_| {
                        Error::new(ErrorCode::OutOfMemory, format!("node {}: cannot allocate {len} activation values", n.name))
                    })?;
                    buf.resize(len, 0.0);
                }
                loc[id] = Some((buf.as_mut_ptr() as usize, len));
            }
        }
        let pool = ThreadPool::global();
        let n_moe = self.n_moe;
        // profiling (src/profiling): layer numbers for the `layer` span and routing statistics.
        let layer0 = if n_moe > 0 { crate::profiling::layer_base(self as *const Self as usize, n_moe) } else { 0 };
        let mut moe_i = 0i64;
        let mut attn_i = 0usize;
        // SAFETY: int_loc holds (pointer, length) of I64 graph inputs borrowed for this call.
        let ints = |id: usize| -> Option<&[i64]> { int_loc[id].map(|(p, l)| unsafe { std::slice::from_raw_parts(p as *const i64, l) }) };
        let get = |id: usize, what: &str, name: &str| -> Result<&[f32]> {
            let (p, l) = loc[id].ok_or_else(|| format!("node {name}: {what} has no buffer"))?;
            // SAFETY: p..p+l is an input, an output or a slot buffer that outlives this call; a
            // node never reads the buffer it writes (slots are assigned after inputs are freed
            // only for later nodes; see plan_slots and the checks in schema::read).
            Ok(unsafe { std::slice::from_raw_parts(p as *const f32, l) })
        };
        for n in &g.nodes {
            let name = n.name.as_str();
            let (op, ol) = loc[n.op.out()].ok_or_else(|| format!("node {name}: output has no buffer"))?;
            // SAFETY: the output buffer is distinct from every input buffer of this node (the
            // slot plan never gives a node's output the slot of a tensor it reads; graph inputs
            // and outputs are distinct tensors with distinct caller buffers).
            let out: &mut [f32] = unsafe { std::slice::from_raw_parts_mut(op as *mut f32, ol) };
            let res = match &n.op {
                NodeOp::MoeFfn(m) => {
                    let x = get(m.x, "x", name)?;
                    let shared = match &m.shared {
                        Some(s) => Some(SharedExpert {
                            w13: self.packed(m.spec.shared_w13_spec()?, s.w13, s.w13_scales)?,
                            w2: self.packed(m.spec.shared_w2_spec()?, s.w2, s.w2_scales)?,
                            gate: s.gate.map(|gid| self.f32c(gid)),
                        }),
                        None => None,
                    };
                    let w = MoeWeights {
                        router_w: self.f32c(m.router_weight),
                        expert_bias: m.expert_bias.map(|b| self.f32c(b)),
                        w13: self.u8c(m.w13),
                        w13_scales: self.scales(m.w13_scales),
                        w2: self.u8c(m.w2),
                        w2_scales: self.scales(m.w2_scales),
                        shared,
                    };
                    let t = x.len() / m.spec.dim;
                    let layer = layer0 + moe_i;
                    moe_i += 1;
                    let _span = tracing::debug_span!("layer", layer).entered();
                    let r = moe_ffn(&m.spec, &w, x, t, out, &mut st.moe, &pool, &self.kernels);
                    crate::profiling::record_routing(layer, &st.moe.last_counts);
                    r
                }
                NodeOp::Int4Linear(l) => {
                    let x = get(l.x, "x", name)?;
                    let w = self.packed(l.spec, l.weight, l.scales)?;
                    let rows = x.len() / l.spec.k;
                    linear(&w, l.bias.map(|b| self.f32c(b)), x, rows, out, l.exact, &mut st.lin, &pool, &self.kernels)
                }
                NodeOp::Embedding(e) => {
                    let toks = ints(e.tokens).ok_or_else(|| format!("node {name}: tokens must be an I64 graph input"))?;
                    let w = self.packed(e.spec, e.weight, e.scales)?;
                    embedding(&w, toks, out)
                }
                NodeOp::RmsNorm(r) => {
                    let x = get(r.x, "x", name)?;
                    rms_norm(x, x.len() / r.dim, self.f32c(r.weight), r.eps, out)
                }
                NodeOp::Add(a) => add(get(a.a, "a", name)?, get(a.b, "b", name)?, out),
                NodeOp::Attention(a) => {
                    let x = get(a.x, "x", name)?;
                    let pos = ints(a.input_pos).ok_or_else(|| format!("node {name}: input_pos must be an I64 graph input"))?;
                    let w = AttentionWeights {
                        wqkv: self.packed(a.qkv_spec, a.wqkv, a.wqkv_scales)?,
                        wo: self.packed(a.wo_spec, a.wo, a.wo_scales)?,
                        cos: self.f32c(a.rope_cos),
                        sin: self.f32c(a.rope_sin),
                    };
                    let cache = st.kv.get_mut(attn_i).ok_or_else(|| format!("node {name}: no KV cache"))?;
                    attn_i += 1;
                    let (mut kc, mut vc) = cache.views();
                    attention(&a.spec, &w, x, pos, &mut kc, &mut vc, out, &mut st.attn, &pool, &self.kernels)
                }
                NodeOp::SwigluFfn(f) => {
                    let x = get(f.x, "x", name)?;
                    let w13 = self.packed(f.w13_spec, f.w13, f.w13_scales)?;
                    let w2 = self.packed(f.w2_spec, f.w2, f.w2_scales)?;
                    swiglu_ffn(&w13, &w2, x, x.len() / f.w13_spec.k, f.exact, out, &mut st.dense, &pool, &self.kernels)
                }
                NodeOp::LmHead(h) => {
                    let x = get(h.x, "x", name)?;
                    let w = self.packed(h.spec, h.weight, h.scales)?;
                    let rows = x.len() / h.spec.k;
                    lm_head_last(x, rows, self.f32c(h.norm_weight), h.eps, &w, h.exact, out, &mut st.dense, &pool, &self.kernels)
                }
            };
            res.map_err(|e| Error::from(e).context(format!("node {} ({})", n.name, n.op.kind())))?;
        }
        st.loc = loc;
        st.int_loc = int_loc;
        Ok(())
    }
}
