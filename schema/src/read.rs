//! Parsing and validation of a delegate blob. Nothing here panics or indexes out of bounds on any
//! input: every id, offset, size and attribute is checked, and a failure is a [`BlobError`] that
//! names the field.

use crate::{dtype_size, fb, invalid, BlobError, Result, DATA_ALIGN, FORMAT_VERSION, HEADER_SIZE, MAGIC};
use mobilemoe_ops::{MatrixSpec, MoeSpec, RouterConfig, ScoreFunc, WeightBits};
use std::ops::Range;

/// Parsed 32-byte header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub flatbuffer_offset: u64,
    pub flatbuffer_size: u64,
    pub data_offset: u64,
}

/// One tensor of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDesc {
    pub dtype: fb::DType,
    pub shape: Vec<i64>,
    pub dynamic_leading: bool,
    /// Constant: absolute byte range in the blob. Activation: `None`.
    pub data: Option<Range<usize>>,
}

impl TensorDesc {
    pub fn is_constant(&self) -> bool {
        self.data.is_some()
    }
    pub fn last_dim(&self) -> Option<i64> {
        self.shape.last().copied()
    }
}

/// Tensor ids of the shared expert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedIds {
    pub w13: usize,
    pub w13_scales: usize,
    pub w2: usize,
    pub w2_scales: usize,
    pub gate: Option<usize>,
}

/// A validated `MoeFfn` node: tensor ids are in range and have the right dtype/shape/bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeFfnNode {
    pub x: usize,
    pub out: usize,
    pub router_weight: usize,
    pub expert_bias: Option<usize>,
    pub w13: usize,
    pub w13_scales: usize,
    pub w2: usize,
    pub w2_scales: usize,
    pub shared: Option<SharedIds>,
    pub spec: MoeSpec,
}

/// A validated `Int4Linear` node.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearNode {
    pub x: usize,
    pub out: usize,
    pub weight: usize,
    pub scales: usize,
    pub bias: Option<usize>,
    pub spec: MatrixSpec,
    pub exact: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeOp {
    MoeFfn(MoeFfnNode),
    Int4Linear(LinearNode),
}

impl NodeOp {
    pub fn kind(&self) -> &'static str {
        match self {
            NodeOp::MoeFfn(_) => "MoeFfn",
            NodeOp::Int4Linear(_) => "Int4Linear",
        }
    }
    pub fn x(&self) -> usize {
        match self {
            NodeOp::MoeFfn(n) => n.x,
            NodeOp::Int4Linear(n) => n.x,
        }
    }
    pub fn out(&self) -> usize {
        match self {
            NodeOp::MoeFfn(n) => n.out,
            NodeOp::Int4Linear(n) => n.out,
        }
    }
    /// Width of the output's last dimension.
    pub fn out_features(&self) -> usize {
        match self {
            NodeOp::MoeFfn(n) => n.spec.dim,
            NodeOp::Int4Linear(n) => n.spec.n,
        }
    }
    /// Width of the input's last dimension.
    pub fn in_features(&self) -> usize {
        match self {
            NodeOp::MoeFfn(n) => n.spec.dim,
            NodeOp::Int4Linear(n) => n.spec.k,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: NodeOp,
}

/// A decoded, fully validated graph. Constants are byte ranges into the blob it was parsed from.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    pub header: Header,
    pub tensors: Vec<TensorDesc>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
    /// Absolute byte ranges of the segments.
    pub segments: Vec<Range<usize>>,
    /// Length of the blob it was parsed from.
    pub blob_len: usize,
}

impl Graph {
    /// Bytes of constant tensor `id` in `blob` (the blob this graph was parsed from).
    pub fn constant<'b>(&self, blob: &'b [u8], id: usize) -> Option<&'b [u8]> {
        if blob.len() != self.blob_len {
            return None;
        }
        self.tensors.get(id)?.data.clone().and_then(|r| blob.get(r))
    }
    /// Total bytes of all weight segments.
    pub fn weight_bytes(&self) -> usize {
        self.segments.iter().map(|r| r.len()).sum()
    }
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Parse and check the header only.
pub fn parse_header(blob: &[u8]) -> Result<Header> {
    if blob.len() < HEADER_SIZE {
        return Err(BlobError::TooSmall(blob.len()));
    }
    let magic: [u8; 4] = blob[0..4].try_into().unwrap();
    if magic != MAGIC {
        return Err(BlobError::BadMagic(magic));
    }
    let h = Header {
        version: read_u32(blob, 4),
        flatbuffer_offset: read_u64(blob, 8),
        flatbuffer_size: read_u64(blob, 16),
        data_offset: read_u64(blob, 24),
    };
    if h.version != FORMAT_VERSION {
        return Err(BlobError::BadVersion { found: h.version });
    }
    let len = blob.len() as u64;
    if h.flatbuffer_offset != HEADER_SIZE as u64 {
        return Err(BlobError::Header(format!("flatbuffer offset {} (expected {HEADER_SIZE})", h.flatbuffer_offset)));
    }
    let fb_end = h.flatbuffer_offset.checked_add(h.flatbuffer_size);
    match fb_end {
        Some(end) if h.flatbuffer_size >= 8 && end <= len => {
            if h.data_offset < end {
                return Err(BlobError::Header(format!(
                    "data offset {} overlaps the flatbuffer (which ends at {end})",
                    h.data_offset
                )));
            }
        }
        _ => {
            return Err(BlobError::Header(format!(
                "flatbuffer size {} out of range (blob is {len} bytes)",
                h.flatbuffer_size
            )))
        }
    }
    if h.data_offset % DATA_ALIGN as u64 != 0 {
        return Err(BlobError::Header(format!("data offset {} is not a multiple of {DATA_ALIGN}", h.data_offset)));
    }
    if h.data_offset > len {
        return Err(BlobError::Header(format!("data offset {} past the end of the blob ({len} bytes)", h.data_offset)));
    }
    Ok(h)
}

/// Verify the flatbuffer part and return its root.
pub fn flatbuffer_root<'a>(blob: &'a [u8], h: &Header) -> Result<fb::Graph<'a>> {
    let start = h.flatbuffer_offset as usize;
    let fbuf = &blob[start..start + h.flatbuffer_size as usize];
    if !fb::graph_buffer_has_identifier(fbuf) {
        return Err(BlobError::Flatbuffer("missing file identifier \"MMOE\" (finish the flatbuffer with file_identifier=b\"MMOE\")".into()));
    }
    let opts = flatbuffers::VerifierOptions { max_tables: 10_000_000, max_apparent_size: 1 << 31, ..Default::default() };
    fb::root_as_graph_with_opts(&opts, fbuf).map_err(|e| BlobError::Flatbuffer(e.to_string()))
}

/// Parse and validate a whole blob.
pub fn parse(blob: &[u8]) -> Result<Graph> {
    let header = parse_header(blob)?;
    let root = flatbuffer_root(blob, &header)?;
    if root.version() != FORMAT_VERSION {
        return Err(BlobError::BadVersion { found: root.version() });
    }
    let data_off = header.data_offset as usize;
    let data_len = blob.len() - data_off;

    // segments
    let mut segments = Vec::new();
    for (i, s) in root.segments().iter().flatten().enumerate() {
        let (off, size) = (s.offset(), s.size_());
        if off % DATA_ALIGN as u64 != 0 {
            return invalid(format!("segment {i}: offset {off} is not a multiple of {DATA_ALIGN}"));
        }
        match off.checked_add(size) {
            Some(end) if end <= data_len as u64 => {}
            _ => return invalid(format!("segment {i}: [{off}, {off}+{size}) is outside the data area ({data_len} bytes)")),
        }
        let a = data_off + off as usize;
        segments.push(a..a + size as usize);
    }

    // tensors
    let mut tensors = Vec::new();
    for (i, t) in root.tensors().iter().flatten().enumerate() {
        let dtype = t.dtype();
        let Some(esize) = dtype_size(dtype) else {
            return invalid(format!("tensor {i}: unknown dtype {}", dtype.0));
        };
        let shape: Vec<i64> = t.shape().map(|s| s.iter().collect()).unwrap_or_default();
        // -1 marks a varying leading dimension of a dynamic_leading activation; otherwise >= 0.
        for (k, &d) in shape.iter().enumerate() {
            let varying_ok = d == -1 && t.dynamic_leading() && t.segment() == -1 && k + 1 < shape.len();
            if d < 0 && !varying_ok {
                return invalid(format!("tensor {i}: invalid dimension {d} in shape {shape:?}"));
            }
        }
        let data = match t.segment() {
            -1 => None,
            s if s >= 0 && (s as usize) < segments.len() => {
                let r = segments[s as usize].clone();
                if t.dynamic_leading() {
                    return invalid(format!("tensor {i}: a constant cannot have dynamic_leading"));
                }
                let bytes = shape
                    .iter()
                    .try_fold(esize as u64, |acc, &d| acc.checked_mul(d as u64))
                    .filter(|&b| b == r.len() as u64);
                if bytes.is_none() {
                    return invalid(format!(
                        "tensor {i}: shape {shape:?} x {esize} bytes does not match its segment {s} of {} bytes",
                        r.len()
                    ));
                }
                Some(r)
            }
            s => return invalid(format!("tensor {i}: segment index {s} out of range (0..{})", segments.len())),
        };
        if data.is_none() && shape.is_empty() {
            return invalid(format!("tensor {i}: an activation needs rank >= 1"));
        }
        tensors.push(TensorDesc { dtype, shape, dynamic_leading: t.dynamic_leading(), data });
    }
    let nt = tensors.len();
    let id = |what: &str, v: i32| -> Result<usize> {
        if v >= 0 && (v as usize) < nt {
            Ok(v as usize)
        } else {
            invalid(format!("{what}: tensor id {v} out of range (0..{nt})"))
        }
    };
    let opt_id = |what: &str, v: i32| -> Result<Option<usize>> { if v == -1 { Ok(None) } else { id(what, v).map(Some) } };

    let mut inputs = Vec::new();
    for v in root.inputs().iter().flatten() {
        inputs.push(id("graph input", v)?);
    }
    let mut outputs = Vec::new();
    for v in root.outputs().iter().flatten() {
        outputs.push(id("graph output", v)?);
    }
    let mut defined = vec![false; nt];
    for &i in &inputs {
        let t = &tensors[i];
        if t.is_constant() || t.dtype != fb::DType::F32 {
            return invalid(format!("graph input tensor {i} must be an F32 activation"));
        }
        if defined[i] {
            return invalid(format!("tensor {i} is listed twice as a graph input"));
        }
        defined[i] = true;
    }
    if outputs.is_empty() {
        return invalid("the graph has no outputs");
    }

    let mut nodes = Vec::new();
    for (ni, n) in root.nodes().iter().flatten().enumerate() {
        let name = n.name().unwrap_or("").to_string();
        let ctx = |f: &str| format!("node {ni} ({name}) {f}");
        let op = match n.op_type() {
            fb::Op::MoeFfn => {
                let m = n.op_as_moe_ffn().ok_or_else(|| BlobError::Invalid(ctx("has no MoeFfn table")))?;
                NodeOp::MoeFfn(check_moe(&tensors, &m, &ctx, &id, &opt_id)?)
            }
            fb::Op::Int4Linear => {
                let l = n.op_as_int_4_linear().ok_or_else(|| BlobError::Invalid(ctx("has no Int4Linear table")))?;
                NodeOp::Int4Linear(check_linear(&tensors, &l, &ctx, &id, &opt_id)?)
            }
            other => return invalid(ctx(&format!("has unknown op type {}", other.0))),
        };
        let (x, out) = (op.x(), op.out());
        if !defined[x] {
            return invalid(ctx(&format!("reads activation {x} before anything writes it")));
        }
        if defined[out] {
            return invalid(ctx(&format!("writes tensor {out}, which is a graph input or already written")));
        }
        let (xt, ot) = (&tensors[x], &tensors[out]);
        if xt.shape.len() != ot.shape.len() {
            return invalid(ctx(&format!("output rank {} differs from input rank {}", ot.shape.len(), xt.shape.len())));
        }
        if !xt.dynamic_leading && !ot.dynamic_leading {
            let r = xt.shape.len() - 1;
            if xt.shape[..r] != ot.shape[..r] {
                return invalid(ctx(&format!("output shape {:?} does not match input shape {:?}", ot.shape, xt.shape)));
            }
        }
        defined[out] = true;
        nodes.push(Node { name, op });
    }
    let mut seen = vec![false; nt];
    for &o in &outputs {
        if !defined[o] || inputs.contains(&o) {
            return invalid(format!("graph output tensor {o} is not written by any node"));
        }
        if seen[o] {
            return invalid(format!("tensor {o} is listed twice as a graph output"));
        }
        seen[o] = true;
    }
    Ok(Graph { header, tensors, nodes, inputs, outputs, segments, blob_len: blob.len() })
}

fn pos(ctx: &dyn Fn(&str) -> String, what: &str, v: i32) -> Result<usize> {
    if v > 0 {
        Ok(v as usize)
    } else {
        invalid(ctx(&format!("attribute {what} = {v} must be > 0")))
    }
}

fn map_ops<T>(ctx: &dyn Fn(&str) -> String, r: mobilemoe_ops::Result<T>) -> Result<T> {
    r.map_err(|e| BlobError::Invalid(ctx(&format!("attributes: {e}"))))
}

fn expect_const(
    tensors: &[TensorDesc],
    ctx: &dyn Fn(&str) -> String,
    what: &str,
    id: usize,
    dtype: fb::DType,
    shape: &[usize],
) -> Result<()> {
    let t = &tensors[id];
    if !t.is_constant() {
        return invalid(ctx(&format!("{what} (tensor {id}) must be a constant")));
    }
    if t.dtype != dtype {
        return invalid(ctx(&format!("{what} (tensor {id}) has dtype {:?}, expected {:?}", t.dtype, dtype)));
    }
    let want: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    if t.shape != want {
        return invalid(ctx(&format!("{what} (tensor {id}) has shape {:?}, expected {:?}", t.shape, want)));
    }
    Ok(())
}

fn expect_act(tensors: &[TensorDesc], ctx: &dyn Fn(&str) -> String, what: &str, id: usize, last: usize) -> Result<()> {
    let t = &tensors[id];
    if t.is_constant() || t.dtype != fb::DType::F32 {
        return invalid(ctx(&format!("{what} (tensor {id}) must be an F32 activation")));
    }
    if t.last_dim() != Some(last as i64) {
        return invalid(ctx(&format!("{what} (tensor {id}) shape {:?}: last dimension must be {last}", t.shape)));
    }
    Ok(())
}

type IdFn<'a> = dyn Fn(&str, i32) -> Result<usize> + 'a;
type OptIdFn<'a> = dyn Fn(&str, i32) -> Result<Option<usize>> + 'a;

fn check_moe(
    tensors: &[TensorDesc],
    m: &fb::MoeFfn<'_>,
    ctx: &dyn Fn(&str) -> String,
    id: &IdFn<'_>,
    opt_id: &OptIdFn<'_>,
) -> Result<MoeFfnNode> {
    let c = |f: &str| ctx(f);
    let score_func = match m.score_func() {
        fb::ScoreFunc::Softmax => ScoreFunc::Softmax,
        fb::ScoreFunc::SoftmaxAll => ScoreFunc::SoftmaxAll,
        fb::ScoreFunc::Sigmoid => ScoreFunc::Sigmoid,
        o => return invalid(c(&format!("unknown score_func {}", o.0))),
    };
    let bits = map_ops(ctx, WeightBits::from_bits(m.weight_bits().max(0) as usize))?;
    let shared_hidden = if m.shared_hidden_dim() < 0 {
        return invalid(c(&format!("shared_hidden_dim = {} must be >= 0", m.shared_hidden_dim())));
    } else {
        m.shared_hidden_dim() as usize
    };
    let spec = MoeSpec {
        dim: pos(ctx, "dim", m.dim())?,
        hidden: pos(ctx, "hidden_dim", m.hidden_dim())?,
        shared_hidden,
        group: pos(ctx, "group_size", m.group_size())?,
        bits,
        router: RouterConfig {
            num_experts: pos(ctx, "num_experts", m.num_experts())?,
            top_k: pos(ctx, "top_k", m.top_k())?,
            score_func,
            renormalize: m.renormalize(),
            route_scale: m.route_scale(),
        },
        exact: m.exact(),
    };
    map_ops(ctx, spec.validate())?;
    let e = spec.router.num_experts;
    let d = spec.dim;
    let n = MoeFfnNode {
        x: id(&c("x"), m.x())?,
        out: id(&c("out"), m.out())?,
        router_weight: id(&c("router_weight"), m.router_weight())?,
        expert_bias: opt_id(&c("expert_bias"), m.expert_bias())?,
        w13: id(&c("w13"), m.w13())?,
        w13_scales: id(&c("w13_scales"), m.w13_scales())?,
        w2: id(&c("w2"), m.w2())?,
        w2_scales: id(&c("w2_scales"), m.w2_scales())?,
        shared: None,
        spec,
    };
    let sh = [
        opt_id(&c("shared_w13"), m.shared_w13())?,
        opt_id(&c("shared_w13_scales"), m.shared_w13_scales())?,
        opt_id(&c("shared_w2"), m.shared_w2())?,
        opt_id(&c("shared_w2_scales"), m.shared_w2_scales())?,
    ];
    let gate = opt_id(&c("shared_gate"), m.shared_gate())?;
    let shared = match (sh, shared_hidden) {
        ([None, None, None, None], 0) => {
            if gate.is_some() {
                return invalid(c("has shared_gate but no shared expert"));
            }
            None
        }
        ([Some(a), Some(b), Some(cc), Some(dd)], f) if f > 0 => Some(SharedIds { w13: a, w13_scales: b, w2: cc, w2_scales: dd, gate }),
        _ => {
            return invalid(c(&format!(
                "shared expert: shared_hidden_dim = {shared_hidden} needs all four of shared_w13, shared_w13_scales, shared_w2, shared_w2_scales (or none with 0)"
            )))
        }
    };
    expect_act(tensors, ctx, "x", n.x, d)?;
    expect_act(tensors, ctx, "out", n.out, d)?;
    expect_const(tensors, ctx, "router_weight", n.router_weight, fb::DType::F32, &[e, d])?;
    if let Some(b) = n.expert_bias {
        expect_const(tensors, ctx, "expert_bias", b, fb::DType::F32, &[e])?;
    }
    let (s13, s2) = (map_ops(ctx, spec.w13_spec())?, map_ops(ctx, spec.w2_spec())?);
    expect_const(tensors, ctx, "w13", n.w13, fb::DType::U8, &[e, s13.data_bytes()])?;
    expect_const(tensors, ctx, "w13_scales", n.w13_scales, fb::DType::F32, &[e, s13.scale_count()])?;
    expect_const(tensors, ctx, "w2", n.w2, fb::DType::U8, &[e, s2.data_bytes()])?;
    expect_const(tensors, ctx, "w2_scales", n.w2_scales, fb::DType::F32, &[e, s2.scale_count()])?;
    if let Some(s) = &shared {
        let (a, b) = (map_ops(ctx, spec.shared_w13_spec())?, map_ops(ctx, spec.shared_w2_spec())?);
        expect_const(tensors, ctx, "shared_w13", s.w13, fb::DType::U8, &[a.data_bytes()])?;
        expect_const(tensors, ctx, "shared_w13_scales", s.w13_scales, fb::DType::F32, &[a.scale_count()])?;
        expect_const(tensors, ctx, "shared_w2", s.w2, fb::DType::U8, &[b.data_bytes()])?;
        expect_const(tensors, ctx, "shared_w2_scales", s.w2_scales, fb::DType::F32, &[b.scale_count()])?;
        if let Some(g) = s.gate {
            if expect_const(tensors, ctx, "shared_gate", g, fb::DType::F32, &[d]).is_err() {
                expect_const(tensors, ctx, "shared_gate", g, fb::DType::F32, &[1, d])?;
            }
        }
    }
    Ok(MoeFfnNode { shared, ..n })
}

fn check_linear(
    tensors: &[TensorDesc],
    l: &fb::Int4Linear<'_>,
    ctx: &dyn Fn(&str) -> String,
    id: &IdFn<'_>,
    opt_id: &OptIdFn<'_>,
) -> Result<LinearNode> {
    let c = |f: &str| ctx(f);
    let bits = map_ops(ctx, WeightBits::from_bits(l.weight_bits().max(0) as usize))?;
    let spec = map_ops(
        ctx,
        MatrixSpec::new(pos(ctx, "out_features", l.out_features())?, pos(ctx, "in_features", l.in_features())?, pos(ctx, "group_size", l.group_size())?, bits),
    )?;
    let n = LinearNode {
        x: id(&c("x"), l.x())?,
        out: id(&c("out"), l.out())?,
        weight: id(&c("weight"), l.weight())?,
        scales: id(&c("scales"), l.scales())?,
        bias: opt_id(&c("bias"), l.bias())?,
        spec,
        exact: l.exact(),
    };
    expect_act(tensors, ctx, "x", n.x, spec.k)?;
    expect_act(tensors, ctx, "out", n.out, spec.n)?;
    expect_const(tensors, ctx, "weight", n.weight, fb::DType::U8, &[spec.data_bytes()])?;
    expect_const(tensors, ctx, "scales", n.scales, fb::DType::F32, &[spec.scale_count()])?;
    if let Some(b) = n.bias {
        expect_const(tensors, ctx, "bias", b, fb::DType::F32, &[spec.n])?;
    }
    Ok(n)
}
