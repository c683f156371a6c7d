//! OpenAI's request bodies for `/v1/completions` and `/v1/chat/completions`, with vLLM's
//! extra sampling fields. Unknown fields are ignored, as OpenAI and vLLM do; fields Ember
//! cannot honour are refused rather than silently dropped.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use crate::engine::SamplingParams;
use crate::ChatMessage;

/// Sampling fields both endpoints share.
#[derive(Debug, Default, Deserialize)]
pub struct SamplingFields {
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// vLLM: -1 (or 0) turns it off.
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub n: Option<usize>,
    pub stop: Option<StopField>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub seed: Option<u64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub ignore_eos: Option<bool>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub best_of: Option<usize>,
}

/// One stop string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// `prompt`: a string, a list of strings, token ids, or a list of token-id lists.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: PromptField,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Top alternatives per token.
    pub logprobs: Option<usize>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessageField>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    pub max_completion_tokens: Option<usize>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<usize>,
    pub tools: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessageField {
    pub role: String,
    #[serde(default)]
    pub content: Option<ContentField>,
}

/// Message content: a string, or a list of parts of which only text is supported.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ContentField {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

impl PromptField {
    /// The prompts in order, as text or token ids.
    pub fn into_prompts(self) -> Result<Vec<PromptInput>, ApiError> {
        let prompts: Vec<PromptInput> = match self {
            Self::Text(text) => vec![PromptInput::Text(text)],
            Self::Texts(texts) => texts.into_iter().map(PromptInput::Text).collect(),
            Self::Tokens(ids) => vec![PromptInput::Tokens(ids)],
            Self::TokenLists(lists) => lists.into_iter().map(PromptInput::Tokens).collect(),
        };
        if prompts.is_empty() {
            return Err(ApiError::bad_request("`prompt` is an empty list").with_param("prompt"));
        }
        Ok(prompts)
    }
}

pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

impl ChatMessageField {
    pub fn into_message(self) -> Result<ChatMessage, ApiError> {
        let content = match self.content {
            None => String::new(),
            Some(ContentField::Text(text)) => text,
            Some(ContentField::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(piece)) => text.push_str(&piece),
                        (kind, _) => {
                            return Err(ApiError::bad_request(format!("message content of type `{kind}` is not supported (text only)"))
                                .with_param("messages"))
                        }
                    }
                }
                text
            }
        };
        Ok(ChatMessage::new(self.role, content))
    }
}

/// Stop conditions a request may carry (OpenAI allows 4 strings): each is checked on
/// every token of every completion.
const MAX_STOP_STRINGS: usize = 16;
const MAX_STOP_STRING_BYTES: usize = 1024;
const MAX_STOP_TOKEN_IDS: usize = 256;

impl StreamOptions {
    pub fn wants_usage(options: &Option<Self>) -> bool {
        options.as_ref().and_then(|o| o.include_usage).unwrap_or(false)
    }
}

impl SamplingFields {
    /// The engine's parameters: the request's fields over the model's defaults
    /// (generation_config.json), as vLLM does.
    pub fn to_params(&self, defaults: &SamplingParams, max_tokens: usize, logprobs: Option<usize>) -> Result<SamplingParams, ApiError> {
        if self.logit_bias.as_ref().is_some_and(|bias| !bias.is_empty()) {
            return Err(ApiError::bad_request("`logit_bias` is not supported").with_param("logit_bias"));
        }
        let n = self.n.unwrap_or(1);
        if self.best_of.is_some_and(|best_of| best_of != n) {
            return Err(ApiError::bad_request("`best_of` other than `n` is not supported").with_param("best_of"));
        }
        let stop = match &self.stop {
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(list)) => list.clone(),
            None => Vec::new(),
        };
        if stop.len() > MAX_STOP_STRINGS || stop.iter().any(|s| s.len() > MAX_STOP_STRING_BYTES) {
            return Err(ApiError::bad_request(format!("at most {MAX_STOP_STRINGS} stop strings of at most {MAX_STOP_STRING_BYTES} bytes")).with_param("stop"));
        }
        let stop_token_ids = self.stop_token_ids.clone().unwrap_or_default();
        if stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
            return Err(ApiError::bad_request(format!("at most {MAX_STOP_TOKEN_IDS} stop token ids")).with_param("stop_token_ids"));
        }
        let d = defaults;
        let params = SamplingParams {
            max_tokens,
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.unwrap_or(d.top_p),
            top_k: match self.top_k {
                Some(k) if k > 0 => k as usize,
                Some(_) => 0,
                None => d.top_k,
            },
            min_p: self.min_p.unwrap_or(d.min_p),
            n,
            stop,
            stop_token_ids,
            seed: self.seed,
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            logprobs,
        };
        params.validate().map_err(ApiError::bad_request)?;
        Ok(params)
    }
}
