//! The shipped tokenizer (python_export/mobilemoe_export/assets/tokenizer.json) on the fixture
//! written by `scripts/train_tokenizer.py` (sample strings with their Python ids and decoded
//! text), without needing Python; `tokenizer_parity.rs` compares with Python live, on more kinds.

use mobilemoe_runner::tokenizer::{StreamDecoder, Tokenizer};
use serde::Deserialize;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn load() -> Tokenizer {
    Tokenizer::from_file(repo().join("python_export/mobilemoe_export/assets/tokenizer.json")).unwrap()
}

#[derive(Deserialize)]
struct Fixture {
    vocab_size: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

#[test]
fn matches_python_fixture() {
    let tok = load();
    let text = std::fs::read_to_string(repo().join("runner/tests/fixtures/tokenizer_cases.json")).unwrap();
    let fx: Fixture = serde_json::from_str(&text).unwrap();
    assert_eq!(tok.vocab_size(), fx.vocab_size);
    assert!(fx.cases.len() >= 16);
    let mut failures = vec![];
    for c in &fx.cases {
        let got = tok.encode(&c.text).unwrap();
        if got != c.ids {
            failures.push(format!("{:?}: rust {got:?} != python {:?}", c.text, c.ids));
            continue;
        }
        let dec = tok.decode(&got, false).unwrap();
        if dec != c.decoded {
            failures.push(format!("{:?}: decoded {dec:?} != python {:?}", c.text, c.decoded));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn roundtrip_and_streaming() {
    let tok = load();
    for s in ["The lighthouse keeper wrote 42 notes.", "naïve 你好 🚀", "  spaced\n\ttext  "] {
        let ids = tok.encode(s).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), s);
        let mut d = StreamDecoder::new();
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&d.push(&tok, id));
        }
        streamed.push_str(&d.finish(&tok));
        assert_eq!(streamed, s);
    }
    let eos = tok.eos_id().unwrap();
    assert_eq!(eos, 0);
    assert_eq!(tok.decode(&[eos], true).unwrap(), "");
    assert!(tok.decode(&[100_000], false).is_err());
}

#[test]
fn rejects_invalid_tokenizers() {
    assert!(Tokenizer::from_json_str(r#"{"model": {"type": "NoSuchModel", "vocab": {}}}"#).is_err());
    assert!(Tokenizer::from_json_str("not json").is_err());
}
