//! The model behind a `MobileMoE` Java object: an adapter over `mobilemoe-backend`'s
//! [`PteModel`] (runtime wrapper), [`Tokenizer`] and [`Generator`] - the same generation loop,
//! sampling and stats as the `mobilemoe generate` command. Nothing model-specific is
//! re-implemented here: this file maps settings in and stats out.

use mobilemoe_executorch::generate::{GenerateConfig, Generator, PteModel, SamplingConfig};
use mobilemoe_executorch::tokenizer::{StreamDecoder, Tokenizer};

/// Settings of one `generate` call (from Java).
pub struct GenerateParams {
    pub max_new_tokens: usize,
    /// `<= 0`: greedy.
    pub temperature: f32,
    pub seed: u64,
}

/// What Java's `MobileMoE.Stats` receives.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// The prompt's forward call.
    pub prefill_seconds: f64,
    /// First sampled token to the end: `decode_steps` single-token forward calls.
    pub decode_seconds: f64,
    pub decode_steps: usize,
}

pub struct Engine {
    model: PteModel,
    tokenizer: Tokenizer,
}

/// `mobilemoe-jni <version> (blob format <n>)`.
pub fn version() -> String {
    format!(
        "mobilemoe-jni {} (blob format {})",
        env!("CARGO_PKG_VERSION"),
        mobilemoe_executorch::capi::mobilemoe_version()
    )
}

impl Engine {
    /// Loads the tokenizer and the program (registering the MobileMoE backend and kernels first:
    /// `Program::load` does it; on Android there is no load-time constructor).
    /// `threads == 0` keeps the kernel thread pool's default size.
    pub fn load(model: &str, tokenizer: &str, threads: usize) -> Result<Engine, String> {
        let tokenizer = Tokenizer::from_file(tokenizer).map_err(|e| format!("tokenizer {tokenizer}: {}", e.0))?;
        if threads > 0 && mobilemoe_executorch::capi::mobilemoe_set_num_threads(threads.min(i32::MAX as usize) as i32) != 0 {
            return Err(format!("cannot use {threads} threads"));
        }
        let model = PteModel::load(model).map_err(|e| if e.contains(model) { e } else { format!("{model}: {e}") })?;
        Ok(Engine { model, tokenizer })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        Ok(self.tokenizer.encode(text))
    }

    /// Generates after `prompt`, calling `on_token(id, text)` for each token; `text` is what the
    /// token completes (see [`StreamDecoder`]). `on_token` returning false stops generation.
    pub fn generate(
        &mut self,
        prompt: &str,
        params: &GenerateParams,
        on_token: &mut dyn FnMut(u32, &str) -> bool,
    ) -> Result<Stats, String> {
        let ids = self.tokenizer.encode(prompt);
        let cfg = GenerateConfig {
            max_new_tokens: params.max_new_tokens,
            sampling: SamplingConfig { temperature: params.temperature as f64, top_p: 1.0, seed: params.seed },
            eos_id: self.tokenizer.eos_id(),
        };
        let tokenizer = &self.tokenizer;
        let mut stream = StreamDecoder::new();
        let out = Generator::new(&mut self.model)
            .generate(&ids, &cfg, &mut |id| {
                let piece = stream.push(tokenizer, id);
                on_token(id, &piece)
            })
            .map_err(|e| e.to_string())?;
        let s = out.stats;
        Ok(Stats {
            prompt_tokens: s.prompt_tokens,
            generated_tokens: s.generated_tokens,
            prefill_seconds: s.prefill_s,
            decode_seconds: s.decode_s,
            decode_steps: s.generated_tokens.saturating_sub(1),
        })
    }
}
