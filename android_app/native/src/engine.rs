//! The model behind a `MobileMoE` Java object: an adapter over `mobilemoe-runner`'s
//! [`PteModel`] (runtime wrapper), [`Tokenizer`] and [`Generator`] - the same generation loop,
//! sampling and stats as the `mobilemoe generate` command. Nothing model-specific is
//! re-implemented here: this file maps settings in and stats out.

use mobilemoe_runner::generate::{GenerateConfig, GenerateError, Generator, PteModel, SamplingConfig};
use mobilemoe_runner::runtime::RuntimeError;
use mobilemoe_runner::tokenizer::{StreamDecoder, Tokenizer};

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

/// A failed call, with the `executorch::runtime::Error` number behind it when ExecuTorch (or the
/// MobileMoE backend through it) returned one: the JNI layer picks the Java exception from it.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineError {
    pub executorch: Option<u32>,
    pub message: String,
}

impl From<String> for EngineError {
    fn from(message: String) -> Self {
        Self { executorch: None, message }
    }
}

impl From<RuntimeError> for EngineError {
    fn from(e: RuntimeError) -> Self {
        Self { executorch: e.executorch_error(), message: e.to_string() }
    }
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub struct Engine {
    model: PteModel,
    tokenizer: Tokenizer,
}

/// `mobilemoe-jni <version> (blob format <n>)`.
pub fn version() -> String {
    format!("mobilemoe-jni {} (blob format {})", env!("CARGO_PKG_VERSION"), mobilemoe_executorch::capi::mobilemoe_version())
}

impl Engine {
    /// Loads the tokenizer and the program (registering the MobileMoE backend and kernels first:
    /// `Program::load` does it; on Android there is no load-time constructor).
    /// `threads == 0`: `MOBILEMOE_THREADS` if set, else the performance cores (see
    /// [`performance_cores`]), else the kernel thread pool's default (all CPUs).
    pub fn load(model: &str, tokenizer: &str, threads: usize) -> Result<Engine, EngineError> {
        let tokenizer = Tokenizer::from_file(tokenizer).map_err(|e| format!("tokenizer {tokenizer}: {}", e.0))?;
        let threads = match threads {
            0 if std::env::var_os("MOBILEMOE_THREADS").is_none() => performance_cores().unwrap_or(0),
            n => n,
        };
        if threads > 0 && mobilemoe_executorch::capi::mobilemoe_set_num_threads(threads.min(i32::MAX as usize) as i32) != 0 {
            return Err(format!("cannot use {threads} threads").into());
        }
        let model = PteModel::load(model).map_err(|e| {
            let mut e = EngineError::from(e);
            if !e.message.contains(model) {
                e.message = format!("{model}: {}", e.message);
            }
            e
        })?;
        Ok(Engine { model, tokenizer })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.tokenizer.encode(text).map_err(|e| e.to_string())
    }

    /// Generates after `prompt`, calling `on_token(id, text)` for each token; `text` is what the
    /// token completes (see [`StreamDecoder`]). `on_token` returning false stops generation.
    pub fn generate(
        &mut self,
        prompt: &str,
        params: &GenerateParams,
        on_token: &mut dyn FnMut(u32, &str) -> bool,
    ) -> Result<Stats, EngineError> {
        let ids = self.tokenizer.encode(prompt).map_err(|e| e.to_string())?;
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
            .map_err(|e| match e {
                GenerateError::Model(m) => EngineError { executorch: m.executorch_error(), message: format!("model: {m}") },
                other => EngineError::from(other.to_string()),
            })?;
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

/// On a big.LITTLE phone, the CPUs whose maximum frequency is at least 80 % of the fastest one's
/// (prime + big cores): the kernels split work evenly, so a little core would hold everyone up.
/// `None` when cpufreq is not readable (e.g. in a VM) or every core is alike.
pub fn performance_cores() -> Option<usize> {
    let n = std::thread::available_parallelism().ok()?.get();
    let freqs = (0..n)
        .map(|cpu| {
            let p = format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq");
            std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok()
        })
        .collect::<Option<Vec<u64>>>()?;
    big_cores(&freqs)
}

fn big_cores(max_freqs: &[u64]) -> Option<usize> {
    let fastest = *max_freqs.iter().max()?;
    let big = max_freqs.iter().filter(|&&f| f * 5 >= fastest * 4).count();
    (big < max_freqs.len()).then_some(big)
}

#[cfg(test)]
mod tests {
    #[test]
    fn big_cores() {
        // Snapdragon 8 Gen 2: 1 x 3.19 GHz, 4 x 2.8 GHz, 3 x 2.0 GHz.
        let sd8g2 = [2016000, 2016000, 2016000, 2803200, 2803200, 2803200, 2803200, 3187200];
        assert_eq!(super::big_cores(&sd8g2), Some(5));
        // 2 big + 6 little.
        assert_eq!(super::big_cores(&[1800000, 1800000, 1800000, 1800000, 1800000, 1800000, 2400000, 2400000]), Some(2));
        // Homogeneous: keep the pool's default.
        assert_eq!(super::big_cores(&[3000000; 4]), None);
        assert_eq!(super::big_cores(&[]), None);
    }
}
