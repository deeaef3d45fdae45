//! Parsing and validation of a delegate blob. Nothing here panics or indexes out of bounds on any
//! input: every id, offset, size and attribute is checked, and a failure is a [`BlobError`] that
//! names the field.

use crate::{dtype_size, fb, invalid, BlobError, Result, DATA_ALIGN, FORMAT_VERSION, HEADER_SIZE, MAGIC, MIN_FORMAT_VERSION};
use mobilemoe_ops::decoder::{AttentionSpec, KvDType, RopeStyle};
use mobilemoe_ops::{GroupLimit, GroupScore, MatrixSpec, MoeSpec, RouterConfig, ScoreFunc, WeightBits};
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

/// A validated `Embedding` node (rows of the packed `[vocab, dim]` matrix).
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingNode {
    pub tokens: usize,
    pub out: usize,
    pub weight: usize,
    pub scales: usize,
    pub spec: MatrixSpec,
}

/// A validated `RmsNorm` node.
#[derive(Clone, Debug, PartialEq)]
pub struct RmsNormNode {
    pub x: usize,
    pub out: usize,
    pub weight: usize,
    pub dim: usize,
    pub eps: f32,
}

/// A validated `Add` node.
#[derive(Clone, Debug, PartialEq)]
pub struct AddNode {
    pub a: usize,
    pub b: usize,
    pub out: usize,
    pub dim: usize,
}

/// A validated `Attention` node (the delegate allocates its KV cache at init).
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionNode {
    pub x: usize,
    pub input_pos: usize,
    pub out: usize,
    pub wqkv: usize,
    pub wqkv_scales: usize,
    pub wo: usize,
    pub wo_scales: usize,
    pub rope_cos: usize,
    pub rope_sin: usize,
    pub spec: AttentionSpec,
    pub qkv_spec: MatrixSpec,
    pub wo_spec: MatrixSpec,
    pub kv: KvDType,
}

/// A validated `SwigluFfn` node.
#[derive(Clone, Debug, PartialEq)]
pub struct SwigluNode {
    pub x: usize,
    pub out: usize,
    pub w13: usize,
    pub w13_scales: usize,
    pub w2: usize,
    pub w2_scales: usize,
    pub w13_spec: MatrixSpec,
    pub w2_spec: MatrixSpec,
    pub exact: bool,
}

/// A validated `LmHead` node.
#[derive(Clone, Debug, PartialEq)]
pub struct LmHeadNode {
    pub x: usize,
    pub out: usize,
    pub norm_weight: usize,
    pub weight: usize,
    pub scales: usize,
    pub eps: f32,
    pub spec: MatrixSpec,
    pub exact: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeOp {
    MoeFfn(MoeFfnNode),
    Int4Linear(LinearNode),
    Embedding(EmbeddingNode),
    RmsNorm(RmsNormNode),
    Add(AddNode),
    Attention(AttentionNode),
    SwigluFfn(SwigluNode),
    LmHead(LmHeadNode),
}

impl NodeOp {
    pub fn kind(&self) -> &'static str {
        match self {
            NodeOp::MoeFfn(_) => "MoeFfn",
            NodeOp::Int4Linear(_) => "Int4Linear",
            NodeOp::Embedding(_) => "Embedding",
            NodeOp::RmsNorm(_) => "RmsNorm",
            NodeOp::Add(_) => "Add",
            NodeOp::Attention(_) => "Attention",
            NodeOp::SwigluFfn(_) => "SwigluFfn",
            NodeOp::LmHead(_) => "LmHead",
        }
    }
    /// The primary activation input (`tokens` for Embedding, `a` for Add).
    pub fn x(&self) -> usize {
        match self {
            NodeOp::MoeFfn(n) => n.x,
            NodeOp::Int4Linear(n) => n.x,
            NodeOp::Embedding(n) => n.tokens,
            NodeOp::RmsNorm(n) => n.x,
            NodeOp::Add(n) => n.a,
            NodeOp::Attention(n) => n.x,
            NodeOp::SwigluFfn(n) => n.x,
            NodeOp::LmHead(n) => n.x,
        }
    }
    /// Every activation the node reads, the primary one first.
    pub fn inputs(&self) -> Vec<usize> {
        match self {
            NodeOp::Add(n) => vec![n.a, n.b],
            NodeOp::Attention(n) => vec![n.x, n.input_pos],
            o => vec![o.x()],
        }
    }
    pub fn out(&self) -> usize {
        match self {
            NodeOp::MoeFfn(n) => n.out,
            NodeOp::Int4Linear(n) => n.out,
            NodeOp::Embedding(n) => n.out,
            NodeOp::RmsNorm(n) => n.out,
            NodeOp::Add(n) => n.out,
            NodeOp::Attention(n) => n.out,
            NodeOp::SwigluFfn(n) => n.out,
            NodeOp::LmHead(n) => n.out,
        }
    }
    /// Width of the output's last dimension.
    pub fn out_features(&self) -> usize {
        match self {
            NodeOp::MoeFfn(n) => n.spec.dim,
            NodeOp::Int4Linear(n) => n.spec.n,
            NodeOp::Embedding(n) => n.spec.k,
            NodeOp::RmsNorm(n) => n.dim,
            NodeOp::Add(n) => n.dim,
            NodeOp::Attention(n) => n.spec.dim,
            NodeOp::SwigluFfn(n) => n.w2_spec.n,
            NodeOp::LmHead(n) => n.spec.n,
        }
    }
    /// Width of the primary input's last dimension (1 for Embedding's token ids, per token).
    pub fn in_features(&self) -> usize {
        match self {
            NodeOp::MoeFfn(n) => n.spec.dim,
            NodeOp::Int4Linear(n) => n.spec.k,
            NodeOp::Embedding(_) => 1,
            NodeOp::RmsNorm(n) => n.dim,
            NodeOp::Add(n) => n.dim,
            NodeOp::Attention(n) => n.spec.dim,
            NodeOp::SwigluFfn(n) => n.w13_spec.k,
            NodeOp::LmHead(n) => n.spec.k,
        }
    }
    /// Output shape for the primary input's shape (`None` if the input shape is unusable).
    pub fn out_shape(&self, x: &[i64]) -> Option<Vec<i64>> {
        let mut o = x.to_vec();
        match self {
            NodeOp::Embedding(n) => o.push(n.spec.k as i64),
            NodeOp::LmHead(n) => {
                if o.len() < 2 {
                    return None;
                }
                o.remove(o.len() - 2);
                *o.last_mut()? = n.spec.n as i64;
            }
            op => *o.last_mut()? = op.out_features() as i64,
        }
        Some(o)
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
    if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&h.version) {
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
                return Err(BlobError::Header(format!("data offset {} overlaps the flatbuffer (which ends at {end})", h.data_offset)));
            }
        }
        _ => return Err(BlobError::Header(format!("flatbuffer size {} out of range (blob is {len} bytes)", h.flatbuffer_size))),
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
        return Err(BlobError::Flatbuffer(
            "missing file identifier \"MMOE\" (finish the flatbuffer with file_identifier=b\"MMOE\")".into(),
        ));
    }
    let opts = flatbuffers::VerifierOptions { max_tables: 10_000_000, max_apparent_size: 1 << 31, ..Default::default() };
    fb::root_as_graph_with_opts(&opts, fbuf).map_err(|e| BlobError::Flatbuffer(e.to_string()))
}

/// Parse and validate a whole blob: the header, the flatbuffer, then the graph in the order of the
/// steps below (the first failing check names the error).
pub fn parse(blob: &[u8]) -> Result<Graph> {
    let header = parse_header(blob)?;
    let root = flatbuffer_root(blob, &header)?;
    check_graph_version(&root, &header)?;
    let segments = read_segments(&root, &header, blob.len())?;
    let tensors = read_tensors(&root, &segments, header.version)?;
    let ids = TensorIds(tensors.len());
    let (inputs, outputs) = (read_id_list(&ids, "graph input", root.inputs())?, read_id_list(&ids, "graph output", root.outputs())?);
    let mut defined = check_graph_inputs(&tensors, &inputs)?;
    if outputs.is_empty() {
        return invalid("the graph has no outputs");
    }
    let nodes = read_nodes(&root, &tensors, &ids, header.version, &mut defined)?;
    check_graph_outputs(&outputs, &inputs, &defined)?;
    Ok(Graph { header, tensors, nodes, inputs, outputs, segments, blob_len: blob.len() })
}

/// The flatbuffer's own version must repeat the header's.
fn check_graph_version(root: &fb::Graph<'_>, header: &Header) -> Result<()> {
    if root.version() != header.version {
        return invalid(format!("graph version {} differs from the header's {}", root.version(), header.version));
    }
    Ok(())
}

/// Absolute byte ranges of the segments: aligned offsets inside the data area.
fn read_segments(root: &fb::Graph<'_>, header: &Header, blob_len: usize) -> Result<Vec<Range<usize>>> {
    let data_off = header.data_offset as usize;
    let data_len = blob_len - data_off;
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
    Ok(segments)
}

fn read_tensors(root: &fb::Graph<'_>, segments: &[Range<usize>], version: u32) -> Result<Vec<TensorDesc>> {
    root.tensors().iter().flatten().enumerate().map(|(i, t)| read_tensor(i, &t, segments, version)).collect()
}

/// One tensor: a known dtype (F16/BF16 from version 3), a valid shape, and for a constant a segment
/// whose size is exactly the shape's bytes.
fn read_tensor(i: usize, t: &fb::Tensor<'_>, segments: &[Range<usize>], version: u32) -> Result<TensorDesc> {
    let dtype = t.dtype();
    let Some(esize) = dtype_size(dtype) else {
        return invalid(format!("tensor {i}: unknown dtype {}", dtype.0));
    };
    if matches!(dtype, fb::DType::F16 | fb::DType::BF16) && version < 3 {
        return invalid(format!("tensor {i}: dtype {dtype:?} needs format version 3 (blob is version {version})"));
    }
    let shape: Vec<i64> = t.shape().map(|s| s.iter().collect()).unwrap_or_default();
    check_shape(i, t, &shape)?;
    let data = constant_range(i, t, &shape, esize, segments)?;
    if data.is_none() && shape.is_empty() {
        return invalid(format!("tensor {i}: an activation needs rank >= 1"));
    }
    Ok(TensorDesc { dtype, shape, dynamic_leading: t.dynamic_leading(), data })
}

/// Dimensions are >= 0, except -1 for a varying leading dimension of a `dynamic_leading` activation
/// (token ids and positions, I64, may vary in their last dimension too).
fn check_shape(i: usize, t: &fb::Tensor<'_>, shape: &[i64]) -> Result<()> {
    for (k, &d) in shape.iter().enumerate() {
        let varying_ok = d == -1 && t.dynamic_leading() && t.segment() == -1 && (k + 1 < shape.len() || t.dtype() == fb::DType::I64);
        if d < 0 && !varying_ok {
            return invalid(format!("tensor {i}: invalid dimension {d} in shape {shape:?}"));
        }
    }
    Ok(())
}

/// A constant's byte range (segment -1: an activation, `None`).
fn constant_range(i: usize, t: &fb::Tensor<'_>, shape: &[i64], esize: usize, segments: &[Range<usize>]) -> Result<Option<Range<usize>>> {
    match t.segment() {
        -1 => Ok(None),
        s if s >= 0 && (s as usize) < segments.len() => {
            let r = segments[s as usize].clone();
            if t.dynamic_leading() {
                return invalid(format!("tensor {i}: a constant cannot have dynamic_leading"));
            }
            let bytes = shape.iter().try_fold(esize as u64, |acc, &d| acc.checked_mul(d as u64)).filter(|&b| b == r.len() as u64);
            if bytes.is_none() {
                return invalid(format!("tensor {i}: shape {shape:?} x {esize} bytes does not match its segment {s} of {} bytes", r.len()));
            }
            Ok(Some(r))
        }
        s => invalid(format!("tensor {i}: segment index {s} out of range (0..{})", segments.len())),
    }
}

/// Checks tensor ids against the number of tensors.
struct TensorIds(usize);

impl TensorIds {
    fn id(&self, what: &str, v: i32) -> Result<usize> {
        if v >= 0 && (v as usize) < self.0 {
            Ok(v as usize)
        } else {
            invalid(format!("{what}: tensor id {v} out of range (0..{})", self.0))
        }
    }
    /// -1 means "none".
    fn opt(&self, what: &str, v: i32) -> Result<Option<usize>> {
        if v == -1 {
            Ok(None)
        } else {
            self.id(what, v).map(Some)
        }
    }
}

fn read_id_list(ids: &TensorIds, what: &str, list: Option<flatbuffers::Vector<'_, i32>>) -> Result<Vec<usize>> {
    list.iter().flatten().map(|v| ids.id(what, v)).collect()
}

/// Graph inputs are distinct F32 or I64 activations; returns the "defined" mark of every tensor.
fn check_graph_inputs(tensors: &[TensorDesc], inputs: &[usize]) -> Result<Vec<bool>> {
    let mut defined = vec![false; tensors.len()];
    for &i in inputs {
        let t = &tensors[i];
        if t.is_constant() || !(t.dtype == fb::DType::F32 || t.dtype == fb::DType::I64) {
            return invalid(format!("graph input tensor {i} must be an F32 or I64 activation"));
        }
        if defined[i] {
            return invalid(format!("tensor {i} is listed twice as a graph input"));
        }
        defined[i] = true;
    }
    Ok(defined)
}

/// Every node in order: its op checked, then its data flow against what earlier nodes wrote.
fn read_nodes(root: &fb::Graph<'_>, tensors: &[TensorDesc], ids: &TensorIds, version: u32, defined: &mut [bool]) -> Result<Vec<Node>> {
    let mut nodes = Vec::new();
    for (ni, n) in root.nodes().iter().flatten().enumerate() {
        let name = n.name().unwrap_or("").to_string();
        let ctx = |f: &str| format!("node {ni} ({name}) {f}");
        let op = read_node_op(&n, tensors, ids, version, &ctx)?;
        check_data_flow(&op, tensors, defined, &ctx)?;
        defined[op.out()] = true;
        nodes.push(Node { name, op });
    }
    Ok(nodes)
}

/// The op table of `kind`, present as the node's union says.
fn op_table<T>(table: Option<T>, ctx: &dyn Fn(&str) -> String, kind: &str) -> Result<T> {
    table.ok_or_else(|| BlobError::Invalid(ctx(&format!("has no {kind} table"))))
}

/// Decode and check one node's op (the decoder ops need format version 2).
fn read_node_op(n: &fb::Node<'_>, tensors: &[TensorDesc], ids: &TensorIds, version: u32, ctx: &dyn Fn(&str) -> String) -> Result<NodeOp> {
    Ok(match n.op_type() {
        fb::Op::MoeFfn => NodeOp::MoeFfn(check_moe(tensors, &op_table(n.op_as_moe_ffn(), ctx, "MoeFfn")?, ctx, ids, version)?),
        fb::Op::Int4Linear => NodeOp::Int4Linear(check_linear(tensors, &op_table(n.op_as_int_4_linear(), ctx, "Int4Linear")?, ctx, ids)?),
        fb::Op::Embedding | fb::Op::RmsNorm | fb::Op::Add | fb::Op::Attention | fb::Op::SwigluFfn | fb::Op::LmHead if version < 2 => {
            return invalid(ctx(&format!("op type {} needs format version 2 (blob is version {version})", n.op_type().0)))
        }
        fb::Op::Embedding => NodeOp::Embedding(check_embedding(tensors, &op_table(n.op_as_embedding(), ctx, "Embedding")?, ctx, ids)?),
        fb::Op::RmsNorm => NodeOp::RmsNorm(check_rms_norm(tensors, &op_table(n.op_as_rms_norm(), ctx, "RmsNorm")?, ctx, ids)?),
        fb::Op::Add => NodeOp::Add(check_add(tensors, &op_table(n.op_as_add(), ctx, "Add")?, ctx, ids)?),
        fb::Op::Attention => {
            NodeOp::Attention(check_attention(tensors, &op_table(n.op_as_attention(), ctx, "Attention")?, ctx, ids, version)?)
        }
        fb::Op::SwigluFfn => NodeOp::SwigluFfn(check_swiglu(tensors, &op_table(n.op_as_swiglu_ffn(), ctx, "SwigluFfn")?, ctx, ids)?),
        fb::Op::LmHead => NodeOp::LmHead(check_lm_head(tensors, &op_table(n.op_as_lm_head(), ctx, "LmHead")?, ctx, ids)?),
        other => return invalid(ctx(&format!("has unknown op type {}", other.0))),
    })
}

/// A node writes a tensor nothing wrote before, reads only written activations, and its output's
/// rank (and, for static shapes, leading dimensions) follows from its input's.
fn check_data_flow(op: &NodeOp, tensors: &[TensorDesc], defined: &[bool], ctx: &dyn Fn(&str) -> String) -> Result<()> {
    let out = op.out();
    if defined[out] {
        return invalid(ctx(&format!("writes tensor {out}, which is a graph input or already written")));
    }
    for x in op.inputs() {
        if !defined[x] {
            return invalid(ctx(&format!("reads activation {x} before anything writes it")));
        }
    }
    let (xt, ot) = (&tensors[op.x()], &tensors[out]);
    let want_rank = match op {
        NodeOp::Embedding(_) => xt.shape.len() + 1,
        NodeOp::LmHead(_) => xt.shape.len().saturating_sub(1),
        _ => xt.shape.len(),
    };
    if ot.shape.len() != want_rank || want_rank == 0 {
        return invalid(ctx(&format!("output rank {} does not fit input rank {}", ot.shape.len(), xt.shape.len())));
    }
    if !xt.dynamic_leading && !ot.dynamic_leading && !matches!(op, NodeOp::Embedding(_) | NodeOp::LmHead(_)) {
        let r = xt.shape.len() - 1;
        if xt.shape[..r] != ot.shape[..r] {
            return invalid(ctx(&format!("output shape {:?} does not match input shape {:?}", ot.shape, xt.shape)));
        }
    }
    Ok(())
}

/// Graph outputs are distinct tensors some node wrote.
fn check_graph_outputs(outputs: &[usize], inputs: &[usize], defined: &[bool]) -> Result<()> {
    let mut seen = vec![false; defined.len()];
    for &o in outputs {
        if !defined[o] || inputs.contains(&o) {
            return invalid(format!("graph output tensor {o} is not written by any node"));
        }
        if seen[o] {
            return invalid(format!("tensor {o} is listed twice as a graph output"));
        }
        seen[o] = true;
    }
    Ok(())
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

/// The routing attributes of a MoeFfn node; the version-4 ones (group limit, weight on the input,
/// topk_sigmoid / sparsemixer) are refused in an older blob, whose reader would have ignored them.
fn read_router(m: &fb::MoeFfn<'_>, ctx: &dyn Fn(&str) -> String, version: u32) -> Result<RouterConfig> {
    let score_func = match m.score_func() {
        fb::ScoreFunc::Softmax => ScoreFunc::Softmax,
        fb::ScoreFunc::SoftmaxAll => ScoreFunc::SoftmaxAll,
        fb::ScoreFunc::Sigmoid => ScoreFunc::Sigmoid,
        fb::ScoreFunc::TopkSigmoid => ScoreFunc::TopkSigmoid,
        fb::ScoreFunc::SparseMixer => ScoreFunc::SparseMixer,
        o => return invalid(ctx(&format!("unknown score_func {}", o.0))),
    };
    let group_score = match m.group_score() {
        fb::GroupScore::Max => GroupScore::Max,
        fb::GroupScore::TopTwoSum => GroupScore::TopTwoSum,
        o => return invalid(ctx(&format!("unknown group_score {}", o.0))),
    };
    let v4 = matches!(score_func, ScoreFunc::TopkSigmoid | ScoreFunc::SparseMixer)
        || m.num_groups() != 1
        || m.top_groups() != 1
        || m.group_score() != fb::GroupScore::Max
        || m.weight_input()
        || m.jitter_eps() != 0.0
        || m.renorm_eps() != 0.0
        || m.renorm_min() != f32::MIN_POSITIVE
        || (m.expert_bias() >= 0 && score_func != ScoreFunc::Sigmoid);
    if v4 && version < 4 {
        return invalid(ctx(&format!(
            "routing attributes of format version 4 (score_func {}, groups, weight_input, jitter_eps, renorm_eps/min, a selection bias without sigmoid) in a version {version} blob",
            score_func.name()
        )));
    }
    Ok(RouterConfig {
        num_experts: pos(ctx, "num_experts", m.num_experts())?,
        top_k: pos(ctx, "top_k", m.top_k())?,
        score_func,
        renormalize: m.renormalize(),
        route_scale: m.route_scale(),
        group_limit: GroupLimit {
            groups: pos(ctx, "num_groups", m.num_groups())?,
            top_groups: pos(ctx, "top_groups", m.top_groups())?,
            score: group_score,
        },
        weight_input: m.weight_input(),
        jitter_eps: m.jitter_eps(),
        renorm_eps: m.renorm_eps(),
        renorm_min: m.renorm_min(),
    })
}

fn check_moe(
    tensors: &[TensorDesc],
    m: &fb::MoeFfn<'_>,
    ctx: &dyn Fn(&str) -> String,
    ids: &TensorIds,
    version: u32,
) -> Result<MoeFfnNode> {
    let c = |f: &str| ctx(f);
    let router = read_router(m, ctx, version)?;
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
        router,
        exact: m.exact(),
        scales_out: m.expert_scales_out(),
    };
    if spec.scales_out && version < 5 {
        return invalid(c(&format!("expert_scales_out needs format version 5 (blob is version {version})")));
    }
    map_ops(ctx, spec.validate())?;
    let e = spec.router.num_experts;
    let d = spec.dim;
    let n = MoeFfnNode {
        x: ids.id(&c("x"), m.x())?,
        out: ids.id(&c("out"), m.out())?,
        router_weight: ids.id(&c("router_weight"), m.router_weight())?,
        expert_bias: ids.opt(&c("expert_bias"), m.expert_bias())?,
        w13: ids.id(&c("w13"), m.w13())?,
        w13_scales: ids.id(&c("w13_scales"), m.w13_scales())?,
        w2: ids.id(&c("w2"), m.w2())?,
        w2_scales: ids.id(&c("w2_scales"), m.w2_scales())?,
        shared: None,
        spec,
    };
    let sh = [
        ids.opt(&c("shared_w13"), m.shared_w13())?,
        ids.opt(&c("shared_w13_scales"), m.shared_w13_scales())?,
        ids.opt(&c("shared_w2"), m.shared_w2())?,
        ids.opt(&c("shared_w2_scales"), m.shared_w2_scales())?,
    ];
    let gate = ids.opt(&c("shared_gate"), m.shared_gate())?;
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
    expect_const(tensors, ctx, "w2", n.w2, fb::DType::U8, &[e, s2.data_bytes()])?;
    if spec.scales_out {
        // [E, K * N / group]: per expert, one scale per input row and output group
        expect_scales(tensors, ctx, "w13_scales", n.w13_scales, &[e, s13.k * (s13.n / s13.group)])?;
        expect_scales(tensors, ctx, "w2_scales", n.w2_scales, &[e, s2.k * (s2.n / s2.group)])?;
    } else {
        expect_scales(tensors, ctx, "w13_scales", n.w13_scales, &[e, s13.scale_count()])?;
        expect_scales(tensors, ctx, "w2_scales", n.w2_scales, &[e, s2.scale_count()])?;
    }
    if let Some(s) = &shared {
        let (a, b) = (map_ops(ctx, spec.shared_w13_spec())?, map_ops(ctx, spec.shared_w2_spec())?);
        expect_const(tensors, ctx, "shared_w13", s.w13, fb::DType::U8, &[a.data_bytes()])?;
        expect_scales(tensors, ctx, "shared_w13_scales", s.w13_scales, &[a.scale_count()])?;
        expect_const(tensors, ctx, "shared_w2", s.w2, fb::DType::U8, &[b.data_bytes()])?;
        expect_scales(tensors, ctx, "shared_w2_scales", s.w2_scales, &[b.scale_count()])?;
        if let Some(g) = s.gate {
            if expect_const(tensors, ctx, "shared_gate", g, fb::DType::F32, &[d]).is_err() {
                expect_const(tensors, ctx, "shared_gate", g, fb::DType::F32, &[1, d])?;
            }
        }
    }
    Ok(MoeFfnNode { shared, ..n })
}

fn check_linear(tensors: &[TensorDesc], l: &fb::Int4Linear<'_>, ctx: &dyn Fn(&str) -> String, ids: &TensorIds) -> Result<LinearNode> {
    let c = |f: &str| ctx(f);
    let bits = map_ops(ctx, WeightBits::from_bits(l.weight_bits().max(0) as usize))?;
    let spec = map_ops(
        ctx,
        MatrixSpec::new(
            pos(ctx, "out_features", l.out_features())?,
            pos(ctx, "in_features", l.in_features())?,
            pos(ctx, "group_size", l.group_size())?,
            bits,
        ),
    )?;
    let n = LinearNode {
        x: ids.id(&c("x"), l.x())?,
        out: ids.id(&c("out"), l.out())?,
        weight: ids.id(&c("weight"), l.weight())?,
        scales: ids.id(&c("scales"), l.scales())?,
        bias: ids.opt(&c("bias"), l.bias())?,
        spec,
        exact: l.exact(),
    };
    expect_act(tensors, ctx, "x", n.x, spec.k)?;
    expect_act(tensors, ctx, "out", n.out, spec.n)?;
    expect_const(tensors, ctx, "weight", n.weight, fb::DType::U8, &[spec.data_bytes()])?;
    expect_scales(tensors, ctx, "scales", n.scales, &[spec.scale_count()])?;
    if let Some(b) = n.bias {
        expect_const(tensors, ctx, "bias", b, fb::DType::F32, &[spec.n])?;
    }
    Ok(n)
}

fn spec_of(ctx: &dyn Fn(&str) -> String, what: &str, n: i32, k: i32, group: i32, bits: i32) -> Result<MatrixSpec> {
    let bits = map_ops(ctx, WeightBits::from_bits(bits.max(0) as usize))?;
    map_ops(
        ctx,
        MatrixSpec::new(
            pos(ctx, &format!("{what} rows"), n)?,
            pos(ctx, &format!("{what} columns"), k)?,
            pos(ctx, "group_size", group)?,
            bits,
        ),
    )
}

fn expect_packed(
    tensors: &[TensorDesc],
    ctx: &dyn Fn(&str) -> String,
    what: &str,
    data: usize,
    scales: usize,
    spec: MatrixSpec,
) -> Result<()> {
    expect_const(tensors, ctx, what, data, fb::DType::U8, &[spec.data_bytes()])?;
    expect_scales(tensors, ctx, &format!("{what}_scales"), scales, &[spec.scale_count()])
}

/// Per-group weight scales: a constant of dtype F32, F16 or BF16 (format version 3) and `shape`.
fn expect_scales(tensors: &[TensorDesc], ctx: &dyn Fn(&str) -> String, what: &str, id: usize, shape: &[usize]) -> Result<()> {
    let dtype = match tensors[id].dtype {
        d @ (fb::DType::F16 | fb::DType::BF16) => d,
        _ => fb::DType::F32,
    };
    expect_const(tensors, ctx, what, id, dtype, shape)
}

fn expect_i64_act(tensors: &[TensorDesc], ctx: &dyn Fn(&str) -> String, what: &str, id: usize) -> Result<()> {
    let t = &tensors[id];
    if t.is_constant() || t.dtype != fb::DType::I64 {
        return invalid(ctx(&format!("{what} (tensor {id}) must be an I64 activation")));
    }
    Ok(())
}

fn finite_eps(ctx: &dyn Fn(&str) -> String, eps: f32) -> Result<f32> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(eps)
    } else {
        invalid(ctx(&format!("attribute eps = {eps} must be finite and >= 0")))
    }
}

fn check_embedding(tensors: &[TensorDesc], e: &fb::Embedding<'_>, ctx: &dyn Fn(&str) -> String, ids: &TensorIds) -> Result<EmbeddingNode> {
    let spec = spec_of(ctx, "embedding", e.vocab_size(), e.dim(), e.group_size(), e.weight_bits())?;
    let n = EmbeddingNode {
        tokens: ids.id(&ctx("tokens"), e.tokens())?,
        out: ids.id(&ctx("out"), e.out())?,
        weight: ids.id(&ctx("weight"), e.weight())?,
        scales: ids.id(&ctx("scales"), e.scales())?,
        spec,
    };
    expect_i64_act(tensors, ctx, "tokens", n.tokens)?;
    expect_act(tensors, ctx, "out", n.out, spec.k)?;
    expect_packed(tensors, ctx, "weight", n.weight, n.scales, spec)?;
    Ok(n)
}

fn check_rms_norm(tensors: &[TensorDesc], r: &fb::RmsNorm<'_>, ctx: &dyn Fn(&str) -> String, ids: &TensorIds) -> Result<RmsNormNode> {
    let dim = pos(ctx, "dim", r.dim())?;
    let n = RmsNormNode {
        x: ids.id(&ctx("x"), r.x())?,
        out: ids.id(&ctx("out"), r.out())?,
        weight: ids.id(&ctx("weight"), r.weight())?,
        dim,
        eps: finite_eps(ctx, r.eps())?,
    };
    expect_act(tensors, ctx, "x", n.x, dim)?;
    expect_act(tensors, ctx, "out", n.out, dim)?;
    expect_const(tensors, ctx, "weight", n.weight, fb::DType::F32, &[dim])?;
    Ok(n)
}

fn check_add(tensors: &[TensorDesc], a: &fb::Add<'_>, ctx: &dyn Fn(&str) -> String, ids: &TensorIds) -> Result<AddNode> {
    let (ai, bi, oi) = (ids.id(&ctx("a"), a.a())?, ids.id(&ctx("b"), a.b())?, ids.id(&ctx("out"), a.out())?);
    let dim = tensors[ai].last_dim().unwrap_or(0);
    if dim <= 0 {
        return invalid(ctx(&format!("a (tensor {ai}) needs a positive last dimension")));
    }
    let dim = dim as usize;
    expect_act(tensors, ctx, "a", ai, dim)?;
    expect_act(tensors, ctx, "b", bi, dim)?;
    expect_act(tensors, ctx, "out", oi, dim)?;
    if tensors[ai].shape.len() != tensors[bi].shape.len() {
        return invalid(ctx("a and b differ in rank"));
    }
    Ok(AddNode { a: ai, b: bi, out: oi, dim })
}

fn check_attention(
    tensors: &[TensorDesc],
    a: &fb::Attention<'_>,
    ctx: &dyn Fn(&str) -> String,
    ids: &TensorIds,
    version: u32,
) -> Result<AttentionNode> {
    if a.qk_norm() && version < 5 {
        return invalid(ctx(&format!("qk_norm needs format version 5 (blob is version {version})")));
    }
    let qk_norm = if a.qk_norm() { Some(finite_eps(ctx, a.qk_norm_eps())?) } else { None };
    if a.window() != 0 && version < 5 {
        return invalid(ctx(&format!("window needs format version 5 (blob is version {version})")));
    }
    if a.window() < 0 {
        return invalid(ctx(&format!("window = {} must be >= 0", a.window())));
    }
    let rope = match a.rope_style() {
        fb::RopeStyle::HalfSplit => RopeStyle::HalfSplit,
        fb::RopeStyle::Interleaved => RopeStyle::Interleaved,
        o => return invalid(ctx(&format!("unknown rope_style {}", o.0))),
    };
    let kv = match a.kv_cache() {
        fb::KvCacheType::F16 => KvDType::F16,
        fb::KvCacheType::F32 => KvDType::F32,
        o => return invalid(ctx(&format!("unknown kv_cache type {}", o.0))),
    };
    let spec = AttentionSpec {
        dim: pos(ctx, "dim", a.dim())?,
        n_heads: pos(ctx, "n_heads", a.n_heads())?,
        n_kv_heads: pos(ctx, "n_kv_heads", a.n_kv_heads())?,
        head_dim: pos(ctx, "head_dim", a.head_dim())?,
        max_seq_len: pos(ctx, "max_seq_len", a.max_seq_len())?,
        rope,
        exact: a.exact(),
        qk_norm,
        window: a.window() as usize,
    };
    map_ops(ctx, spec.validate())?;
    let qkv_spec = spec_of(ctx, "wqkv", i32::try_from(spec.qkv_width()).unwrap_or(-1), a.dim(), a.group_size(), a.weight_bits())?;
    let wo_spec = spec_of(ctx, "wo", a.dim(), i32::try_from(spec.q_width()).unwrap_or(-1), a.group_size(), a.weight_bits())?;
    let n = AttentionNode {
        x: ids.id(&ctx("x"), a.x())?,
        input_pos: ids.id(&ctx("input_pos"), a.input_pos())?,
        out: ids.id(&ctx("out"), a.out())?,
        wqkv: ids.id(&ctx("wqkv"), a.wqkv())?,
        wqkv_scales: ids.id(&ctx("wqkv_scales"), a.wqkv_scales())?,
        wo: ids.id(&ctx("wo"), a.wo())?,
        wo_scales: ids.id(&ctx("wo_scales"), a.wo_scales())?,
        rope_cos: ids.id(&ctx("rope_cos"), a.rope_cos())?,
        rope_sin: ids.id(&ctx("rope_sin"), a.rope_sin())?,
        spec,
        qkv_spec,
        wo_spec,
        kv,
    };
    expect_act(tensors, ctx, "x", n.x, spec.dim)?;
    expect_act(tensors, ctx, "out", n.out, spec.dim)?;
    expect_i64_act(tensors, ctx, "input_pos", n.input_pos)?;
    expect_packed(tensors, ctx, "wqkv", n.wqkv, n.wqkv_scales, qkv_spec)?;
    expect_packed(tensors, ctx, "wo", n.wo, n.wo_scales, wo_spec)?;
    let half = spec.head_dim / 2;
    expect_const(tensors, ctx, "rope_cos", n.rope_cos, fb::DType::F32, &[spec.max_seq_len, half])?;
    expect_const(tensors, ctx, "rope_sin", n.rope_sin, fb::DType::F32, &[spec.max_seq_len, half])?;
    Ok(n)
}

fn check_swiglu(tensors: &[TensorDesc], f: &fb::SwigluFfn<'_>, ctx: &dyn Fn(&str) -> String, ids: &TensorIds) -> Result<SwigluNode> {
    let hidden = pos(ctx, "hidden_dim", f.hidden_dim())?;
    let w13_spec = spec_of(ctx, "w13", i32::try_from(2 * hidden).unwrap_or(-1), f.dim(), f.group_size(), f.weight_bits())?;
    let w2_spec = spec_of(ctx, "w2", f.dim(), f.hidden_dim(), f.group_size(), f.weight_bits())?;
    let n = SwigluNode {
        x: ids.id(&ctx("x"), f.x())?,
        out: ids.id(&ctx("out"), f.out())?,
        w13: ids.id(&ctx("w13"), f.w13())?,
        w13_scales: ids.id(&ctx("w13_scales"), f.w13_scales())?,
        w2: ids.id(&ctx("w2"), f.w2())?,
        w2_scales: ids.id(&ctx("w2_scales"), f.w2_scales())?,
        w13_spec,
        w2_spec,
        exact: f.exact(),
    };
    expect_act(tensors, ctx, "x", n.x, w13_spec.k)?;
    expect_act(tensors, ctx, "out", n.out, w2_spec.n)?;
    expect_packed(tensors, ctx, "w13", n.w13, n.w13_scales, w13_spec)?;
    expect_packed(tensors, ctx, "w2", n.w2, n.w2_scales, w2_spec)?;
    Ok(n)
}

fn check_lm_head(tensors: &[TensorDesc], h: &fb::LmHead<'_>, ctx: &dyn Fn(&str) -> String, ids: &TensorIds) -> Result<LmHeadNode> {
    let spec = spec_of(ctx, "lm_head", h.vocab_size(), h.dim(), h.group_size(), h.weight_bits())?;
    let n = LmHeadNode {
        x: ids.id(&ctx("x"), h.x())?,
        out: ids.id(&ctx("out"), h.out())?,
        norm_weight: ids.id(&ctx("norm_weight"), h.norm_weight())?,
        weight: ids.id(&ctx("weight"), h.weight())?,
        scales: ids.id(&ctx("scales"), h.scales())?,
        eps: finite_eps(ctx, h.eps())?,
        spec,
        exact: h.exact(),
    };
    expect_act(tensors, ctx, "x", n.x, spec.k)?;
    expect_act(tensors, ctx, "out", n.out, spec.n)?;
    expect_const(tensors, ctx, "norm_weight", n.norm_weight, fb::DType::F32, &[spec.k])?;
    expect_packed(tensors, ctx, "weight", n.weight, n.scales, spec)?;
    Ok(n)
}
