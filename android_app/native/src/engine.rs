//! Adapter over mobilemoe-backend (provisional until backend/src/generate.rs lands).

pub struct GenerateParams {
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub seed: u64,
}

#[derive(Default)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    pub decode_steps: usize,
}

pub struct Engine;

pub fn version() -> String {
    format!("mobilemoe-jni {}", env!("CARGO_PKG_VERSION"))
}

impl Engine {
    pub fn load(model: &str, tokenizer: &str, _threads: usize) -> Result<Engine, String> {
        for p in [model, tokenizer] {
            if !std::path::Path::new(p).is_file() {
                return Err(format!("{p}: no such file"));
            }
        }
        let _ = mobilemoe_executorch::runtime::Program::load(model).map_err(|e| e.to_string())?;
        Err("generation is not wired yet".into())
    }
    pub fn encode(&self, _text: &str) -> Result<Vec<u32>, String> {
        Err("not wired".into())
    }
    pub fn generate(&mut self, _prompt: &str, _p: &GenerateParams, _on_token: &mut dyn FnMut(u32, &str) -> bool) -> Result<Stats, String> {
        Err("not wired".into())
    }
}
