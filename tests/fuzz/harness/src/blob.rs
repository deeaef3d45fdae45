//! Harnesses for the delegate blob reader (`mobilemoe_schema::parse`), the program built from it
//! (`backend/src/delegate.rs`: init + execute), and the `.pte` reader (`runner/src/pte.rs`).
//!
//! Properties checked for every input:
//! - `parse` returns `Ok` or a `BlobError`, never panics; on `Ok`, every constant range lies in the
//!   blob, every id is in range, and constant sizes match the node's `MatrixSpec`;
//! - a blob that `parse` accepts builds a `Delegate`, and whenever shape inference accepts the
//!   declared input shapes, `execute` succeeds (the validator and the ops agree);
//! - wrong input counts/shapes/lengths at execute time are typed errors.

#[cfg(feature = "backend")]
use crate::delegate::Delegate;
use crate::gen::{FloatFill, Rng, Special};
use arbitrary::{Arbitrary, Unstructured};
use mobilemoe_ops::{MatrixSpec, MoeSpec, OwnedScales, PackedMatrix, PackedRef, RouterConfig, ScaleType, ScoreFunc, WeightBits};
use mobilemoe_schema::fb;
use mobilemoe_schema::read::NodeOp;
use mobilemoe_schema::write::{BlobBuilder, MoeLayerWeights, RawGraph, RawNode, RawOp};

fn numel(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| if d < 0 { None } else { a.checked_mul(d as usize) })
}

/// Parse; on success check the graph's invariants and run it.
pub fn check_blob(blob: &[u8]) {
    let Ok(g) = mobilemoe_schema::parse(blob) else { return };
    assert_eq!(g.blob_len, blob.len());
    for r in &g.segments {
        assert!(r.start <= r.end && r.end <= blob.len(), "segment {r:?} outside blob");
        assert_eq!((r.start - g.header.data_offset as usize) % 64, 0);
    }
    for (i, t) in g.tensors.iter().enumerate() {
        if let Some(r) = &t.data {
            let c = g.constant(blob, i).expect("constant in range");
            assert_eq!(c.len(), r.len());
            assert_eq!(Some(c.len()), numel(&t.shape).and_then(|n| n.checked_mul(mobilemoe_schema::dtype_size(t.dtype).unwrap())));
        } else {
            assert!(!t.shape.is_empty());
        }
    }
    for n in &g.nodes {
        assert!(n.op.x() < g.tensors.len() && n.op.out() < g.tensors.len());
        match &n.op {
            NodeOp::MoeFfn(m) => {
                m.spec.validate().expect("parser accepted an invalid MoeSpec");
                let s13 = m.spec.w13_spec().unwrap();
                let e = m.spec.router.num_experts;
                assert_eq!(g.tensors[m.w13].data.as_ref().unwrap().len(), e * s13.data_bytes());
            }
            NodeOp::Int4Linear(l) => {
                assert_eq!(g.tensors[l.weight].data.as_ref().unwrap().len(), l.spec.data_bytes());
            }
            // The decoder ops (embedding, norm, attention, ...): covered by parse + run_delegate.
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }
    if g.weight_bytes() > 8 << 20 {
        return;
    }
    #[cfg(feature = "backend")]
    {
        let d = Delegate::from_vec(blob.to_vec()).expect("parse accepted the blob, so init must succeed");
        run_delegate(&d, &g, 0x5EED);
    }
}

#[cfg(feature = "backend")]
/// Execute `d` with the declared input shapes (and with 0 and 3 tokens for dynamic inputs), plus a
/// few malformed calls that must fail cleanly.
pub fn run_delegate(d: &Delegate, g: &mobilemoe_schema::Graph, seed: u64) {
    let mut rng = Rng(seed);
    for tokens in [None, Some(0i64), Some(3)] {
        let shapes: Vec<Vec<i64>> = g
            .inputs
            .iter()
            .map(|&i| {
                let t = &g.tensors[i];
                let mut s = t.shape.clone();
                if let (Some(tok), true) = (tokens, t.dynamic_leading) {
                    let r = s.len();
                    for v in &mut s[..r - 1] {
                        *v = 1;
                    }
                    s[0] = tok;
                }
                // token ids / positions (I64) vary in their last dimension too
                if t.dtype == mobilemoe_schema::fb::DType::I64 {
                    let r = s.len();
                    if let Some(last) = s.last_mut() {
                        if *last < 0 || tokens.is_some() {
                            *last = tokens.unwrap_or(2);
                        }
                    }
                    if r >= 2 {
                        s[0] = 1;
                    }
                }
                s
            })
            .collect();
        if shapes.iter().any(|s| numel(s).is_none_or(|n| n > 1 << 16)) {
            continue;
        }
        let srefs: Vec<&[i64]> = shapes.iter().map(|s| s.as_slice()).collect();
        let Ok(oshapes) = d.output_shapes(&srefs) else { continue };
        if oshapes.iter().any(|s| numel(s).is_none_or(|n| n > 1 << 18)) {
            continue;
        }
        let has_int = g.inputs.iter().any(|&i| g.tensors[i].dtype == mobilemoe_schema::fb::DType::I64);
        if has_int {
            // A whole-decoder graph: token ids 0/1 and positions 0..n (valid for any vocabulary >= 2
            // and cache >= n); the call may still fail cleanly (e.g. a cache shorter than n), but
            // must not panic or crash.
            let ints: Vec<Vec<i64>> = shapes.iter().map(|s| (0..numel(s).unwrap() as i64).map(|v| v % 2).collect()).collect();
            let xs: Vec<Vec<f32>> = shapes.iter().map(|s| (0..numel(s).unwrap()).map(|_| rng.f32()).collect()).collect();
            let inputs: Vec<(mobilemoe_executorch::delegate::Input<'_>, &[i64])> = g
                .inputs
                .iter()
                .enumerate()
                .map(|(k, &i)| {
                    let data = if g.tensors[i].dtype == mobilemoe_schema::fb::DType::I64 {
                        mobilemoe_executorch::delegate::Input::I64(&ints[k])
                    } else {
                        mobilemoe_executorch::delegate::Input::F32(&xs[k])
                    };
                    (data, shapes[k].as_slice())
                })
                .collect();
            let mut outs: Vec<Vec<f32>> = oshapes.iter().map(|s| vec![0f32; numel(s).unwrap()]).collect();
            let mut orefs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            // (token ids / positions may be out of range: a bad argument, never an internal error)
            for _ in 0..2 {
                // the second call: the KV cache advanced state
                if let Err(e) = d.execute_typed(&inputs, &mut orefs) {
                    assert_eq!(e.code, mobilemoe_executorch::ErrorCode::InvalidArgument, "{e}");
                }
            }
            continue;
        }
        let xs: Vec<Vec<f32>> = shapes.iter().map(|s| (0..numel(s).unwrap()).map(|_| rng.f32()).collect()).collect();
        let inputs: Vec<(&[f32], &[i64])> = xs.iter().zip(&shapes).map(|(x, s)| (x.as_slice(), s.as_slice())).collect();
        let mut outs: Vec<Vec<f32>> = oshapes.iter().map(|s| vec![0f32; numel(s).unwrap()]).collect();
        {
            let mut orefs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            let r = d.execute(&inputs, &mut orefs);
            assert!(r.is_ok(), "validated blob failed to execute: {r:?}");
        }
        // Malformed calls: wrong input count, wrong lengths, wrong output size.
        let mut orefs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        assert!(d.execute(&inputs[..inputs.len().saturating_sub(1)], &mut orefs).is_err() || inputs.is_empty());
        if let Some(((x, s), _)) = inputs.first().zip(Some(())) {
            if !x.is_empty() {
                let mut bad = inputs.clone();
                bad[0] = (&x[1..], s);
                assert!(d.execute(&bad, &mut orefs).is_err(), "short input accepted");
            }
            let mut neg = s.to_vec();
            neg[0] = -1;
            let mut bad = inputs.clone();
            bad[0] = (x, &neg);
            assert!(d.execute(&bad, &mut orefs).is_err(), "negative dim accepted");
        }
        let single = orefs.len() == 1;
        if let (true, Some(o)) = (single, orefs.first_mut()) {
            if !o.is_empty() {
                let l = o.len();
                let (a, _) = o.split_at_mut(l - 1);
                let mut short: Vec<&mut [f32]> = vec![a];
                assert!(d.execute(&inputs, &mut short).is_err(), "short output accepted");
            }
        }
    }
}

/// Raw bytes: header, flatbuffer verifier, graph validation, then init + execute.
pub fn blob_parse(data: &[u8]) {
    check_blob(data);
}

// ------------------------------------------------------------------------------------------------
// Valid blobs (seed corpus, templates for structured mutation)

fn rng_vec(r: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| r.f32() * scale).collect()
}

/// A small MoE layer blob (+ optional linear after it), always valid, with every per-group scale
/// tensor stored as `scales` (F32, or format version 3's F16 = 5 / BF16 = 6: the f32 scales
/// rounded to it).
#[allow(clippy::too_many_arguments)]
pub fn make_blob(
    d: usize,
    f: usize,
    e: usize,
    k: usize,
    fs: usize,
    score: ScoreFunc,
    bits: WeightBits,
    bias: bool,
    linear_n: usize,
    dynamic: bool,
    scales: ScaleType,
    seed: u64,
) -> RawGraph {
    let group = 32;
    let mut r = Rng(seed);
    let spec = MoeSpec {
        dim: d,
        hidden: f,
        shared_hidden: fs,
        group,
        bits,
        router: RouterConfig {
            num_experts: e,
            top_k: k,
            score_func: score,
            renormalize: score != ScoreFunc::Softmax,
            route_scale: 1.0,
            ..Default::default()
        },
        exact: seed % 2 == 1,
        scales_out: false,
    };
    let (s13, s2) = (spec.w13_spec().unwrap(), spec.w2_spec().unwrap());
    let (mut w13, mut w13s, mut w2, mut w2s) = (vec![], vec![], vec![], vec![]);
    for _ in 0..e {
        let a = PackedMatrix::quantize(&rng_vec(&mut r, 2 * f * d, 0.1), s13).unwrap();
        w13.extend(a.data);
        w13s.extend(a.scales);
        let b = PackedMatrix::quantize(&rng_vec(&mut r, d * f, 0.1), s2).unwrap();
        w2.extend(b.data);
        w2s.extend(b.scales);
    }
    let router = rng_vec(&mut r, e * d, 0.5);
    let eb = rng_vec(&mut r, e, 0.1);
    let shared = (fs > 0).then(|| {
        (
            PackedMatrix::quantize(&rng_vec(&mut r, 2 * fs * d, 0.1), spec.shared_w13_spec().unwrap()).unwrap(),
            PackedMatrix::quantize(&rng_vec(&mut r, d * fs, 0.1), spec.shared_w2_spec().unwrap()).unwrap(),
            rng_vec(&mut r, d, 0.3),
        )
    });
    let conv = |v: &[f32]| OwnedScales::from_f32(scales, v);
    let (w13s, w2s) = (conv(&w13s), conv(&w2s));
    let shared_scales = shared.as_ref().map(|(a, b, _)| (conv(&a.scales), conv(&b.scales)));
    let mut b = BlobBuilder::new();
    let x = b.activation(&[1, d as i64], dynamic);
    let w = MoeLayerWeights {
        router_w: &router,
        expert_bias: bias.then_some(eb.as_slice()),
        w13: &w13,
        w13_scales: w13s.as_ref(),
        w2: &w2,
        w2_scales: w2s.as_ref(),
        shared: shared
            .as_ref()
            .zip(shared_scales.as_ref())
            .map(|((a, b, g), (sa, sb))| (with_scales(a, sa), with_scales(b, sb), Some(g.as_slice()))),
    };
    let mut out = b.moe_ffn_layer("moe", x, &spec, &w);
    if linear_n > 0 {
        let ls = MatrixSpec::new(linear_n, d, group, bits).unwrap();
        let lw = PackedMatrix::quantize(&rng_vec(&mut r, linear_n * d, 0.1), ls).unwrap();
        let lb = rng_vec(&mut r, linear_n, 0.1);
        let ls = conv(&lw.scales);
        out = b.linear_layer("lm_head", out, &with_scales(&lw, &ls), Some(&lb), false);
    }
    b.set_inputs(&[x]);
    b.set_outputs(&[out]);
    b.into_raw()
}

/// `m` with its scales replaced by `s` (the same values in another element type).
fn with_scales<'a>(m: &'a PackedMatrix, s: &'a OwnedScales) -> PackedRef<'a> {
    PackedRef { scales: s.as_ref(), ..m.as_ref() }
}

/// The templates: (file name, graph). Four graphs, each with f32, then f16, then bf16 scales:
/// template `i` is graph `i % 4` with scale type `i / 4`.
pub fn seed_graphs() -> Vec<(String, RawGraph)> {
    use ScoreFunc::*;
    use WeightBits::*;
    let mut v = vec![];
    for (t, suffix) in [(ScaleType::F32, ""), (ScaleType::F16, "_f16"), (ScaleType::Bf16, "_bf16")] {
        v.extend(
            [
                ("moe_softmax_int4", make_blob(32, 32, 4, 2, 0, Softmax, Int4, false, 0, true, t, 1)),
                ("moe_sigmoid_bias_shared", make_blob(32, 32, 4, 2, 32, Sigmoid, Int4, true, 0, true, t, 2)),
                ("moe_softmax_all_int8_linear", make_blob(64, 32, 3, 3, 0, SoftmaxAll, Int8, false, 40, true, t, 3)),
                ("moe_static_top1", make_blob(32, 64, 2, 1, 0, Softmax, Int4, false, 16, false, t, 4)),
            ]
            .map(|(name, g)| (format!("{name}{suffix}"), g)),
        );
    }
    v
}

// ------------------------------------------------------------------------------------------------
// Structured mutation of valid graphs

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Field {
    X,
    Out,
    RouterWeight,
    ExpertBias,
    W13,
    W13Scales,
    W2,
    W2Scales,
    SharedW13,
    SharedW13Scales,
    SharedW2,
    SharedW2Scales,
    SharedGate,
    NumExperts,
    TopK,
    Dim,
    HiddenDim,
    SharedHiddenDim,
    GroupSize,
    WeightBits,
    ScoreFunc,
    LinWeight,
    LinScales,
    LinBias,
    InFeatures,
    OutFeatures,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Mutation {
    /// Set node `node`'s field to a small-ish or raw value.
    NodeField {
        node: u8,
        field: Field,
        value: i32,
    },
    RouteScale {
        node: u8,
        value: Special,
    },
    Flags {
        node: u8,
        renormalize: bool,
        exact: bool,
    },
    TensorDim {
        tensor: u8,
        dim: u8,
        value: i64,
    },
    TensorRank {
        tensor: u8,
        rank: u8,
    },
    TensorDtype {
        tensor: u8,
        dtype: i8,
    },
    TensorSegment {
        tensor: u8,
        segment: i32,
    },
    TensorDynamic {
        tensor: u8,
        dynamic: bool,
    },
    Segment {
        segment: u8,
        offset: u64,
        size: u64,
    },
    Inputs(Vec<i32>),
    Outputs(Vec<i32>),
    Version(u32),
    UnknownNode(u8),
    DropNode(u8),
    DuplicateNode(u8),
    TruncateData(u32),
    /// Write `value` at `at` in the final bytes (header corruption, flatbuffer bit flips).
    Poke {
        at: u32,
        value: u8,
    },
    Truncate(u32),
    Extend(u16),
    /// Overwrite floats in the data area (NaN/inf weights and scales).
    DataFloat {
        at: u32,
        value: Special,
    },
}

#[derive(Arbitrary, Debug)]
pub struct StructuredInput {
    template: u8,
    mutations: Vec<Mutation>,
    x: FloatFill,
}

fn small(v: i32) -> i32 {
    // Mostly values near the valid ones; sometimes the raw i32.
    if v & 0x100 != 0 {
        v
    } else {
        (v & 0xff) - 8
    }
}

fn set_field(op: &mut RawOp, field: Field, v: i32) {
    match op {
        RawOp::MoeFfn(a) => match field {
            Field::X => a.x = v,
            Field::Out => a.out = v,
            Field::RouterWeight => a.router_weight = v,
            Field::ExpertBias => a.expert_bias = v,
            Field::W13 => a.w13 = v,
            Field::W13Scales => a.w13_scales = v,
            Field::W2 => a.w2 = v,
            Field::W2Scales => a.w2_scales = v,
            Field::SharedW13 => a.shared_w13 = v,
            Field::SharedW13Scales => a.shared_w13_scales = v,
            Field::SharedW2 => a.shared_w2 = v,
            Field::SharedW2Scales => a.shared_w2_scales = v,
            Field::SharedGate => a.shared_gate = v,
            Field::NumExperts => a.num_experts = v,
            Field::TopK => a.top_k = v,
            Field::Dim => a.dim = v,
            Field::HiddenDim => a.hidden_dim = v,
            Field::SharedHiddenDim => a.shared_hidden_dim = v,
            Field::GroupSize => a.group_size = v,
            Field::WeightBits => a.weight_bits = v,
            Field::ScoreFunc => a.score_func = fb::ScoreFunc(v as i8),
            _ => {}
        },
        RawOp::Int4Linear(a) => match field {
            Field::X => a.x = v,
            Field::Out => a.out = v,
            Field::LinWeight | Field::W13 => a.weight = v,
            Field::LinScales | Field::W13Scales => a.scales = v,
            Field::LinBias | Field::ExpertBias => a.bias = v,
            Field::InFeatures | Field::Dim => a.in_features = v,
            Field::OutFeatures | Field::HiddenDim => a.out_features = v,
            Field::GroupSize => a.group_size = v,
            Field::WeightBits => a.weight_bits = v,
            _ => {}
        },
        RawOp::Attention(_) | RawOp::Unknown(_) => {}
    }
}

fn clone_op(op: &RawOp) -> RawOp {
    match op {
        RawOp::MoeFfn(a) => RawOp::MoeFfn(fb::MoeFfnArgs { ..*a }),
        RawOp::Int4Linear(a) => RawOp::Int4Linear(fb::Int4LinearArgs { ..*a }),
        RawOp::Attention(a) => RawOp::Attention(fb::AttentionArgs { ..*a }),
        RawOp::Unknown(t) => RawOp::Unknown(*t),
    }
}

pub fn mutate(g: &mut RawGraph, bytes_muts: &mut Vec<Mutation>, m: &Mutation) {
    let nn = g.nodes.len();
    let nt = g.tensors.len();
    match m.clone() {
        Mutation::NodeField { node, field, value } if nn > 0 => set_field(&mut g.nodes[node as usize % nn].op, field, small(value)),
        Mutation::RouteScale { node, value } if nn > 0 => {
            if let RawOp::MoeFfn(a) = &mut g.nodes[node as usize % nn].op {
                a.route_scale = value.value();
            }
        }
        Mutation::Flags { node, renormalize, exact } if nn > 0 => match &mut g.nodes[node as usize % nn].op {
            RawOp::MoeFfn(a) => {
                a.renormalize = renormalize;
                a.exact = exact;
            }
            RawOp::Int4Linear(a) => a.exact = exact,
            _ => {}
        },
        Mutation::TensorDim { tensor, dim, value } if nt > 0 => {
            let t = &mut g.tensors[tensor as usize % nt];
            if !t.shape.is_empty() {
                let l = t.shape.len();
                t.shape[dim as usize % l] = if value & 0x1000 != 0 { value } else { (value & 0xff) - 4 };
            }
        }
        Mutation::TensorRank { tensor, rank } if nt > 0 => {
            let t = &mut g.tensors[tensor as usize % nt];
            t.shape.resize(rank as usize % 5, 1);
        }
        Mutation::TensorDtype { tensor, dtype } if nt > 0 => g.tensors[tensor as usize % nt].dtype = fb::DType(dtype % 8),
        Mutation::TensorSegment { tensor, segment } if nt > 0 => g.tensors[tensor as usize % nt].segment = small(segment),
        Mutation::TensorDynamic { tensor, dynamic } if nt > 0 => g.tensors[tensor as usize % nt].dynamic_leading = dynamic,
        Mutation::Segment { segment, offset, size } if !g.segments.is_empty() => {
            let l = g.segments.len();
            let s = &mut g.segments[segment as usize % l];
            // Mostly small shifts (keeps alignment some of the time), sometimes raw u64s.
            s.0 = if offset & 1 == 1 { offset } else { s.0.wrapping_add((offset >> 1) % 256) };
            s.1 = if size & 1 == 1 { size } else { s.1.wrapping_add((size >> 1) % 256).wrapping_sub(128) };
        }
        Mutation::Inputs(v) => g.inputs = v.into_iter().take(4).map(small).collect(),
        Mutation::Outputs(v) => g.outputs = v.into_iter().take(4).map(small).collect(),
        Mutation::Version(v) => g.version = v,
        Mutation::UnknownNode(t) => g.nodes.push(RawNode { name: "unknown".into(), op: RawOp::Unknown(t) }),
        Mutation::DropNode(i) if nn > 0 => {
            g.nodes.remove(i as usize % nn);
        }
        Mutation::DuplicateNode(i) if nn > 0 && nn < 8 => {
            let n = &g.nodes[i as usize % nn];
            let c = RawNode { name: format!("{}_dup", n.name), op: clone_op(&n.op) };
            g.nodes.push(c);
        }
        Mutation::TruncateData(n) => {
            let l = g.data.len();
            g.data.truncate(l.saturating_sub(n as usize % 4096));
        }
        Mutation::DataFloat { at, value } if g.data.len() >= 4 => {
            let i = (at as usize % (g.data.len() / 4)) * 4;
            g.data[i..i + 4].copy_from_slice(&value.value().to_le_bytes());
        }
        b @ (Mutation::Poke { .. } | Mutation::Truncate(_) | Mutation::Extend(_)) => bytes_muts.push(b),
        _ => {}
    }
}

/// A deep copy (`RawGraph` is not `Clone`).
fn clone_graph(g: &RawGraph) -> RawGraph {
    RawGraph {
        version: g.version,
        tensors: g.tensors.clone(),
        nodes: g.nodes.iter().map(|n| RawNode { name: n.name.clone(), op: clone_op(&n.op) }).collect(),
        inputs: g.inputs.clone(),
        outputs: g.outputs.clone(),
        segments: g.segments.clone(),
        data: g.data.clone(),
    }
}

thread_local! {
    /// The templates (4 graphs x f32/f16/bf16 scales), built once (quantizing their weights each
    /// iteration cost ~80% of the time).
    static TEMPLATES: Vec<RawGraph> = seed_graphs().into_iter().map(|(_, g)| g).collect();
}

pub fn blob_structured(data: &[u8]) {
    let Ok(inp) = StructuredInput::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let mut g = TEMPLATES.with(|t| clone_graph(&t[inp.template as usize % t.len()]));
    let mut byte_muts = vec![];
    for m in inp.mutations.iter().take(16) {
        mutate(&mut g, &mut byte_muts, m);
    }
    // Keep the tensor list free of absurd ranks so flatbuffer building stays cheap.
    g.tensors.truncate(64);
    let mut bytes = g.to_bytes();
    for m in byte_muts {
        match m {
            Mutation::Poke { at, value } if !bytes.is_empty() => {
                let l = bytes.len();
                // Bias pokes toward the header and the start of the flatbuffer.
                let i = if at & 1 == 0 { (at as usize >> 1) % l.min(256) } else { at as usize % l };
                bytes[i] = value;
            }
            Mutation::Truncate(n) => bytes.truncate(n as usize % (bytes.len() + 1)),
            Mutation::Extend(n) => bytes.resize(bytes.len() + n as usize % 512, 0),
            _ => {}
        }
    }
    let _ = &inp.x;
    check_blob(&bytes);
}

// ------------------------------------------------------------------------------------------------
// .pte inspect

pub fn pte_inspect(data: &[u8]) {
    #[cfg(feature = "backend")]
    match crate::pte::parse("fuzz.pte", data) {
        Ok(info) => {
            // The report printer must handle whatever the parser accepted.
            let _ = info.to_string();
            let _ = info.backend_ids();
            let _ = info.operator_names();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
