//! The runner's tokenizer input paths (what `mobilemoe generate` and the Android app feed it):
//! a `tokenizer.json` from the user, any prompt text, any ids a model may produce (the streaming
//! decoder included). Errors are fine; a panic is a bug.

use mobilemoe_runner::tokenizer::{StreamDecoder, Tokenizer};
use std::sync::OnceLock;

/// The shipped byte-level BPE tokenizer (loaded once per process).
fn shipped() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../python_export/mobilemoe_export/assets/tokenizer.json");
        Tokenizer::from_file(p).expect("the repository's tokenizer.json")
    })
}

/// First byte: 0 = the rest is a tokenizer.json, 1 = prompt text (encode, then decode what came
/// out: byte-level BPE reproduces valid UTF-8 exactly), else = ids (u16 little endian, some past
/// the vocabulary) through `decode` and the streaming decoder.
pub fn tokenizer(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            if let Ok(json) = std::str::from_utf8(rest) {
                // `from_json_str` turns a panic inside the tokenizers crate into an error (it has
                // such panics on malformed decoders); libFuzzer's panic hook would abort before
                // that catch, so the hook is silenced around the call. A panic escaping it would
                // still fail the run (it unwinds into libFuzzer's own catch).
                let hook = std::panic::take_hook();
                std::panic::set_hook(Box::new(|_| {}));
                let parsed = Tokenizer::from_json_str(json);
                std::panic::set_hook(hook);
                if let Ok(t) = parsed {
                    let ids = t.encode("To be, or not to be").unwrap_or_default();
                    let _ = t.decode(&ids, false);
                }
            }
        }
        1 => {
            let tok = shipped();
            if let Ok(text) = std::str::from_utf8(rest) {
                let ids = tok.encode(text).expect("encoding valid UTF-8");
                let back = tok.decode(&ids, false).expect("decoding the ids the tokenizer produced");
                assert_eq!(back, text, "byte-level BPE must round-trip valid UTF-8");
            } else {
                let _ = tok.encode(&String::from_utf8_lossy(rest));
            }
        }
        _ => {
            let tok = shipped();
            let vocab = tok.vocab_size() as u32;
            let ids: Vec<u32> = rest.chunks(2).map(|c| u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32 % (vocab + 8)).collect();
            let whole = tok.decode(&ids, true);
            assert_eq!(whole.is_ok(), ids.iter().all(|&i| i < vocab), "decode errs exactly on ids outside the vocabulary");
            let mut d = StreamDecoder::new();
            for &id in &ids {
                let _ = d.push(tok, id);
            }
            let _ = d.finish(tok);
        }
    }
}
