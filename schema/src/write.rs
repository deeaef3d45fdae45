//! Writing blobs. [`RawGraph::to_bytes`] serialises exactly what it is given (no validation), so
//! tests and fuzzers can produce any corruption; [`BlobBuilder`] produces valid blobs.

use crate::{fb, DATA_ALIGN, FORMAT_VERSION, HEADER_SIZE, MAGIC};
use mobilemoe_ops::{GroupScore, MoeSpec, PackedRef, ScaleRef, ScoreFunc};

/// A tensor as stored (ids, shapes and segment index unchecked).
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    pub dtype: fb::DType,
    pub shape: Vec<i64>,
    pub dynamic_leading: bool,
    pub segment: i32,
}

/// An op as stored. `Unknown` writes a node whose union type is the given (invalid) tag.
pub enum RawOp {
    MoeFfn(fb::MoeFfnArgs),
    Int4Linear(fb::Int4LinearArgs),
    /// A decoder attention node (format version 2; QK-norm and the window need version 5).
    Attention(fb::AttentionArgs),
    Unknown(u8),
}

pub struct RawNode {
    pub name: String,
    pub op: RawOp,
}

/// Everything in a blob, unchecked.
pub struct RawGraph {
    /// Written into the header (and into `Graph.version`).
    pub version: u32,
    pub tensors: Vec<RawTensor>,
    pub nodes: Vec<RawNode>,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    /// (offset relative to the data area, size) of each segment.
    pub segments: Vec<(u64, u64)>,
    /// The data area.
    pub data: Vec<u8>,
}

impl Default for RawGraph {
    fn default() -> Self {
        Self { version: FORMAT_VERSION, tensors: vec![], nodes: vec![], inputs: vec![], outputs: vec![], segments: vec![], data: vec![] }
    }
}

fn align_up(v: usize, a: usize) -> usize {
    v.div_ceil(a) * a
}

fn copy_moe(a: &fb::MoeFfnArgs) -> fb::MoeFfnArgs {
    fb::MoeFfnArgs { ..*a }
}

impl RawGraph {
    /// The flatbuffer alone (with the "MMOE" file identifier).
    pub fn flatbuffer(&self) -> Vec<u8> {
        let mut fbb = flatbuffers::FlatBufferBuilder::with_capacity(1024);
        let tensors: Vec<_> = self
            .tensors
            .iter()
            .map(|t| {
                let shape = fbb.create_vector(&t.shape);
                fb::Tensor::create(
                    &mut fbb,
                    &fb::TensorArgs { dtype: t.dtype, shape: Some(shape), dynamic_leading: t.dynamic_leading, segment: t.segment },
                )
            })
            .collect();
        let nodes: Vec<_> = self
            .nodes
            .iter()
            .map(|n| {
                let name = fbb.create_string(&n.name);
                let (op_type, op) = match &n.op {
                    RawOp::MoeFfn(a) => (fb::Op::MoeFfn, Some(fb::MoeFfn::create(&mut fbb, &copy_moe(a)).as_union_value())),
                    RawOp::Int4Linear(a) => {
                        (fb::Op::Int4Linear, Some(fb::Int4Linear::create(&mut fbb, &fb::Int4LinearArgs { ..*a }).as_union_value()))
                    }
                    RawOp::Attention(a) => {
                        (fb::Op::Attention, Some(fb::Attention::create(&mut fbb, &fb::AttentionArgs { ..*a }).as_union_value()))
                    }
                    RawOp::Unknown(tag) => {
                        // Any table will do as the payload of an unknown tag.
                        let t = fb::Int4Linear::create(&mut fbb, &fb::Int4LinearArgs::default());
                        (fb::Op(*tag), Some(t.as_union_value()))
                    }
                };
                fb::Node::create(&mut fbb, &fb::NodeArgs { op_type, op, name: Some(name) })
            })
            .collect();
        let tensors = fbb.create_vector(&tensors);
        let nodes = fbb.create_vector(&nodes);
        let inputs = fbb.create_vector(&self.inputs);
        let outputs = fbb.create_vector(&self.outputs);
        let segs: Vec<fb::Segment> = self.segments.iter().map(|&(o, s)| fb::Segment::new(o, s)).collect();
        let segments = fbb.create_vector(&segs);
        let root = fb::Graph::create(
            &mut fbb,
            &fb::GraphArgs {
                version: self.version,
                tensors: Some(tensors),
                nodes: Some(nodes),
                inputs: Some(inputs),
                outputs: Some(outputs),
                segments: Some(segments),
            },
        );
        fb::finish_graph_buffer(&mut fbb, root);
        fbb.finished_data().to_vec()
    }

    /// Header + flatbuffer + padding + data area.
    pub fn to_bytes(&self) -> Vec<u8> {
        let fbuf = self.flatbuffer();
        let data_off = align_up(HEADER_SIZE + fbuf.len(), DATA_ALIGN);
        let mut out = Vec::with_capacity(data_off + self.data.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(HEADER_SIZE as u64).to_le_bytes());
        out.extend_from_slice(&(fbuf.len() as u64).to_le_bytes());
        out.extend_from_slice(&(data_off as u64).to_le_bytes());
        out.extend_from_slice(&fbuf);
        out.resize(data_off, 0);
        out.extend_from_slice(&self.data);
        out
    }
}

/// Builds valid blobs: tensors get consecutive ids, constants get 64-byte aligned segments.
#[derive(Default)]
pub struct BlobBuilder {
    pub raw: RawGraph,
}

/// Weights of one MoE layer for [`BlobBuilder::moe_ffn_layer`]; expert tensors are stacked
/// `[E, bytes]` / `[E, scales]` as in docs/DESIGN.md section 2.
pub struct MoeLayerWeights<'a> {
    pub router_w: &'a [f32],
    pub expert_bias: Option<&'a [f32]>,
    pub w13: &'a [u8],
    pub w13_scales: ScaleRef<'a>,
    pub w2: &'a [u8],
    pub w2_scales: ScaleRef<'a>,
    pub shared: Option<(PackedRef<'a>, PackedRef<'a>, Option<&'a [f32]>)>,
}

impl BlobBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, dtype: fb::DType, shape: &[i64], dynamic_leading: bool, segment: i32) -> i32 {
        self.raw.tensors.push(RawTensor { dtype, shape: shape.to_vec(), dynamic_leading, segment });
        (self.raw.tensors.len() - 1) as i32
    }

    /// An F32 activation; `dynamic_leading` lets all but the last dimension vary at run time.
    pub fn activation(&mut self, shape: &[i64], dynamic_leading: bool) -> i32 {
        self.push(fb::DType::F32, shape, dynamic_leading, -1)
    }

    /// A constant of raw bytes in a new segment.
    pub fn constant_bytes(&mut self, dtype: fb::DType, shape: &[i64], bytes: &[u8]) -> i32 {
        let off = align_up(self.raw.data.len(), DATA_ALIGN);
        self.raw.data.resize(off, 0);
        self.raw.data.extend_from_slice(bytes);
        self.raw.segments.push((off as u64, bytes.len() as u64));
        let seg = (self.raw.segments.len() - 1) as i32;
        self.push(dtype, shape, false, seg)
    }

    pub fn constant_u8(&mut self, shape: &[i64], bytes: &[u8]) -> i32 {
        self.constant_bytes(fb::DType::U8, shape, bytes)
    }

    pub fn constant_f32(&mut self, shape: &[i64], values: &[f32]) -> i32 {
        self.constant_bytes(fb::DType::F32, shape, bytemuck::cast_slice(values))
    }

    /// Per-group weight scales in their element type (F16/BF16 need format version 3).
    pub fn constant_scales(&mut self, shape: &[i64], scales: ScaleRef<'_>) -> i32 {
        match scales {
            ScaleRef::F32(v) => self.constant_f32(shape, v),
            ScaleRef::F16(v) => {
                let bytes: Vec<u8> = v.iter().flat_map(|h| h.to_bits().to_le_bytes()).collect();
                self.constant_bytes(fb::DType::F16, shape, &bytes)
            }
            ScaleRef::Bf16(v) => {
                let bytes: Vec<u8> = v.iter().flat_map(|h| h.to_bits().to_le_bytes()).collect();
                self.constant_bytes(fb::DType::BF16, shape, &bytes)
            }
        }
    }

    pub fn node(&mut self, name: &str, op: RawOp) {
        self.raw.nodes.push(RawNode { name: name.to_string(), op });
    }

    /// Adds a fused MoE FFN layer reading `x` (shape `[.., D]`); returns the output tensor id.
    pub fn moe_ffn_layer(&mut self, name: &str, x: i32, spec: &MoeSpec, w: &MoeLayerWeights<'_>) -> i32 {
        let e = spec.router.num_experts as i64;
        let d = spec.dim as i64;
        let xs = self.raw.tensors.get(x as usize).map(|t| (t.shape.clone(), t.dynamic_leading));
        let (mut oshape, dynl) = xs.unwrap_or((vec![1, d], true));
        if let Some(l) = oshape.last_mut() {
            *l = d;
        }
        let router_weight = self.constant_f32(&[e, d], w.router_w);
        let expert_bias = w.expert_bias.map(|b| self.constant_f32(&[e], b)).unwrap_or(-1);
        let per = |n: usize| n as i64 / e.max(1);
        let w13 = self.constant_u8(&[e, per(w.w13.len())], w.w13);
        let w13_scales = self.constant_scales(&[e, per(w.w13_scales.len())], w.w13_scales);
        let w2 = self.constant_u8(&[e, per(w.w2.len())], w.w2);
        let w2_scales = self.constant_scales(&[e, per(w.w2_scales.len())], w.w2_scales);
        let (mut sh, mut gate) = ([-1i32; 4], -1);
        if let Some((a, b, g)) = &w.shared {
            sh = [
                self.constant_u8(&[a.data.len() as i64], a.data),
                self.constant_scales(&[a.scales.len() as i64], a.scales),
                self.constant_u8(&[b.data.len() as i64], b.data),
                self.constant_scales(&[b.scales.len() as i64], b.scales),
            ];
            if let Some(g) = g {
                gate = self.constant_f32(&[g.len() as i64], g);
            }
        }
        let out = self.activation(&oshape, dynl);
        let args = fb::MoeFfnArgs {
            x,
            router_weight,
            expert_bias,
            w13,
            w13_scales,
            w2,
            w2_scales,
            shared_w13: sh[0],
            shared_w13_scales: sh[1],
            shared_w2: sh[2],
            shared_w2_scales: sh[3],
            shared_gate: gate,
            out,
            num_experts: spec.router.num_experts as i32,
            top_k: spec.router.top_k as i32,
            dim: spec.dim as i32,
            hidden_dim: spec.hidden as i32,
            shared_hidden_dim: spec.shared_hidden as i32,
            group_size: spec.group as i32,
            weight_bits: spec.bits.bits() as i32,
            score_func: match spec.router.score_func {
                ScoreFunc::Softmax => fb::ScoreFunc::Softmax,
                ScoreFunc::SoftmaxAll => fb::ScoreFunc::SoftmaxAll,
                ScoreFunc::Sigmoid => fb::ScoreFunc::Sigmoid,
                ScoreFunc::TopkSigmoid => fb::ScoreFunc::TopkSigmoid,
                ScoreFunc::SparseMixer => fb::ScoreFunc::SparseMixer,
            },
            renormalize: spec.router.renormalize,
            route_scale: spec.router.route_scale,
            exact: spec.exact,
            num_groups: spec.router.group_limit.groups as i32,
            top_groups: spec.router.group_limit.top_groups as i32,
            group_score: match spec.router.group_limit.score {
                GroupScore::Max => fb::GroupScore::Max,
                GroupScore::TopTwoSum => fb::GroupScore::TopTwoSum,
            },
            weight_input: spec.router.weight_input,
            jitter_eps: spec.router.jitter_eps,
            renorm_eps: spec.router.renorm_eps,
            renorm_min: spec.router.renorm_min,
            expert_scales_out: spec.scales_out,
        };
        self.node(name, RawOp::MoeFfn(args));
        out
    }

    /// Adds a dense packed linear layer reading `x`; returns the output tensor id.
    pub fn linear_layer(&mut self, name: &str, x: i32, w: &PackedRef<'_>, bias: Option<&[f32]>, exact: bool) -> i32 {
        let spec = w.spec;
        let xs = self.raw.tensors.get(x as usize).map(|t| (t.shape.clone(), t.dynamic_leading));
        let (mut oshape, dynl) = xs.unwrap_or((vec![1, spec.n as i64], true));
        if let Some(l) = oshape.last_mut() {
            *l = spec.n as i64;
        }
        let weight = self.constant_u8(&[w.data.len() as i64], w.data);
        let scales = self.constant_scales(&[w.scales.len() as i64], w.scales);
        let bias = bias.map(|b| self.constant_f32(&[b.len() as i64], b)).unwrap_or(-1);
        let out = self.activation(&oshape, dynl);
        let args = fb::Int4LinearArgs {
            x,
            weight,
            scales,
            bias,
            out,
            in_features: spec.k as i32,
            out_features: spec.n as i32,
            group_size: spec.group as i32,
            weight_bits: spec.bits.bits() as i32,
            exact,
        };
        self.node(name, RawOp::Int4Linear(args));
        out
    }

    pub fn set_inputs(&mut self, ids: &[i32]) {
        self.raw.inputs = ids.to_vec();
    }
    pub fn set_outputs(&mut self, ids: &[i32]) {
        self.raw.outputs = ids.to_vec();
    }
    pub fn into_raw(self) -> RawGraph {
        self.raw
    }
    pub fn finish(&self) -> Vec<u8> {
        self.raw.to_bytes()
    }
}
