//! Per-program delegate state: the validated graph, zero-copy views of the weights, and the
//! scratch buffers (behind a mutex so two threads may execute one program).

use mobilemoe_ops::{linear, moe_ffn, Kernels, LinearScratch, MoeScratch, MoeWeights, PackedRef, SharedExpert, ThreadPool};
use mobilemoe_schema::read::{Graph, NodeOp};
use std::ops::Range;
use std::sync::Mutex;

enum BlobStore {
    /// Borrowed from the runtime (the processed FreeableBuffer), valid until the delegate drops.
    Static(&'static [u8]),
    Owned(Vec<u8>),
}

/// An F32 constant: used in place when 4-byte aligned, else copied once at init.
enum F32Const {
    InPlace(Range<usize>),
    Copied(Vec<f32>),
}

#[derive(Default)]
struct RunState {
    moe: MoeScratch,
    lin: LinearScratch,
    /// Intermediate activations by tensor id.
    acts: Vec<Vec<f32>>,
}

pub struct Delegate {
    blob: BlobStore,
    graph: Graph,
    f32s: Vec<Option<F32Const>>,
    kernels: Kernels,
    state: Mutex<RunState>,
}

/// Checked element count of a shape.
pub fn numel(shape: &[i64]) -> Result<usize, String> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| if d < 0 { None } else { acc.checked_mul(d as usize) })
        .ok_or_else(|| format!("invalid shape {shape:?}"))
}

impl Delegate {
    /// Parse + validate a blob owned by the delegate (tests, tools).
    pub fn from_vec(blob: Vec<u8>) -> Result<Self, String> {
        Self::build(BlobStore::Owned(blob))
    }

    /// # Safety
    /// `blob` must stay valid and unchanged for the delegate's lifetime (it is the runtime's
    /// processed buffer, freed only after `destroy`).
    pub unsafe fn from_static(blob: &'static [u8]) -> Result<Self, String> {
        Self::build(BlobStore::Static(blob))
    }

    fn bytes(&self) -> &[u8] {
        match &self.blob {
            BlobStore::Static(b) => b,
            BlobStore::Owned(v) => v,
        }
    }

    fn build(blob: BlobStore) -> Result<Self, String> {
        let bytes: &[u8] = match &blob {
            BlobStore::Static(b) => b,
            BlobStore::Owned(v) => v,
        };
        let graph = mobilemoe_schema::parse(bytes).map_err(|e| e.to_string())?;
        let mut f32s = Vec::with_capacity(graph.tensors.len());
        let (mut copied, mut copied_bytes) = (0usize, 0usize);
        for t in &graph.tensors {
            f32s.push(match (&t.data, t.dtype) {
                (Some(r), mobilemoe_schema::fb::DType::F32) => {
                    let (v, was_copied) = mobilemoe_schema::f32_view(&bytes[r.clone()]);
                    if was_copied {
                        copied += 1;
                        copied_bytes += r.len();
                        Some(F32Const::Copied(v.into_owned()))
                    } else {
                        Some(F32Const::InPlace(r.clone()))
                    }
                }
                _ => None,
            });
        }
        if copied > 0 {
            eprintln!(
                "[mobilemoe] delegate blob is not 4-byte aligned in memory: copied {copied} f32 constants ({copied_bytes} bytes) once at init; \
                 the u8 weights are still used in place"
            );
        }
        let n = graph.tensors.len();
        Ok(Self {
            blob,
            graph,
            f32s,
            kernels: Kernels::best(),
            state: Mutex::new(RunState { acts: vec![Vec::new(); n], ..Default::default() }),
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    fn f32c(&self, id: usize) -> &[f32] {
        match &self.f32s[id] {
            Some(F32Const::InPlace(r)) => bytemuck::cast_slice(&self.bytes()[r.clone()]),
            Some(F32Const::Copied(v)) => v,
            None => &[],
        }
    }

    fn u8c(&self, id: usize) -> &[u8] {
        self.graph.constant(self.bytes(), id).unwrap_or(&[])
    }

    /// Shapes of every tensor for the given input shapes (activations only).
    fn infer(&self, input_shapes: &[&[i64]]) -> Result<Vec<Option<Vec<i64>>>, String> {
        let g = &self.graph;
        if input_shapes.len() != g.inputs.len() {
            return Err(format!("expected {} inputs, got {}", g.inputs.len(), input_shapes.len()));
        }
        let mut shapes: Vec<Option<Vec<i64>>> = vec![None; g.tensors.len()];
        for (i, (&id, &s)) in g.inputs.iter().zip(input_shapes).enumerate() {
            let t = &g.tensors[id];
            let ok = s.len() == t.shape.len()
                && s.last() == t.shape.last()
                && (t.dynamic_leading || s == t.shape.as_slice())
                && s.iter().all(|&d| d >= 0);
            if !ok {
                return Err(format!(
                    "input {i} has shape {s:?}, expected {:?}{}",
                    t.shape,
                    if t.dynamic_leading { " (leading dimensions may vary)" } else { "" }
                ));
            }
            numel(s)?;
            shapes[id] = Some(s.to_vec());
        }
        for n in &g.nodes {
            let xs = shapes[n.op.x()].clone().ok_or_else(|| format!("node {}: input not computed", n.name))?;
            let mut os = xs;
            *os.last_mut().ok_or("rank 0 activation")? = n.op.out_features() as i64;
            let t = &g.tensors[n.op.out()];
            if !t.dynamic_leading && os != t.shape {
                return Err(format!("node {}: output shape {os:?} differs from the static shape {:?}", n.name, t.shape));
            }
            numel(&os)?;
            shapes[n.op.out()] = Some(os);
        }
        Ok(shapes)
    }

    /// Output shapes for the given input shapes.
    pub fn output_shapes(&self, input_shapes: &[&[i64]]) -> Result<Vec<Vec<i64>>, String> {
        let shapes = self.infer(input_shapes)?;
        Ok(self.graph.outputs.iter().map(|&o| shapes[o].clone().unwrap_or_default()).collect())
    }

    /// Runs the graph. `inputs[i]` = (data, shape) of graph input i; `outputs[j]` must already
    /// have the size given by `output_shapes`.
    pub fn execute(&self, inputs: &[(&[f32], &[i64])], outputs: &mut [&mut [f32]]) -> Result<(), String> {
        let g = &self.graph;
        let in_shapes: Vec<&[i64]> = inputs.iter().map(|x| x.1).collect();
        let shapes = self.infer(&in_shapes)?;
        if outputs.len() != g.outputs.len() {
            return Err(format!("expected {} outputs, got {}", g.outputs.len(), outputs.len()));
        }
        for (i, (data, s)) in inputs.iter().enumerate() {
            if data.len() != numel(s)? {
                return Err(format!("input {i}: {} values for shape {s:?}", data.len()));
            }
        }
        for (j, o) in outputs.iter().enumerate() {
            let want = numel(shapes[g.outputs[j]].as_deref().unwrap_or(&[]))?;
            if o.len() != want {
                return Err(format!("output {j}: buffer has {} values, expected {want}", o.len()));
            }
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *st;
        // Where each activation lives: (ptr, len). Inputs, outputs, or an intermediate buffer.
        let mut loc: Vec<Option<(*mut f32, usize)>> = vec![None; g.tensors.len()];
        for (&id, (data, _)) in g.inputs.iter().zip(inputs) {
            loc[id] = Some((data.as_ptr() as *mut f32, data.len()));
        }
        for (&id, o) in g.outputs.iter().zip(outputs.iter_mut()) {
            loc[id] = Some((o.as_mut_ptr(), o.len()));
        }
        if st.acts.len() < g.tensors.len() {
            st.acts.resize(g.tensors.len(), Vec::new());
        }
        for n in &g.nodes {
            let id = n.op.out();
            if loc[id].is_none() {
                let len = numel(shapes[id].as_deref().unwrap_or(&[]))?;
                let buf = &mut st.acts[id];
                if buf.len() < len {
                    buf.resize(len, 0.0);
                }
                loc[id] = Some((buf.as_mut_ptr(), len));
            }
        }
        let pool = ThreadPool::global();
        // profiling (src/profiling): layer numbers for the `layer` span and routing statistics.
        let layer0 = crate::profiling::layer_base(
            self as *const Self as usize,
            g.nodes.iter().filter(|n| matches!(n.op, NodeOp::MoeFfn(_))).count(),
        );
        let mut moe_i = 0i64;
        for n in &g.nodes {
            let (xp, xl) = loc[n.op.x()].ok_or_else(|| format!("node {}: input has no buffer", n.name))?;
            let (op, ol) = loc[n.op.out()].ok_or_else(|| format!("node {}: output has no buffer", n.name))?;
            // SAFETY: x and out are distinct tensors (validated: a node never writes a tensor that
            // exists before it), so the buffers do not overlap; the buffers outlive this loop
            // (inputs/outputs are borrowed for the call, intermediates live in `st.acts`, which is
            // not resized below).
            let x: &[f32] = unsafe { std::slice::from_raw_parts(xp, xl) };
            let out: &mut [f32] = unsafe { std::slice::from_raw_parts_mut(op, ol) };
            let res = match &n.op {
                NodeOp::MoeFfn(m) => {
                    let shared = match &m.shared {
                        Some(s) => Some(SharedExpert {
                            w13: PackedRef::new(m.spec.shared_w13_spec().map_err(|e| e.to_string())?, self.u8c(s.w13), self.f32c(s.w13_scales))
                                .map_err(|e| e.to_string())?,
                            w2: PackedRef::new(m.spec.shared_w2_spec().map_err(|e| e.to_string())?, self.u8c(s.w2), self.f32c(s.w2_scales))
                                .map_err(|e| e.to_string())?,
                            gate: s.gate.map(|gid| self.f32c(gid)),
                        }),
                        None => None,
                    };
                    let w = MoeWeights {
                        router_w: self.f32c(m.router_weight),
                        expert_bias: m.expert_bias.map(|b| self.f32c(b)),
                        w13: self.u8c(m.w13),
                        w13_scales: self.f32c(m.w13_scales),
                        w2: self.u8c(m.w2),
                        w2_scales: self.f32c(m.w2_scales),
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
                    let w = PackedRef::new(l.spec, self.u8c(l.weight), self.f32c(l.scales)).map_err(|e| e.to_string())?;
                    let rows = x.len() / l.spec.k;
                    linear(&w, l.bias.map(|b| self.f32c(b)), x, rows, out, l.exact, &mut st.lin, &pool, &self.kernels)
                }
            };
            res.map_err(|e| format!("node {} ({}): {e}", n.name, n.op.kind()))?;
        }
        Ok(())
    }
}
