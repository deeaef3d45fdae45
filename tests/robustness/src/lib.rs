//! The malformed-blob corpus (`tests/robustness/malformed/*.mmoe`): each case is a valid blob with
//! one defect, and the substring its error message must contain. `cases()` rebuilds them from the
//! schema crate's writer; `REGEN_MALFORMED=1 cargo test` rewrites the files.

use mobilemoe_fuzz_harness::blob::make_blob;
use mobilemoe_ops::{ScaleType, ScoreFunc, WeightBits};
use mobilemoe_schema::fb;
use mobilemoe_schema::write::{RawGraph, RawNode, RawOp};

/// The valid base: x[.., 32] -> MoE (E=2, top-1, shared expert, expert bias, sigmoid) -> linear 16.
pub fn base() -> RawGraph {
    make_blob(32, 32, 2, 1, 32, ScoreFunc::Sigmoid, WeightBits::Int4, true, 16, true, ScaleType::F32, 7)
}

fn moe(g: &mut RawGraph) -> &mut fb::MoeFfnArgs {
    match &mut g.nodes[0].op {
        RawOp::MoeFfn(a) => a,
        _ => unreachable!(),
    }
}

fn with(f: impl FnOnce(&mut RawGraph)) -> Vec<u8> {
    let mut g = base();
    f(&mut g);
    g.to_bytes()
}

fn poke(mut b: Vec<u8>, at: usize, v: &[u8]) -> Vec<u8> {
    b[at..at + v.len()].copy_from_slice(v);
    b
}

/// (name, blob, expected substring of the error).
pub fn cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let ok = base().to_bytes();
    let n = ok.len();
    let fb_size = u64::from_le_bytes(ok[16..24].try_into().unwrap()) as usize;
    let data_off = u64::from_le_bytes(ok[24..32].try_into().unwrap());
    // Tensor ids in the base: 0 x, 1 router, 2 bias, 3 w13, 4 w13s, 5 w2, 6 w2s, 7..10 shared, 11 gate,
    // 12 moe out, 13 lin weight, 14 lin scales, 15 lin bias, 16 lin out.
    vec![
        ("empty", vec![], "blob too small"),
        ("truncated_header", ok[..16].to_vec(), "blob too small"),
        ("truncated_flatbuffer", ok[..100].to_vec(), "flatbuffer size"),
        ("truncated_data", ok[..n - 64].to_vec(), "outside the data area"),
        ("wrong_magic", poke(ok.clone(), 0, b"MMOX"), "bad magic"),
        ("pte_magic", poke(ok.clone(), 0, b"\0\0\0\0ET12"), "bad magic"),
        ("header_version_99", poke(ok.clone(), 4, &99u32.to_le_bytes()), "unsupported blob format version 99"),
        ("header_version_0", poke(ok.clone(), 4, &0u32.to_le_bytes()), "unsupported blob format version 0"),
        (
            "graph_version_3",
            with(|g| g.version = 3).into_iter().enumerate().map(|(i, b)| if i == 4 { 2 } else { b }).collect(),
            "graph version 3 differs from the header's 2",
        ),
        ("flatbuffer_offset_64", poke(ok.clone(), 8, &64u64.to_le_bytes()), "flatbuffer offset 64"),
        ("flatbuffer_size_huge", poke(ok.clone(), 16, &u64::MAX.to_le_bytes()), "flatbuffer size"),
        ("data_offset_unaligned", poke(ok.clone(), 24, &(data_off + 1).to_le_bytes()), "not a multiple of 64"),
        ("data_offset_past_end", poke(ok.clone(), 24, &(((n as u64) / 64 + 1) * 64).to_le_bytes()), "past the end"),
        ("data_offset_overlaps_flatbuffer", poke(ok.clone(), 24, &64u64.to_le_bytes()), "overlaps the flatbuffer"),
        ("no_file_identifier", poke(ok.clone(), 36, b"XXXX"), "file identifier"),
        (
            "flatbuffer_garbage",
            {
                let mut b = ok.clone();
                for i in 40..(32 + fb_size).min(140) {
                    b[i] = 0xA5
                }
                b
            },
            "flatbuffer verification failed",
        ),
        ("segment_offset_out_of_range", with(|g| g.segments[0].0 = 1 << 40), "outside the data area"),
        ("segment_offset_unaligned", with(|g| g.segments[1].0 += 4), "not a multiple of 64"),
        ("segment_size_overflow", with(|g| g.segments[0] = (64, u64::MAX)), "outside the data area"),
        ("tensor_segment_index_out_of_range", with(|g| g.tensors[3].segment = 99), "segment index 99 out of range"),
        ("tensor_negative_dim", with(|g| g.tensors[0].shape = vec![-2, 32]), "invalid dimension -2"),
        ("constant_negative_dim", with(|g| g.tensors[1].shape = vec![-1, 32]), "invalid dimension -1"),
        ("shape_disagrees_with_bytes", with(|g| g.tensors[1].shape = vec![2, 33]), "does not match its segment"),
        ("huge_claimed_shape", with(|g| g.tensors[3].shape = vec![1 << 40, 1 << 40]), "does not match its segment"),
        ("unknown_dtype", with(|g| g.tensors[1].dtype = fb::DType(9)), "unknown dtype 9"),
        ("tensor_id_out_of_range", with(|g| moe(g).w13 = 1000), "tensor id 1000 out of range"),
        ("negative_tensor_id", with(|g| moe(g).x = -5), "tensor id -5 out of range"),
        ("num_experts_beyond_weights", with(|g| moe(g).num_experts = 8), "router_weight"),
        ("top_k_greater_than_experts", with(|g| moe(g).top_k = 3), "top_k = 3 must be in 1..=num_experts (2)"),
        ("top_k_zero", with(|g| moe(g).top_k = 0), "top_k = 0 must be > 0"),
        ("num_experts_negative", with(|g| moe(g).num_experts = -2), "num_experts = -2 must be > 0"),
        ("group_size_48", with(|g| moe(g).group_size = 48), "invalid group size 48"),
        ("weight_bits_3", with(|g| moe(g).weight_bits = 3), "weight bits 3 not supported"),
        ("unknown_score_func", with(|g| moe(g).score_func = fb::ScoreFunc(7)), "unknown score_func 7"),
        ("route_scale_nan", with(|g| moe(g).route_scale = f32::NAN), "route_scale must be finite"),
        ("route_scale_inf", with(|g| moe(g).route_scale = f32::INFINITY), "route_scale must be finite"),
        ("hidden_dim_disagrees_with_weights", with(|g| moe(g).hidden_dim = 64), "w13"),
        ("dim_huge", with(|g| moe(g).dim = i32::MAX), "K = 2147483647 is not a multiple of the group size 32"),
        ("hidden_dim_huge", with(|g| moe(g).hidden_dim = i32::MAX), "is not a multiple of the group size"),
        ("shared_expert_partial", with(|g| moe(g).shared_w2 = -1), "shared expert"),
        (
            "shared_gate_without_shared",
            with(|g| {
                let m = moe(g);
                m.shared_w13 = -1;
                m.shared_w13_scales = -1;
                m.shared_w2 = -1;
                m.shared_w2_scales = -1;
                m.shared_hidden_dim = 0
            }),
            "shared_gate but no shared expert",
        ),
        ("unknown_op", with(|g| g.nodes.push(RawNode { name: "bad".into(), op: RawOp::Unknown(9) })), "unknown op type 9"),
        ("no_outputs", with(|g| g.outputs.clear()), "no outputs"),
        ("output_not_written", with(|g| g.outputs = vec![0]), "not written by any node"),
        ("output_listed_twice", with(|g| g.outputs = vec![16, 16]), "listed twice"),
        ("input_is_constant", with(|g| g.inputs = vec![1]), "must be an F32 or I64 activation"),
        ("read_before_write", with(|g| g.nodes.swap(0, 1)), "before anything writes it"),
        (
            "write_twice",
            with(|g| {
                let a = match &g.nodes[1].op {
                    RawOp::Int4Linear(a) => fb::Int4LinearArgs { ..*a },
                    _ => unreachable!(),
                };
                g.nodes.push(RawNode { name: "again".into(), op: RawOp::Int4Linear(a) })
            }),
            "already written",
        ),
        ("weight_used_as_activation", with(|g| moe(g).x = 3), "must be an F32 activation"),
        ("activation_used_as_weight", with(|g| moe(g).w13 = 0), "must be a constant"),
        ("constant_with_dynamic_leading", with(|g| g.tensors[1].dynamic_leading = true), "cannot have dynamic_leading"),
        (
            "linear_in_features_mismatch",
            with(|g| {
                if let RawOp::Int4Linear(a) = &mut g.nodes[1].op {
                    a.in_features = 64
                }
            }),
            "last dimension must be 64",
        ),
    ]
}
