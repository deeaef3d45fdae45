//! The reader accepts what the writer builds and rejects every corruption with an error
//! (never a panic).

mod common;
use common::*;
use mobilemoe_schema::write::{RawGraph, RawOp};
use mobilemoe_schema::{fb, parse, read::NodeOp, BlobError};

fn raw() -> RawGraph {
    builder(&layer(7)).into_raw()
}

fn err_of(bytes: &[u8]) -> String {
    match parse(bytes) {
        Ok(_) => panic!("corrupted blob was accepted"),
        Err(e) => e.to_string(),
    }
}

fn with(f: impl FnOnce(&mut RawGraph)) -> String {
    let mut g = raw();
    f(&mut g);
    err_of(&g.to_bytes())
}

fn moe(g: &mut RawGraph) -> &mut fb::MoeFfnArgs {
    match &mut g.nodes[0].op {
        RawOp::MoeFfn(a) => a,
        _ => unreachable!(),
    }
}

#[test]
fn valid_blob_round_trips() {
    let l = layer(7);
    let bytes = builder(&l).finish();
    let g = parse(&bytes).unwrap();
    assert_eq!(g.nodes.len(), 2);
    assert_eq!(g.header.version, mobilemoe_schema::FORMAT_VERSION);
    assert_eq!(g.header.data_offset % 64, 0);
    match &g.nodes[0].op {
        NodeOp::MoeFfn(m) => {
            assert_eq!(m.spec, l.spec);
            assert_eq!(g.constant(&bytes, m.w13).unwrap(), &l.w13[..]);
            assert!(m.shared.unwrap().gate.is_some());
        }
        _ => panic!(),
    }
    for s in &g.segments {
        assert_eq!((s.start - g.header.data_offset as usize) % 64, 0);
    }
    assert_eq!(g.tensors[g.inputs[0]].shape, vec![1, -1, 64]);
}

#[test]
fn bad_magic() {
    let mut b = raw().to_bytes();
    b[0] = b'X';
    assert!(matches!(parse(&b), Err(BlobError::BadMagic(_))));
}

/// The routing of format version 4 (group limit, weight on the input, topk_sigmoid, sparsemixer)
/// round-trips, and is refused in a blob that claims an older version (its reader would have
/// ignored the fields and routed differently).
#[test]
fn version_4_routing_round_trips_and_needs_version_4() {
    let edits: [fn(&mut fb::MoeFfnArgs); 5] = [
        |a| {
            a.num_groups = 2;
            a.top_groups = 1;
            a.group_score = fb::GroupScore::TopTwoSum;
        },
        |a| a.weight_input = true,
        |a| a.score_func = fb::ScoreFunc::TopkSigmoid,
        |a| {
            a.score_func = fb::ScoreFunc::SparseMixer;
            a.renormalize = false;
            a.jitter_eps = 0.01;
        },
        |a| a.jitter_eps = 0.5, // set but unused: still a version-4 attribute
    ];
    for (i, edit) in edits.iter().enumerate() {
        let mut g = raw();
        edit(moe(&mut g));
        let bytes = g.to_bytes();
        let parsed = parse(&bytes);
        match (&parsed, i) {
            (Ok(p), _) => match &p.nodes[0].op {
                NodeOp::MoeFfn(m) => {
                    let r = m.spec.router;
                    assert!(
                        r.group_limit.groups == 2
                            || r.weight_input
                            || r.jitter_eps != 0.0
                            || r.score_func != mobilemoe_ops::ScoreFunc::Sigmoid,
                        "{r:?}"
                    );
                }
                _ => unreachable!(),
            },
            (Err(e), _) => panic!("edit {i}: {e}"),
        }
        let mut old = raw();
        edit(moe(&mut old));
        old.version = 3;
        let e = err_of(&old.to_bytes());
        assert!(e.contains("format version 4") && e.contains("version 3 blob"), "edit {i}: {e}");
    }
    // An invalid group limit is refused with the ops crate's message.
    let e = with(|g| {
        let a = moe(g);
        a.num_groups = 3; // 4 experts do not split into 3 groups
    });
    assert!(e.contains("group limit"), "{e}");
}

/// A graph of one Attention node (x [1, T, 64], input_pos [T] -> out [1, T, 64]) with `edit`
/// applied to its attributes, written as format `version`.
fn attention_blob(version: u32, edit: impl FnOnce(&mut fb::AttentionArgs)) -> Vec<u8> {
    use mobilemoe_ops::{MatrixSpec, PackedMatrix, WeightBits};
    let (d, heads, hd, max_seq) = (64usize, 2usize, 32usize, 8usize);
    let mut r = Rng(3);
    let pack = |r: &mut Rng, n: usize, k: usize| {
        PackedMatrix::quantize(&r.vec(n * k, 0.2), MatrixSpec::new(n, k, 32, WeightBits::Int4).unwrap()).unwrap()
    };
    let (wqkv, wo) = (pack(&mut r, 3 * heads * hd, d), pack(&mut r, d, heads * hd));
    let mut b = mobilemoe_schema::BlobBuilder::new();
    let x = b.activation(&[1, -1, d as i64], true);
    b.raw.tensors.push(mobilemoe_schema::write::RawTensor { dtype: fb::DType::I64, shape: vec![-1], dynamic_leading: true, segment: -1 });
    let pos = (b.raw.tensors.len() - 1) as i32;
    let wqkv_id = b.constant_u8(&[wqkv.data.len() as i64], &wqkv.data);
    let wqkv_s = b.constant_f32(&[wqkv.scales.len() as i64], &wqkv.scales);
    let wo_id = b.constant_u8(&[wo.data.len() as i64], &wo.data);
    let wo_s = b.constant_f32(&[wo.scales.len() as i64], &wo.scales);
    let cos = b.constant_f32(&[max_seq as i64, hd as i64 / 2], &vec![1.0; max_seq * hd / 2]);
    let sin = b.constant_f32(&[max_seq as i64, hd as i64 / 2], &vec![0.0; max_seq * hd / 2]);
    let out = b.activation(&[1, -1, d as i64], true);
    let mut a = fb::AttentionArgs {
        x,
        input_pos: pos,
        wqkv: wqkv_id,
        wqkv_scales: wqkv_s,
        wo: wo_id,
        wo_scales: wo_s,
        rope_cos: cos,
        rope_sin: sin,
        out,
        dim: d as i32,
        n_heads: heads as i32,
        n_kv_heads: heads as i32,
        head_dim: hd as i32,
        max_seq_len: max_seq as i32,
        group_size: 32,
        weight_bits: 4,
        qk_norm_eps: 1e-5,
        ..Default::default()
    };
    edit(&mut a);
    b.node("attn", RawOp::Attention(a));
    b.set_inputs(&[x, pos]);
    b.set_outputs(&[out]);
    let mut g = b.into_raw();
    g.version = version;
    g.to_bytes()
}

/// The attributes of format version 5 (QK-norm, a sliding window, experts' scales grouped along
/// the output) are refused in a blob that claims an older version, whose reader would have ignored
/// them and computed something else; a negative window is refused in any version.
#[test]
fn version_5_attributes_need_version_5() {
    // The plain attention graph reads in every version that has the node (2..=5).
    for v in 2..=5 {
        let g = parse(&attention_blob(v, |_| {})).unwrap_or_else(|e| panic!("version {v}: {e}"));
        assert!(matches!(&g.nodes[0].op, NodeOp::Attention(a) if a.spec.qk_norm.is_none() && a.spec.window == 0));
    }
    // Version 5: both read back.
    let g = parse(&attention_blob(5, |a| {
        a.qk_norm = true;
        a.window = 4;
    }))
    .unwrap();
    assert!(matches!(&g.nodes[0].op, NodeOp::Attention(a) if a.spec.qk_norm == Some(1e-5) && a.spec.window == 4));
    for v in 2..=4 {
        let e = err_of(&attention_blob(v, |a| a.qk_norm = true));
        assert!(e.contains("qk_norm needs format version 5") && e.contains(&format!("blob is version {v}")), "{e}");
        let e = err_of(&attention_blob(v, |a| a.window = 4));
        assert!(e.contains("window needs format version 5") && e.contains(&format!("blob is version {v}")), "{e}");
    }
    for v in [4, 5] {
        let e = err_of(&attention_blob(v, |a| a.window = -1));
        assert!(e.contains("window = -1 must be >= 0") || e.contains("window needs format version 5"), "{e}");
    }
    assert!(err_of(&attention_blob(5, |a| a.window = -1)).contains("window = -1 must be >= 0"));
    // expert_scales_out: version 5 only (the MoE graph of the other tests).
    for v in 1..=4 {
        let mut g = raw();
        moe(&mut g).expert_scales_out = true;
        g.version = v;
        let e = err_of(&g.to_bytes());
        assert!(e.contains("expert_scales_out needs format version 5") && e.contains(&format!("blob is version {v}")), "{e}");
    }
}

#[test]
fn wrong_version() {
    for v in [0u32, mobilemoe_schema::FORMAT_VERSION + 1, 255] {
        let mut b = raw().to_bytes();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        assert_eq!(parse(&b).unwrap_err(), BlobError::BadVersion { found: v });
    }
    // Header says 2 but the graph says 3: refused with a message naming both.
    let mut g = raw();
    g.version = 3;
    let mut b = g.to_bytes();
    b[4..8].copy_from_slice(&2u32.to_le_bytes());
    let e = parse(&b).unwrap_err().to_string();
    assert!(e.contains("graph version 3") && e.contains("header's 2"), "{e}");
    // A version-1 blob (MoeFfn/Int4Linear only) still reads.
    let mut g = raw();
    g.version = 1;
    let b = g.to_bytes();
    assert_eq!(parse(&b).unwrap().header.version, 1);
}

#[test]
fn truncated_at_every_length() {
    let b = raw().to_bytes();
    for n in 0..b.len() {
        assert!(parse(&b[..n]).is_err(), "truncated to {n} bytes was accepted");
    }
}

#[test]
fn header_offsets_out_of_range() {
    let b = raw().to_bytes();
    let set = |at: usize, v: u64| {
        let mut c = b.clone();
        c[at..at + 8].copy_from_slice(&v.to_le_bytes());
        c
    };
    assert!(err_of(&set(8, 40)).contains("flatbuffer offset"));
    assert!(err_of(&set(16, u64::MAX)).contains("flatbuffer size"));
    assert!(err_of(&set(16, b.len() as u64)).contains("flatbuffer size"));
    assert!(err_of(&set(24, 96 + 1)).contains("data offset"));
    assert!(err_of(&set(24, 1 << 40)).contains("data offset"));
    assert!(err_of(&set(24, 0)).contains("data offset"));
}

#[test]
fn segments_out_of_range_or_misaligned() {
    assert!(with(|g| g.segments[0].0 += 64 * 1000).contains("outside the data area"));
    assert!(with(|g| g.segments[0].1 = u64::MAX).contains("outside the data area"));
    assert!(with(|g| g.segments[0].0 = u64::MAX - 63).contains("outside the data area"));
    assert!(with(|g| g.segments[1].0 += 4).contains("not a multiple of 64"));
}

#[test]
fn shapes_inconsistent_with_sizes() {
    // router weight tensor is id 1: [E, D] F32.
    assert!(with(|g| g.tensors[1].shape = vec![4, 65]).contains("does not match its segment"));
    assert!(with(|g| g.tensors[1].dtype = fb::DType::I64).contains("does not match its segment"));
    assert!(with(|g| g.tensors[1].shape = vec![4, -64]).contains("invalid dimension"));
    // Reshape consistently with the bytes but not with the op: [D, E] instead of [E, D].
    assert!(with(|g| g.tensors[1].shape = vec![64, 4]).contains("expected [4, 64]"));
    // w13 bytes inconsistent with hidden_dim (MatrixSpec::data_bytes).
    assert!(with(|g| moe(g).hidden_dim = 64).contains("w13"));
    // Output last dim wrong.
    assert!(with(|g| {
        let out = moe(g).out as usize;
        g.tensors[out].shape = vec![1, -1, 63];
    })
    .contains("last dimension must be 64"));
    // A huge shape must not overflow.
    assert!(with(|g| g.tensors[1].shape = vec![i64::MAX, i64::MAX]).contains("does not match"));
}

#[test]
fn tensor_ids_out_of_range() {
    assert!(with(|g| moe(g).w13 = 1000).contains("out of range"));
    assert!(with(|g| moe(g).x = -5).contains("out of range"));
    assert!(with(|g| moe(g).expert_bias = -2).contains("out of range"));
    assert!(with(|g| g.inputs[0] = 99).contains("out of range"));
    assert!(with(|g| g.outputs[0] = i32::MAX).contains("out of range"));
    assert!(with(|g| g.tensors[1].segment = 500).contains("segment index"));
    assert!(with(|g| g.tensors[1].segment = -7).contains("segment index"));
}

#[test]
fn bad_attributes_and_graph_structure() {
    assert!(with(|g| moe(g).group_size = 48).contains("group"));
    assert!(with(|g| moe(g).weight_bits = 3).contains("bits"));
    assert!(with(|g| moe(g).top_k = 9).contains("top_k"));
    assert!(with(|g| moe(g).num_experts = 0).contains("num_experts"));
    assert!(with(|g| moe(g).route_scale = f32::NAN).contains("route_scale"));
    assert!(with(|g| moe(g).score_func = fb::ScoreFunc(9)).contains("score_func"));
    assert!(with(|g| moe(g).shared_w2 = -1).contains("shared expert"));
    assert!(with(|g| g.nodes[0].op = RawOp::Unknown(42)).contains("unknown op type"));
    assert!(with(|g| g.nodes.swap(0, 1)).contains("before anything writes it"));
    assert!(with(|g| g.outputs.clear()).contains("no outputs"));
    assert!(with(|g| g.tensors[0].segment = 0).contains("tensor 0"));
    // A node writing the graph input.
    assert!(with(|g| moe(g).out = 0).contains("graph input"));
    // Weight given as an activation.
    assert!(with(|g| moe(g).w2 = 0).contains("must be a constant"));
    assert!(with(|g| g.tensors[1].dtype = fb::DType(42)).contains("unknown dtype"));
}

#[test]
fn flatbuffer_garbage_and_random_flips_never_panic() {
    let b = raw().to_bytes();
    let fb_end = 32 + u64::from_le_bytes(b[16..24].try_into().unwrap()) as usize;
    let mut r = Rng(12345);
    for i in 0..3000 {
        let mut c = b.clone();
        let flips = 1 + (i % 4);
        for _ in 0..flips {
            let at = ((r.f() + 1.0) / 2.0 * fb_end as f32) as usize % fb_end;
            c[at] ^= 1 << (((r.f() + 1.0) * 4.0) as u32 % 8);
        }
        let _ = parse(&c); // must return, Ok or Err
    }
    // Missing file identifier.
    let mut c = b.clone();
    c[36..40].copy_from_slice(b"XXXX");
    assert!(err_of(&c).contains("file identifier"));
}
