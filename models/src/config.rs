//! `config.json` as Hugging Face writes it for Llama/Mistral, Mixtral and Qwen2, in both
//! the transformers 4 spelling (`rope_theta`, `rope_scaling`, `torch_dtype`) and the
//! transformers 5 one (`rope_parameters`, `dtype`).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::ConfigError;

/// How rotary frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear { factor: f32 },
    /// Llama 3.1's smooth interpolation between low- and high-frequency bands.
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_max_position_embeddings: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub experts_per_token: usize,
}

/// The dimensions and options every supported architecture is described by.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on the q/k/v projections (Qwen2 always, Llama when `attention_bias`).
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Mistral-style sliding-window attention span, when set.
    pub sliding_window: Option<usize>,
    pub moe: Option<MoeConfig>,
    /// The dtype the weights were saved in (`torch_dtype` / `dtype`), if stated.
    pub stored_dtype: Option<String>,
    /// The raw JSON, kept for the quantization config and anything read later.
    pub raw: Value,
}

/// The subset of fields read with serde; the rest is derived in [`ModelConfig::from_json`].
#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f32>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    num_local_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
}

fn default_eps() -> f64 {
    1e-6
}

fn default_max_positions() -> usize {
    4096
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        Self::from_str(&text, path)
    }

    /// Parses config text; `path` is only used in error messages.
    pub fn from_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let json_error = |e: serde_json::Error| ConfigError::Json {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        };
        let raw: Value = serde_json::from_str(text).map_err(json_error)?;
        let parsed: RawConfig = serde_json::from_value(raw.clone()).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_raw(parsed, raw, path)
    }

    fn from_raw(c: RawConfig, raw: Value, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid { path: path.to_path_buf(), reason };
        let architecture = c
            .architectures
            .first()
            .cloned()
            .ok_or_else(|| invalid("`architectures` is missing or empty".into()))?;
        let positive = [
            ("hidden_size", c.hidden_size),
            ("intermediate_size", c.intermediate_size),
            ("num_hidden_layers", c.num_hidden_layers),
            ("num_attention_heads", c.num_attention_heads),
            ("vocab_size", c.vocab_size),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(invalid(format!("`{field}` must be positive")));
        }
        let num_kv_heads = c.num_key_value_heads.unwrap_or(c.num_attention_heads);
        if num_kv_heads == 0 || !c.num_attention_heads.is_multiple_of(num_kv_heads) {
            return Err(invalid(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({num_kv_heads})",
                c.num_attention_heads
            )));
        }
        let head_dim = match c.head_dim {
            Some(d) => d,
            None if c.hidden_size.is_multiple_of(c.num_attention_heads) => c.hidden_size / c.num_attention_heads,
            None => return Err(invalid("hidden_size is not divisible by num_attention_heads and no head_dim is given".into())),
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(invalid(format!("head_dim ({head_dim}) must be positive and even for rotary embeddings")));
        }
        // transformers 5 folds theta and scaling into `rope_parameters`.
        let rope_params = c.rope_parameters.as_ref();
        let rope_theta = c
            .rope_theta
            .or_else(|| rope_params.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64).map(|v| v as f32))
            .unwrap_or(10_000.0);
        let rope_scaling = parse_rope_scaling(c.rope_scaling.as_ref().or(rope_params)).map_err(invalid)?;
        let qwen2 = architecture == "Qwen2ForCausalLM";
        let moe = match (c.num_local_experts, c.num_experts_per_tok) {
            (Some(num_experts), Some(k)) if num_experts > 0 && k > 0 && k <= num_experts => {
                Some(MoeConfig { num_experts, experts_per_token: k })
            }
            (Some(e), k) => return Err(invalid(format!("invalid MoE config: num_local_experts {e}, num_experts_per_tok {k:?}"))),
            _ => None,
        };
        // Qwen2 only slides when asked to; Mistral whenever a window is set.
        let sliding_window = match c.use_sliding_window {
            Some(false) => None,
            _ if qwen2 && c.use_sliding_window.is_none() => None,
            _ => c.sliding_window,
        };
        Ok(Self {
            architecture,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_layers: c.num_hidden_layers,
            num_heads: c.num_attention_heads,
            num_kv_heads,
            head_dim,
            vocab_size: c.vocab_size,
            rms_norm_eps: c.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: c.max_position_embeddings,
            tie_word_embeddings: c.tie_word_embeddings,
            qkv_bias: qwen2 || c.attention_bias,
            o_bias: !qwen2 && c.attention_bias,
            mlp_bias: c.mlp_bias,
            sliding_window,
            moe,
            stored_dtype: c.dtype.or(c.torch_dtype),
            raw,
        })
    }

    /// Keeps only the first `n` decoder layers (benchmarking real-size configs).
    pub fn truncate_layers(&mut self, n: usize) {
        self.num_layers = self.num_layers.min(n.max(1));
    }

    /// Parameter count of the float model (embedding, decoder layers, head).
    pub fn parameter_count(&self) -> u64 {
        let h = self.hidden_size as u64;
        let q = (self.num_heads * self.head_dim) as u64;
        let kv = (self.num_kv_heads * self.head_dim) as u64;
        let attention = h * q * 2 + h * kv * 2;
        let mlp = 3 * h * self.intermediate_size as u64;
        let experts = self.moe.as_ref().map_or(mlp, |m| m.num_experts as u64 * mlp + h * m.num_experts as u64);
        let embed = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.num_layers as u64 * (attention + experts + 2 * h) + h
    }
}

fn parse_rope_scaling(value: Option<&Value>) -> Result<RopeScaling, String> {
    let Some(obj) = value.and_then(Value::as_object) else {
        return Ok(RopeScaling::None);
    };
    let kind = obj.get("rope_type").or_else(|| obj.get("type")).and_then(Value::as_str).unwrap_or("default");
    let number = |key: &str| obj.get(key).and_then(Value::as_f64).map(|v| v as f32);
    let factor = || number("factor").filter(|f| *f > 0.0).ok_or_else(|| format!("rope scaling `{kind}` needs a positive `factor`"));
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor: factor()? }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: number("low_freq_factor").unwrap_or(1.0),
            high_freq_factor: number("high_freq_factor").unwrap_or(4.0),
            original_max_position_embeddings: obj
                .get("original_max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(8192) as usize,
        }),
        other => Err(format!("rope scaling type `{other}` is not supported (supported: default, linear, llama3)")),
    }
}
