//! The runner's tokenizer: a Hugging Face `tokenizer.json` loaded by the `tokenizers` crate (the
//! library behind Python's `tokenizers`), so every model, normalizer, pre-tokenizer, decoder,
//! post-processor and added/special token that Python accepts works here with the same ids:
//! byte-level BPE (GPT-2 style), SentencePiece-style Unigram or BPE with Metaspace, WordPiece, ...
//!
//! Built without the C regex library (`fancy-regex` instead of oniguruma), so it cross-compiles
//! for Android like the rest of the runner.
//!
//! Conventions match `mobilemoe_export.generate` (Python): [`Tokenizer::encode`] applies the
//! tokenizer's post-processor (`add_special_tokens=True`, e.g. a BOS for Llama-style tokenizers;
//! nothing for the shipped byte-level BPE), and streaming output skips special tokens.
//!
//! Parity with Python on a corpus, for each kind of tokenizer: `runner/tests/tokenizer_parity.rs`.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// Tokenizer error (load, encode or decode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerError(pub String);

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tokenizer: {}", self.0)
    }
}

impl std::error::Error for TokenizerError {}

fn hf_error(what: &str, e: tokenizers::Error) -> TokenizerError {
    TokenizerError(format!("{what}: {e}"))
}

/// Tokens that end a generation, in the order they are looked for.
const EOS_TOKENS: [&str; 5] = ["<|endoftext|>", "</s>", "<eos>", "<|eot_id|>", "<|im_end|>"];

/// A loaded `tokenizer.json`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer").field("vocab_size", &self.vocab_size()).finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| TokenizerError(format!("cannot read {}: {e}", path.display())))?;
        Self::from_json_str(&text).map_err(|e| TokenizerError(format!("{}: {}", path.display(), e.0)))
    }

    /// Parses the contents of a `tokenizer.json`.
    pub fn from_json_str(text: &str) -> Result<Self, TokenizerError> {
        // The tokenizers crate panics on some malformed files (a `decoder` whose fields do not
        // deserialize, found by fuzzing): a user's file must give an error, not abort the app.
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_str(text))
            .map_err(|_| TokenizerError("invalid tokenizer.json: the tokenizers library panicked while reading it".into()))?;
        let inner = parsed.map_err(|e| hf_error("invalid tokenizer.json", e))?;
        Ok(Tokenizer { inner })
    }

    /// The `tokenizers` crate's tokenizer, for anything this wrapper does not offer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Number of ids, added tokens included (Python's `get_vocab_size()`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The end-of-text token (`<|endoftext|>`, `</s>`, `<eos>`, `<|eot_id|>` or `<|im_end|>`), if
    /// the vocabulary has one.
    pub fn eos_id(&self) -> Option<u32> {
        EOS_TOKENS.iter().find_map(|t| self.token_to_id(t))
    }

    /// Encodes text to ids, with the post-processor's special tokens (as Python's
    /// `tokenizer.encode(text).ids`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.encode_with(text, true)
    }

    /// Encodes text to ids, with the post-processor's special tokens or without them (a rendered
    /// chat template spells out the special tokens it wants).
    pub fn encode_with(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| hf_error("encode", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text (as Python's `tokenizer.decode(ids, skip_special_tokens)`); an id
    /// outside the vocabulary is an error (the crate would drop it silently).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        if let Some(&bad) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(TokenizerError(format!("id {bad} is not in the vocabulary ({} ids)", self.vocab_size())));
        }
        self.inner.decode(ids, skip_special).map_err(|e| hf_error("decode", e))
    }
}

/// Incremental detokenizer for streaming (special tokens skipped): feed ids, get the text each
/// completes; the same output as Python's `mobilemoe_export.generate.StreamPrinter`.
///
/// A character split across tokens (byte-level BPE, byte fallback) is held back until it is whole,
/// and decoders that depend on context (Metaspace's leading space, WordPiece's `##`) see it. Each
/// step decodes a short window of recent ids (the `tokenizers` crate's `DecodeStream`); when the
/// window's text stops extending what was printed (invalid byte sequences), it falls back to
/// decoding every id so far and printing the characters beyond those already printed, which is
/// what the Python runner does at every step.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    window: Vec<u32>,
    prefix: String,
    prefix_index: usize,
    all: Vec<u32>,
    printed_chars: usize,
    full_decode: bool,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a token; returns the text that became printable (possibly empty). An id outside
    /// the vocabulary prints U+FFFD.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        if tok.inner.id_to_token(id).is_none() {
            let mut text = self.finish(tok);
            text.push('\u{FFFD}');
            return text;
        }
        self.all.push(id);
        if !self.full_decode {
            let step =
                tokenizers::step_decode_stream(&tok.inner, vec![id], true, &mut self.window, &mut self.prefix, &mut self.prefix_index);
            match step {
                Ok(text) => {
                    let text = text.unwrap_or_default();
                    self.printed_chars += text.chars().count();
                    return text;
                }
                Err(_) => self.full_decode = true,
            }
        }
        match tok.inner.decode(&self.all, true) {
            Ok(text) if !text.ends_with('\u{FFFD}') => self.beyond_printed(&text),
            _ => String::new(),
        }
    }

    /// Flushes what is held back (an incomplete character becomes U+FFFD) and starts over.
    pub fn finish(&mut self, tok: &Tokenizer) -> String {
        let rest = tok.inner.decode(&self.all, true).map(|text| self.beyond_printed(&text)).unwrap_or_default();
        *self = Self::new();
        rest
    }

    fn beyond_printed(&mut self, text: &str) -> String {
        let new: String = text.chars().skip(self.printed_chars).collect();
        self.printed_chars += new.chars().count();
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GPT-2's printable stand-in for each byte (the byte-level alphabet).
    fn byte_char(b: u8) -> char {
        let printable = |c: u8| matches!(c, 33..=126 | 161..=172 | 174..=255);
        if printable(b) {
            return b as char;
        }
        let rank = (0..b).filter(|&c| !printable(c)).count() as u32;
        char::from_u32(256 + rank).unwrap()
    }

    /// A tiny byte-level BPE: every byte is a token, plus the merge "a b" and one special token.
    fn tiny() -> Tokenizer {
        let vocab: Vec<String> =
            (0u8..=255).map(|b| format!("{}: {}", serde_json::json!(byte_char(b).to_string()), b as u32 + 1)).collect();
        let json = format!(
            r#"{{"version": "1.0", "truncation": null, "padding": null,
               "added_tokens": [{{"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                                  "rstrip": false, "normalized": false, "special": true}}],
               "normalizer": null,
               "pre_tokenizer": {{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}},
               "post_processor": null,
               "decoder": {{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}},
               "model": {{"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                          "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                          "vocab": {{"<|endoftext|>": 0, {}, "ab": 257}}, "merges": ["a b"]}}}}"#,
            vocab.join(", ")
        );
        Tokenizer::from_json_str(&json).unwrap()
    }

    #[test]
    fn encode_merges_and_specials() {
        let t = tiny();
        assert_eq!(t.vocab_size(), 258);
        assert_eq!(t.encode("ab").unwrap(), vec![257]);
        assert_eq!(t.encode("abc<|endoftext|>").unwrap(), vec![257, b'c' as u32 + 1, 0]);
        assert_eq!(t.eos_id(), Some(0));
        assert_eq!(t.decode(&[257, 0], false).unwrap(), "ab<|endoftext|>");
        assert_eq!(t.decode(&[257, 0], true).unwrap(), "ab");
        assert!(t.decode(&[9999], false).is_err());
    }

    #[test]
    fn stream_holds_back_split_characters() {
        let t = tiny();
        let ids = t.encode("é!").unwrap(); // é is two bytes: two byte tokens
        assert_eq!(ids.len(), 3);
        let mut d = StreamDecoder::new();
        assert_eq!(d.push(&t, ids[0]), "");
        assert_eq!(d.push(&t, ids[1]), "é");
        assert_eq!(d.push(&t, ids[2]), "!");
        assert_eq!(d.finish(&t), "");
        // A dangling first byte is flushed as U+FFFD.
        assert_eq!(d.push(&t, ids[0]), "");
        assert_eq!(d.finish(&t), "\u{FFFD}");
        // Unknown ids print U+FFFD; special tokens print nothing.
        assert_eq!(d.push(&t, 9999), "\u{FFFD}");
        assert_eq!(d.push(&t, 0), "");
    }

    #[test]
    fn rejects_invalid_files() {
        assert!(Tokenizer::from_json_str("not json").is_err());
        assert!(Tokenizer::from_json_str(r#"{"model": {"type": "NoSuchModel"}}"#).is_err());
        assert!(Tokenizer::from_file("/nonexistent/tokenizer.json").unwrap_err().0.contains("/nonexistent"));
    }
}
