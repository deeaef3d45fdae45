//! The runner's tokenizer (the `tokenizers` crate) equals Python's `tokenizers` on a text corpus,
//! for each kind of tokenizer: byte-level BPE (the default model's), SentencePiece-style Unigram
//! with Metaspace and normalizers, Llama-style BPE with byte fallback, WordPiece.
//! `tokenizer_parity.py` (next to this file) trains the last three, encodes and decodes the corpus
//! in Python; here the same files are loaded, the corpus encoded (ids must be equal) and Python's
//! ids, plus id sequences drawn from the whole vocabulary, decoded (text must be equal), with and
//! without special tokens, in one call and streamed token by token (against the Python runner's
//! `StreamPrinter`).
//!
//! Needs `.venv/bin/python` (or `MOBILEMOE_PYTHON`) with `tokenizers`: a visible skip without it,
//! a failure under `make test` (`MOBILEMOE_NO_SKIP=1`).

use mobilemoe_runner::tokenizer::{StreamDecoder, Tokenizer};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Deserialize)]
struct Reference {
    tokenizers_version: String,
    kinds: Vec<Kind>,
}

#[derive(Deserialize)]
struct Kind {
    name: String,
    tokenizer: PathBuf,
    vocab_size: usize,
    cases: Vec<Case>,
    decode_only: Vec<Decoded>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
    decoded_skip: String,
    streamed: String,
}

#[derive(Deserialize)]
struct Decoded {
    ids: Vec<u32>,
    decoded: String,
    decoded_skip: String,
    streamed: String,
}

/// A missing prerequisite: a visible skip, or (under `make test`, `MOBILEMOE_NO_SKIP=1`) a failure.
fn skip(msg: &str) {
    if std::env::var_os("MOBILEMOE_NO_SKIP").is_some_and(|v| v != "0") {
        panic!("MOBILEMOE_NO_SKIP is set, so this cannot be skipped: {msg}");
    }
    eprintln!("SKIPPED: {msg}");
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Runs the Python side into `out`; None (after `skip`) when Python or its `tokenizers` is missing.
fn python_reference(out: &Path) -> Option<Reference> {
    let python = std::env::var_os("MOBILEMOE_PYTHON").map(PathBuf::from).unwrap_or_else(|| repo().join(".venv/bin/python"));
    if !python.exists() {
        skip(&format!("needs {} (`make venv`) with the tokenizers package", python.display()));
        return None;
    }
    let probe = Command::new(&python).args(["-c", "import tokenizers"]).output().expect("run python");
    if !probe.status.success() {
        skip(&format!("{} cannot import tokenizers: {}", python.display(), String::from_utf8_lossy(&probe.stderr)));
        return None;
    }
    let run = Command::new(&python).arg(repo().join("runner/tests/tokenizer_parity.py")).arg(out).output().expect("run python");
    assert!(
        run.status.success(),
        "tokenizer_parity.py failed:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&run.stdout));
    let text = std::fs::read_to_string(out.join("cases.json")).unwrap();
    Some(serde_json::from_str(&text).unwrap())
}

fn streamed(tok: &Tokenizer, ids: &[u32]) -> String {
    let mut decoder = StreamDecoder::new();
    let mut text: String = ids.iter().map(|&id| decoder.push(tok, id)).collect();
    text.push_str(&decoder.finish(tok));
    text
}

/// Differences of one kind, as readable lines (empty = parity).
fn compare(kind: &Kind) -> Vec<String> {
    let tok = Tokenizer::from_file(&kind.tokenizer).unwrap_or_else(|e| panic!("{}: {e}", kind.name));
    let mut diffs = vec![];
    if tok.vocab_size() != kind.vocab_size {
        diffs.push(format!("vocab size: rust {} != python {}", tok.vocab_size(), kind.vocab_size));
    }
    for c in &kind.cases {
        let ids = tok.encode(&c.text).unwrap_or_else(|e| panic!("{}: encode {:?}: {e}", kind.name, c.text));
        if ids != c.ids {
            diffs.push(format!("encode {:?}: rust {ids:?} != python {:?}", c.text, c.ids));
        }
    }
    let decoded = kind.cases.iter().map(|c| (&c.ids, &c.decoded, &c.decoded_skip, &c.streamed));
    for (ids, want, want_skip, want_stream) in
        decoded.chain(kind.decode_only.iter().map(|d| (&d.ids, &d.decoded, &d.decoded_skip, &d.streamed)))
    {
        let got = tok.decode(ids, false).unwrap();
        if &got != want {
            diffs.push(format!("decode {ids:?}: rust {got:?} != python {want:?}"));
        }
        let got_skip = tok.decode(ids, true).unwrap();
        if &got_skip != want_skip {
            diffs.push(format!("decode {ids:?} (skip special): rust {got_skip:?} != python {want_skip:?}"));
        }
        let got_stream = streamed(&tok, ids);
        if &got_stream != want_stream {
            diffs.push(format!("streamed {ids:?}: rust {got_stream:?} != python {want_stream:?}"));
        }
    }
    diffs
}

#[test]
fn equals_python_tokenizers_on_every_kind() {
    let out = std::env::temp_dir().join(format!("mmoe-tokenizer-parity-{}", std::process::id()));
    let Some(reference) = python_reference(&out) else { return };
    let names: Vec<&str> = reference.kinds.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["byte_level_bpe", "unigram_metaspace", "bpe_metaspace_byte_fallback", "wordpiece"]);
    let mut failures = vec![];
    for kind in &reference.kinds {
        assert!(kind.cases.len() >= 100, "{}: a corpus of {} texts is too small", kind.name, kind.cases.len());
        let diffs = compare(kind);
        eprintln!(
            "{}: {} texts encoded, {} id sequences decoded, {} differences (python tokenizers {})",
            kind.name,
            kind.cases.len(),
            kind.cases.len() + kind.decode_only.len(),
            diffs.len(),
            reference.tokenizers_version
        );
        failures.extend(diffs.into_iter().take(10).map(|d| format!("{}: {d}", kind.name)));
    }
    let _ = std::fs::remove_dir_all(&out);
    assert!(failures.is_empty(), "the Rust tokenizer differs from Python's:\n{}", failures.join("\n"));
}
