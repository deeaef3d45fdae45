//! Blobs with fp16 / bf16 per-group scales (format version 3): the delegate reads them in place
//! and computes bit for bit what the same blob with those values as f32 scales computes; a
//! narrow-scale tensor in an older-version blob is refused with a message.

#[path = "../../schema/tests/common/mod.rs"]
mod common;
use common::*;
use mobilemoe_executorch::delegate::Delegate;
use mobilemoe_ops::{OwnedScales, ScaleType};
use mobilemoe_schema::write::{BlobBuilder, MoeLayerWeights};

/// `l` with every scale rounded to `t` (so that f32 and `t` storage hold the same values).
fn rounded(l: &Layer, t: ScaleType) -> Layer {
    let r = |v: &[f32]| v.iter().map(|&s| t.round(s)).collect::<Vec<f32>>();
    let mut l2 = layer(7);
    l2.w13_s = r(&l.w13_s);
    l2.w2_s = r(&l.w2_s);
    l2.sh13.scales = r(&l.sh13.scales);
    l2.sh2.scales = r(&l.sh2.scales);
    l2.lin.scales = r(&l.lin.scales);
    l2
}

/// `m` viewed with the scales `s` (the same values in another element type).
fn with<'a>(m: &'a mobilemoe_ops::PackedMatrix, s: &'a OwnedScales) -> mobilemoe_ops::PackedRef<'a> {
    let mut r = m.as_ref();
    r.scales = s.as_ref();
    r
}

/// The blob of `builder` with every scale stored as `t`.
fn blob_with(l: &Layer, t: ScaleType) -> Vec<u8> {
    let o = |v: &[f32]| OwnedScales::from_f32(t, v);
    let (s13, s2, sh13, sh2, lin) = (o(&l.w13_s), o(&l.w2_s), o(&l.sh13.scales), o(&l.sh2.scales), o(&l.lin.scales));
    let mut b = BlobBuilder::new();
    let x = b.activation(&[1, -1, 64], true);
    let w = MoeLayerWeights {
        router_w: &l.router_w,
        expert_bias: Some(&l.bias),
        w13: &l.w13,
        w13_scales: s13.as_ref(),
        w2: &l.w2,
        w2_scales: s2.as_ref(),
        shared: Some((with(&l.sh13, &sh13), with(&l.sh2, &sh2), Some(&l.gate))),
    };
    let h = b.moe_ffn_layer("moe", x, &l.spec, &w);
    let y = b.linear_layer("proj", h, &with(&l.lin, &lin), Some(&l.lin_bias), false);
    b.set_inputs(&[x]);
    b.set_outputs(&[y]);
    b.finish()
}

fn run(blob: Vec<u8>, x: &[f32], t: usize) -> Vec<f32> {
    let d = Delegate::from_vec(blob).unwrap();
    let mut y = vec![0f32; t * 48];
    d.execute(&[(x, &[1, t as i64, 64])], &mut [&mut y]).unwrap();
    y
}

#[test]
fn narrow_scales_equal_f32_scales_bit_for_bit() {
    let x = Rng(9).vec(5 * 64, 1.0);
    for t in [ScaleType::F16, ScaleType::Bf16] {
        let l = rounded(&layer(7), t);
        let narrow = blob_with(&l, t);
        let wide = blob_with(&l, ScaleType::F32);
        assert!(narrow.len() < wide.len(), "{}: blob not smaller", t.name());
        for tokens in [1, 5] {
            let (a, b) = (run(narrow.clone(), &x[..tokens * 64], tokens), run(wide.clone(), &x[..tokens * 64], tokens));
            assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "{} scales, {tokens} tokens: outputs differ", t.name());
        }
    }
}

#[test]
fn narrow_scales_need_format_version_3() {
    let l = rounded(&layer(7), ScaleType::F16);
    let mut raw = {
        let o = |v: &[f32]| OwnedScales::from_f32(ScaleType::F16, v);
        let s = o(&l.lin.scales);
        let mut b = BlobBuilder::new();
        let x = b.activation(&[1, -1, 64], true);
        let mut w = l.lin.as_ref();
        w.scales = s.as_ref();
        let y = b.linear_layer("proj", x, &w, None, false);
        b.set_inputs(&[x]);
        b.set_outputs(&[y]);
        b.into_raw()
    };
    assert!(mobilemoe_schema::parse(&raw.to_bytes()).is_ok());
    raw.version = 2;
    let e = match Delegate::from_vec(raw.to_bytes()) {
        Ok(_) => panic!("a version-2 blob with F16 scales was accepted"),
        Err(e) => e,
    };
    assert!(e.contains("F16") && e.contains("version 3"), "{e}");
}
