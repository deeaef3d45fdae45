//! The `tokenizer_config.json` beside a tokenizer (what `python -m mobilemoe_export --hf` writes
//! next to the .pte): its end-of-text token and its chat template (Jinja, rendered with minijinja
//! the way transformers renders it with jinja2: `trim_blocks`, `lstrip_blocks`, loop controls,
//! `raise_exception`, Python string methods).

use std::path::Path;

/// What the runner uses from a Hugging Face `tokenizer_config.json`.
#[derive(Clone, Debug, Default)]
pub struct TokenizerConfig {
    pub eos_token: Option<String>,
    pub bos_token: Option<String>,
    pub chat_template: Option<String>,
}

/// Special tokens are stored as strings or as AddedToken objects (`{"content": ...}`).
fn token_str(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

impl TokenizerConfig {
    /// The config in `tokenizer_json`'s directory; the default (nothing) if there is none.
    pub fn beside(tokenizer_json: &Path) -> Result<Self, String> {
        let p = tokenizer_json.parent().unwrap_or(Path::new(".")).join("tokenizer_config.json");
        if !p.is_file() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        Self::from_json_str(&text).map_err(|e| format!("{}: {e}", p.display()))
    }

    pub fn from_json_str(text: &str) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        // A list of named templates: transformers uses "default".
        let chat_template = match v.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
            _ => None,
        };
        Ok(Self { eos_token: token_str(v.get("eos_token")), bos_token: token_str(v.get("bos_token")), chat_template })
    }

    /// `user_text` as one user turn of the chat template, with the generation prompt appended.
    pub fn chat_prompt(&self, user_text: &str) -> Result<String, String> {
        let template = self.chat_template.as_deref().ok_or("the tokenizer config has no chat template")?;
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", template).map_err(|e| format!("chat template: {e}"))?;
        let ctx = minijinja::context! {
            messages => vec![minijinja::context! { role => "user", content => user_text }],
            add_generation_prompt => true,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        };
        env.get_template("chat").and_then(|t| t.render(ctx)).map_err(|e| format!("chat template: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_a_chatml_template() {
        let cfg = TokenizerConfig::from_json_str(
            r#"{"eos_token": {"content": "<|im_end|>"}, "bos_token": "<s>",
                "chat_template": "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'].strip() + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"}"#,
        )
        .unwrap();
        assert_eq!(cfg.eos_token.as_deref(), Some("<|im_end|>"));
        assert_eq!(cfg.bos_token.as_deref(), Some("<s>"));
        assert_eq!(cfg.chat_prompt(" Hi ").unwrap(), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn raise_exception_and_missing_template_are_errors() {
        let cfg = TokenizerConfig::from_json_str(r#"{"chat_template": "{{ raise_exception('only system turns') }}"}"#).unwrap();
        assert!(cfg.chat_prompt("x").unwrap_err().contains("only system turns"));
        let none = TokenizerConfig::from_json_str("{}").unwrap();
        assert!(none.chat_prompt("x").unwrap_err().contains("no chat template"));
    }
}
