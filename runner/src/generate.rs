//! Text-generation loop shared by the `mobilemoe generate` CLI and the Android JNI layer:
//! prefill + KV-cache decode over any [`LanguageModel`] (a loaded `.pte`: [`PteModel`]),
//! sampling with temperature / top-p / seed, a streaming callback, timing stats.
//!
//! Model contract (python_export `mobilemoe_export.models`): `forward(tokens int64 [1, S],
//! input_pos int64 [S]) -> logits`, whose last `vocab_size` floats are the last token's logits;
//! the KV cache lives inside the program. `max_seq_len` and `vocab_size` come from the method
//! metadata (upper bound of the token dimension, last dimension of the output).
//!
//! Sampling is the same as Python's `mobilemoe_export.generate.sample` (same RNG, same order of
//! operations in f64), so both runtimes produce the same tokens for the same logits and seed:
//! `temperature <= 0` is greedy (argmax, lowest index on ties); otherwise
//! `p_i = exp((l_i - max) / T)`, sorted descending (index ascending on ties), the shortest prefix
//! whose sum reaches `top_p * sum` is kept, `u = rng.next_f64() * kept_sum`, and the first token
//! whose running sum exceeds `u` is chosen. [`Rng`] is xorshift64* seeded through splitmix64.

use crate::runtime::RuntimeError;
use std::fmt;
use std::path::Path;
use std::time::Instant;

/// A causal LM with an internal KV cache.
pub trait LanguageModel {
    /// Run `tokens` at absolute positions `input_pos` (same length); return logits whose last
    /// [`vocab_size`](Self::vocab_size) values are the last token's.
    fn forward(&mut self, tokens: &[i64], input_pos: &[i64]) -> Result<Vec<f32>, RuntimeError>;
    /// Largest position + 1 (KV cache length).
    fn max_seq_len(&self) -> usize;
    fn vocab_size(&self) -> usize;
}

/// Errors of [`Generator::generate`].
#[derive(Debug, Clone, PartialEq)]
pub enum GenerateError {
    EmptyPrompt,
    PromptTooLong {
        prompt_tokens: usize,
        max_seq_len: usize,
    },
    InvalidConfig(String),
    /// The model's forward call failed (an ExecuTorch error keeps its code).
    Model(RuntimeError),
}

impl fmt::Display for GenerateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GenerateError::EmptyPrompt => write!(f, "empty prompt: at least one token is needed"),
            GenerateError::PromptTooLong { prompt_tokens, max_seq_len } => write!(
                f,
                "prompt is {prompt_tokens} tokens but the model's max_seq_len is {max_seq_len}: shorten the prompt or re-export with a larger --max-seq-len"
            ),
            GenerateError::InvalidConfig(m) => write!(f, "invalid generation settings: {m}"),
            GenerateError::Model(m) => write!(f, "model: {m}"),
        }
    }
}

impl std::error::Error for GenerateError {}

/// xorshift64* seeded with splitmix64 (identical to Python's `mobilemoe_export.generate.Rng`).
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng { state: if z == 0 { 0x2545_F491_4F6C_DD1D } else { z } }
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Sampling settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// `<= 0`: greedy.
    pub temperature: f64,
    /// Nucleus mass in (0, 1].
    pub top_p: f64,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig { temperature: 0.0, top_p: 1.0, seed: 0 }
    }
}

/// Index of the first maximum (NaN never wins).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    let mut bv = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > bv {
            bv = v;
            best = i;
        }
    }
    best
}

/// Pick a token from `logits` (see the module docs for the exact rule).
pub fn sample(logits: &[f32], cfg: &SamplingConfig, rng: &mut Rng) -> usize {
    if cfg.temperature <= 0.0 || logits.is_empty() {
        return argmax(logits);
    }
    let t = cfg.temperature;
    let l: Vec<f64> = logits.iter().map(|&v| if v.is_nan() { f64::NEG_INFINITY } else { v as f64 }).collect();
    let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return argmax(logits);
    }
    let p: Vec<f64> = l.iter().map(|&v| ((v - m) / t).exp()).collect();
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    let mut total = 0.0f64;
    for &i in &order {
        total += p[i];
    }
    let mut n = order.len();
    if cfg.top_p < 1.0 {
        let target = cfg.top_p * total;
        let mut acc = 0.0;
        for (k, &i) in order.iter().enumerate() {
            acc += p[i];
            if acc >= target {
                n = k + 1;
                break;
            }
        }
    }
    let mut kept = 0.0;
    for &i in &order[..n] {
        kept += p[i];
    }
    let u = rng.next_f64() * kept;
    let mut acc = 0.0;
    for &i in &order[..n] {
        acc += p[i];
        if acc > u {
            return i;
        }
    }
    order[n - 1]
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    MaxNewTokens,
    Eos,
    MaxSeqLen,
    Callback,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::MaxNewTokens => "max_new_tokens",
            StopReason::Eos => "eos",
            StopReason::MaxSeqLen => "max_seq_len",
            StopReason::Callback => "callback",
        })
    }
}

/// Timing statistics of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Prefill forward call.
    pub prefill_s: f64,
    /// Start of prefill to the first sampled token.
    pub ttft_s: f64,
    /// First sampled token to the end (decode of the remaining tokens).
    pub decode_s: f64,
    pub peak_rss_bytes: u64,
    pub stopped: StopReason,
}

impl GenerationStats {
    pub fn prefill_tok_s(&self) -> f64 {
        if self.prefill_s > 0.0 {
            self.prompt_tokens as f64 / self.prefill_s
        } else {
            f64::NAN
        }
    }
    pub fn decode_tok_s(&self) -> f64 {
        let n = self.generated_tokens.saturating_sub(1);
        if n > 0 && self.decode_s > 0.0 {
            n as f64 / self.decode_s
        } else {
            f64::NAN
        }
    }
    /// The two lines printed by both the Python and the Rust `generate` commands.
    pub fn report(&self) -> String {
        format!(
            "prompt tokens: {}, generated tokens: {} (stopped: {})\nTTFT: {:.1} ms, prefill: {:.1} tok/s, decode: {:.1} tok/s, peak RSS: {:.1} MiB",
            self.prompt_tokens,
            self.generated_tokens,
            self.stopped,
            self.ttft_s * 1e3,
            self.prefill_tok_s(),
            self.decode_tok_s(),
            self.peak_rss_bytes as f64 / 1048576.0
        )
    }
}

/// Settings of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    /// Stop after emitting this token (it is included in the output).
    pub eos_id: Option<u32>,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig { max_new_tokens: 64, sampling: SamplingConfig::default(), eos_id: None }
    }
}

/// Generated tokens + stats.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOutput {
    pub tokens: Vec<u32>,
    pub stats: GenerationStats,
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`; 0 if unknown).
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The generation loop over a model.
pub struct Generator<'m> {
    model: &'m mut dyn LanguageModel,
}

/// Largest number of prompt tokens per prefill call.
pub const PREFILL_CHUNK: usize = 256;

impl<'m> Generator<'m> {
    pub fn new(model: &'m mut dyn LanguageModel) -> Self {
        Generator { model }
    }

    /// Prefill `prompt` in chunks of at most [`PREFILL_CHUNK`] tokens (bounded scratch memory,
    /// like llama.cpp's batches), then decode one token per call. `on_token` is called with
    /// each sampled token; returning `false` stops generation. No cache reset is needed between
    /// two generations on the same model (cache slots are overwritten before they are read, and
    /// slots after the current position are masked).
    pub fn generate(
        &mut self,
        prompt: &[u32],
        cfg: &GenerateConfig,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<GenerationOutput, GenerateError> {
        let max_seq_len = self.model.max_seq_len();
        let vocab = self.model.vocab_size();
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        if prompt.len() > max_seq_len {
            return Err(GenerateError::PromptTooLong { prompt_tokens: prompt.len(), max_seq_len });
        }
        if !(cfg.sampling.top_p > 0.0 && cfg.sampling.top_p <= 1.0) {
            return Err(GenerateError::InvalidConfig(format!("top_p must be in (0, 1], got {}", cfg.sampling.top_p)));
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(GenerateError::InvalidConfig(format!("prompt token {bad} >= vocab size {vocab}")));
        }
        let mut rng = Rng::new(cfg.sampling.seed);
        let mut tokens = Vec::with_capacity(cfg.max_new_tokens);
        let mut stats = GenerationStats {
            prompt_tokens: prompt.len(),
            generated_tokens: 0,
            prefill_s: 0.0,
            ttft_s: 0.0,
            decode_s: 0.0,
            peak_rss_bytes: 0,
            stopped: StopReason::MaxNewTokens,
        };
        if cfg.max_new_tokens == 0 {
            stats.peak_rss_bytes = peak_rss_bytes();
            return Ok(GenerationOutput { tokens, stats });
        }
        let ids: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
        let pos: Vec<i64> = (0..ids.len() as i64).collect();
        let t0 = Instant::now();
        let mut logits = Vec::new();
        for (c_ids, c_pos) in ids.chunks(PREFILL_CHUNK).zip(pos.chunks(PREFILL_CHUNK)) {
            logits = self.model.forward(c_ids, c_pos).map_err(GenerateError::Model)?;
        }
        stats.prefill_s = t0.elapsed().as_secs_f64();
        let mut next_pos = prompt.len();
        let mut decode_start = None;
        loop {
            if logits.len() < vocab {
                return Err(GenerateError::Model(RuntimeError::Runtime(format!(
                    "logits have {} values, vocab size is {vocab}",
                    logits.len()
                ))));
            }
            let last = &logits[logits.len() - vocab..];
            let tok = sample(last, &cfg.sampling, &mut rng) as u32;
            tokens.push(tok);
            if tokens.len() == 1 {
                stats.ttft_s = t0.elapsed().as_secs_f64();
                decode_start = Some(Instant::now());
            }
            if !on_token(tok) {
                stats.stopped = StopReason::Callback;
                break;
            }
            if cfg.eos_id == Some(tok) {
                stats.stopped = StopReason::Eos;
                break;
            }
            if tokens.len() >= cfg.max_new_tokens {
                break;
            }
            if next_pos >= max_seq_len {
                stats.stopped = StopReason::MaxSeqLen;
                break;
            }
            logits = self.model.forward(&[tok as i64], &[next_pos as i64]).map_err(GenerateError::Model)?;
            next_pos += 1;
        }
        if let Some(d) = decode_start {
            stats.decode_s = d.elapsed().as_secs_f64();
        }
        stats.generated_tokens = tokens.len();
        stats.peak_rss_bytes = peak_rss_bytes();
        Ok(GenerationOutput { tokens, stats })
    }
}

/// A `.pte` exported by python_export, run on the ExecuTorch runtime ([`crate::runtime`]).
pub struct PteModel {
    prog: crate::runtime::Program,
    method: String,
    max_seq_len: usize,
    vocab_size: usize,
}

impl PteModel {
    /// Load `path` and its `forward` method; read `max_seq_len` / `vocab_size` from the metadata.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, RuntimeError> {
        Self::load_method(path, "forward")
    }

    pub fn load_method(path: impl AsRef<Path>, method: &str) -> Result<Self, RuntimeError> {
        let path = path.as_ref();
        let mut prog = crate::runtime::Program::load(path)?;
        let meta = prog.method(method)?.meta().clone();
        let bad = |m: &str| {
            RuntimeError::Runtime(format!(
                "{}: {m} (expected forward(tokens int64 [1, S], input_pos int64 [S]) -> float32 logits)",
                path.display()
            ))
        };
        if meta.inputs.len() != 2 || meta.outputs.is_empty() {
            return Err(bad(&format!("method {method} has {} inputs / {} outputs", meta.inputs.len(), meta.outputs.len())));
        }
        let (tok, out) = (&meta.inputs[0], &meta.outputs[0]);
        if tok.dtype != crate::runtime::dtype::LONG || tok.dims.len() != 2 || out.dtype != crate::runtime::dtype::FLOAT {
            return Err(bad("unexpected input/output types"));
        }
        let max_seq_len = tok.dims[1].max(0) as usize;
        let vocab_size = out.dims.last().copied().unwrap_or(0).max(0) as usize;
        if max_seq_len == 0 || vocab_size == 0 {
            return Err(bad("zero max_seq_len or vocab size"));
        }
        Ok(PteModel { prog, method: method.to_string(), max_seq_len, vocab_size })
    }
}

impl LanguageModel for PteModel {
    fn forward(&mut self, tokens: &[i64], input_pos: &[i64]) -> Result<Vec<f32>, RuntimeError> {
        let n = tokens.len() as i64;
        let mut m = self.prog.method(&self.method)?;
        m.set_input_i64(0, tokens, &[1, n])?;
        m.set_input_i64(1, input_pos, &[n])?;
        m.execute()?;
        let (_, data) = m.output(0).and_then(|v| v.into_f32())?;
        Ok(data)
    }
    fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

#[cfg(test)]
const RNG_SEED0: [u64; 3] = [8916199331640804048, 16032783972208265725, 12954103179475586193];
#[cfg(test)]
const RNG_SEED42_F64: f64 = 0.1941059175341826;

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy LM: logits favour (last token + 1) % V; records the calls.
    struct Toy {
        calls: Vec<(Vec<i64>, Vec<i64>)>,
        max: usize,
    }

    impl LanguageModel for Toy {
        fn forward(&mut self, tokens: &[i64], pos: &[i64]) -> Result<Vec<f32>, RuntimeError> {
            self.calls.push((tokens.to_vec(), pos.to_vec()));
            let mut l = vec![0.0f32; 8];
            l[((tokens[tokens.len() - 1] + 1) % 8) as usize] = 5.0;
            Ok(l)
        }
        fn max_seq_len(&self) -> usize {
            self.max
        }
        fn vocab_size(&self) -> usize {
            8
        }
    }

    #[test]
    fn rng_matches_python_reference() {
        // values from mobilemoe_export.generate.Rng
        let mut r = Rng::new(0);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(got, RNG_SEED0);
        let mut r = Rng::new(42);
        assert_eq!(r.next_f64(), RNG_SEED42_F64);
    }

    #[test]
    fn sampling_matches_python_reference() {
        // python: l = (np.sin(np.arange(50) * 1.3) * 3).astype(np.float32); r = Rng(7);
        //         [sample(l, T, top_p, r) for _ in range(12)]
        let l: Vec<f32> = (0..50).map(|i| ((i as f64 * 1.3).sin() * 3.0) as f32).collect();
        let mut r = Rng::new(7);
        let c = SamplingConfig { temperature: 0.8, top_p: 0.9, seed: 7 };
        let got: Vec<usize> = (0..12).map(|_| sample(&l, &c, &mut r)).collect();
        assert_eq!(got, [35, 11, 40, 1, 45, 16, 30, 16, 45, 40, 11, 6]);
        let mut r = Rng::new(7);
        let c = SamplingConfig { temperature: 1.5, top_p: 1.0, seed: 7 };
        let got: Vec<usize> = (0..12).map(|_| sample(&l, &c, &mut r)).collect();
        assert_eq!(got, [6, 30, 1, 21, 20, 49, 16, 20, 44, 16, 30, 40]);
    }

    #[test]
    fn greedy_prefill_decode_positions() {
        let mut m = Toy { calls: vec![], max: 16 };
        let cfg = GenerateConfig { max_new_tokens: 4, ..Default::default() };
        let mut streamed = vec![];
        let out = Generator::new(&mut m).generate(&[3, 4], &cfg, &mut |t| {
            streamed.push(t);
            true
        });
        let out = out.unwrap();
        assert_eq!(out.tokens, vec![5, 6, 7, 0]);
        assert_eq!(streamed, out.tokens);
        assert_eq!(out.stats.stopped, StopReason::MaxNewTokens);
        assert_eq!(m.calls[0], (vec![3, 4], vec![0, 1]));
        assert_eq!(m.calls[1], (vec![5], vec![2]));
        assert_eq!(m.calls.len(), 4);
    }

    #[test]
    fn errors_and_stops() {
        let mut m = Toy { calls: vec![], max: 4 };
        let cfg = GenerateConfig { max_new_tokens: 10, ..Default::default() };
        let e = Generator::new(&mut m).generate(&[1, 2, 3, 4, 5], &cfg, &mut |_| true).unwrap_err();
        assert_eq!(e, GenerateError::PromptTooLong { prompt_tokens: 5, max_seq_len: 4 });
        assert!(e.to_string().contains("max_seq_len is 4"));
        assert_eq!(Generator::new(&mut m).generate(&[], &cfg, &mut |_| true).unwrap_err(), GenerateError::EmptyPrompt);
        let out = Generator::new(&mut m).generate(&[1, 2], &cfg, &mut |_| true).unwrap();
        assert_eq!(out.stats.stopped, StopReason::MaxSeqLen);
        assert_eq!(out.tokens.len(), 3); // positions 2, 3 decoded + the prefill token
        let cfg = GenerateConfig { max_new_tokens: 10, eos_id: Some(4), ..Default::default() };
        let out = Generator::new(&mut m).generate(&[2], &cfg, &mut |_| true).unwrap();
        assert_eq!((out.tokens.clone(), out.stats.stopped), (vec![3, 4], StopReason::Eos));
    }

    #[test]
    fn sampling_rules() {
        let mut rng = Rng::new(1);
        let l = [1.0f32, 3.0, 3.0, -1.0];
        assert_eq!(sample(&l, &SamplingConfig::default(), &mut rng), 1);
        // top_p tiny keeps only the best (lowest index among equal)
        let c = SamplingConfig { temperature: 1.0, top_p: 1e-6, seed: 0 };
        for _ in 0..20 {
            assert_eq!(sample(&l, &c, &mut rng), 1);
        }
        // top_p 1: every token can appear, frequencies follow the softmax
        let c = SamplingConfig { temperature: 1.0, top_p: 1.0, seed: 0 };
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            counts[sample(&l, &c, &mut rng)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
        assert!((counts[1] as f64 / counts[2] as f64 - 1.0).abs() < 0.15, "{counts:?}");
        assert_eq!(sample(&[f32::NAN, 0.5, f32::NAN], &c, &mut rng), 1);
    }
}
