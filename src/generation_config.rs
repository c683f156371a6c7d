//! `generation_config.json` defaults: stop tokens and sampling settings the model ships with.

use std::path::Path;

use serde_json::Value;

use crate::engine::SamplingParams;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    pub max_new_tokens: Option<usize>,
    pub do_sample: bool,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

impl GenerationConfig {
    /// Reads `dir/generation_config.json` and falls back to config.json's token ids.
    /// A missing or unreadable file gives the defaults: it only holds suggestions.
    pub fn from_dir(dir: &Path, model_config: &Value) -> Self {
        let file: Value = std::fs::read_to_string(dir.join("generation_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let get = |key: &str| file.get(key).filter(|v| !v.is_null()).or_else(|| model_config.get(key));
        let number = |key: &str| get(key).and_then(Value::as_f64);
        Self {
            eos_token_ids: get("eos_token_id").map(token_ids).unwrap_or_default(),
            bos_token_id: get("bos_token_id").and_then(Value::as_u64).map(|v| v as u32),
            max_new_tokens: file.get("max_new_tokens").and_then(Value::as_u64).map(|v| v as usize),
            do_sample: file.get("do_sample").and_then(Value::as_bool).unwrap_or(false),
            temperature: number("temperature").map(|v| v as f32),
            top_k: number("top_k").map(|v| v as usize),
            top_p: number("top_p").map(|v| v as f32),
            repetition_penalty: number("repetition_penalty").map(|v| v as f32),
        }
    }

    /// The model's suggested sampling settings (greedy unless `do_sample`).
    pub fn sampling_defaults(&self) -> SamplingParams {
        let mut params = SamplingParams::default();
        if self.do_sample {
            params.temperature = self.temperature.unwrap_or(1.0);
            params.top_k = self.top_k.unwrap_or(0);
            params.top_p = self.top_p.unwrap_or(1.0);
        }
        params.repetition_penalty = self.repetition_penalty.unwrap_or(1.0);
        params
    }
}

/// `eos_token_id` is an integer or a list of them.
fn token_ids(value: &Value) -> Vec<u32> {
    match value {
        Value::Array(list) => list.iter().filter_map(Value::as_u64).map(|v| v as u32).collect(),
        other => other.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
    }
}
