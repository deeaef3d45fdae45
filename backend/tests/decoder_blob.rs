//! Error paths of a whole-decoder blob (format v2: Embedding, RmsNorm, Attention, MoeFfn, LmHead,
//! written by python_export for a tiny model; fixtures/decoder_tiny.mmoe): every bad call is a
//! clear `Err`, never a panic, and the delegate keeps working afterwards.

use mobilemoe_executorch::delegate::{Delegate, Input};

fn delegate() -> Delegate {
    let blob = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/decoder_tiny.mmoe")).unwrap();
    Delegate::from_vec(blob).expect("valid v2 blob")
}

fn run(d: &Delegate, toks: &[i64], pos: &[i64]) -> Result<Vec<f32>, mobilemoe_executorch::Error> {
    let n = toks.len() as i64;
    let shapes = [vec![1, n], vec![pos.len() as i64]];
    let out_shape = d.output_shapes(&[&shapes[0], &shapes[1]])?;
    let mut out = vec![0f32; out_shape[0].iter().product::<i64>() as usize];
    d.execute_typed(&[(Input::I64(toks), &shapes[0]), (Input::I64(pos), &shapes[1])], &mut [&mut out])?;
    Ok(out)
}

#[test]
fn decoder_blob_runs_and_rejects_bad_calls() {
    let d = delegate();
    let good = run(&d, &[1, 2, 3], &[0, 1, 2]).unwrap();
    assert!(!good.is_empty() && good.iter().all(|v| v.is_finite()));
    // a token id outside the vocabulary (64) / negative
    let e = run(&d, &[1, 64], &[3, 4]).unwrap_err();
    assert!(e.contains("outside the vocabulary"), "{e}");
    assert!(run(&d, &[-1], &[3]).unwrap_err().contains("outside the vocabulary"));
    // a position outside the KV cache (max_seq_len 16) / negative
    let e = run(&d, &[1], &[16]).unwrap_err();
    assert!(e.contains("outside the KV cache"), "{e}");
    assert!(run(&d, &[1], &[-1]).unwrap_err().contains("outside the KV cache"));
    // as many positions as tokens
    let e = run(&d, &[1, 2], &[3]).unwrap_err();
    assert!(e.contains("input_pos"), "{e}");
    // float inputs where the graph takes token ids
    let x = [0f32; 3];
    let shapes = [vec![1i64, 3], vec![3i64]];
    let mut out = vec![0f32; 64];
    let e = d.execute_typed(&[(Input::F32(&x), &shapes[0]), (Input::F32(&x), &shapes[1])], &mut [&mut out]).unwrap_err();
    assert!(e.contains("dtype"), "{e}");
    // still fine afterwards, and the same prefill gives the same logits
    assert_eq!(run(&d, &[1, 2, 3], &[0, 1, 2]).unwrap(), good);
}
