//! Blobs with fp16 / bf16 per-group scales (format version 3): the delegate reads them in place
//! and computes bit for bit what the same blob with those values as f32 scales computes; a
//! narrow-scale tensor in an older-version blob is refused with a message.

#[path = "../../schema/tests/common/mod.rs"]
mod common;
use common::*;
use mobilemoe_executorch::delegate::Delegate;
use mobilemoe_ops::ScaleType;

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
        let narrow = builder_with_scales(&l, t).finish();
        let wide = builder(&l).finish();
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
    let mut raw = builder_with_scales(&l, ScaleType::F16).into_raw();
    assert!(mobilemoe_schema::parse(&raw.to_bytes()).is_ok());
    raw.version = 2;
    let e = match Delegate::from_vec(raw.to_bytes()) {
        Ok(_) => panic!("a version-2 blob with F16 scales was accepted"),
        Err(e) => e,
    };
    assert!(e.contains("F16") && e.contains("version 3"), "{e}");
}
