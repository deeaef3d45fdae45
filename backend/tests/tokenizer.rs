//! The Rust tokenizer equals the Python (HF `tokenizers`) one on the fixture written by
//! `scripts/train_tokenizer.py` (sample strings with their Python ids and decoded text).

use mobilemoe_executorch::tokenizer::{Json, StreamDecoder, Tokenizer};
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn load() -> Tokenizer {
    Tokenizer::from_file(repo().join("python_export/mobilemoe_export/assets/tokenizer.json")).unwrap()
}

#[test]
fn matches_python_fixture() {
    let tok = load();
    let text = std::fs::read_to_string(repo().join("backend/tests/fixtures/tokenizer_cases.json")).unwrap();
    let fx = Json::parse(&text).unwrap();
    assert_eq!(tok.vocab_size(), fx.get("vocab_size").unwrap().as_u32().unwrap() as usize);
    let cases = fx.get("cases").unwrap().as_arr().unwrap();
    assert!(cases.len() >= 16);
    let mut failures = vec![];
    for c in cases {
        let s = c.get("text").unwrap().as_str().unwrap();
        let want: Vec<u32> = c.get("ids").unwrap().as_arr().unwrap().iter().map(|v| v.as_u32().unwrap()).collect();
        let got = tok.encode(s);
        if got != want {
            failures.push(format!("{s:?}: rust {got:?} != python {want:?}"));
            continue;
        }
        let dec = tok.decode(&got, false).unwrap();
        let want_dec = c.get("decoded").unwrap().as_str().unwrap();
        if dec != want_dec {
            failures.push(format!("{s:?}: decoded {dec:?} != python {want_dec:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn roundtrip_and_streaming() {
    let tok = load();
    for s in ["The lighthouse keeper wrote 42 notes.", "naïve 你好 🚀", "  spaced\n\ttext  "] {
        let ids = tok.encode(s);
        assert_eq!(tok.decode(&ids, false).unwrap(), s);
        let mut d = StreamDecoder::new();
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&d.push(&tok, id));
        }
        streamed.push_str(&d.finish());
        assert_eq!(streamed, s);
    }
    let eos = tok.eos_id().unwrap();
    assert_eq!(eos, 0);
    assert_eq!(tok.decode(&[eos], true).unwrap(), "");
    assert!(tok.decode(&[100_000], false).is_err());
}

#[test]
fn rejects_unsupported_tokenizers() {
    assert!(Tokenizer::from_json_str(r#"{"model": {"type": "WordPiece", "vocab": {}}}"#).is_err());
    assert!(Tokenizer::from_json_str("not json").is_err());
}
