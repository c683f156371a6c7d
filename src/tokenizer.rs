//! Tokenizer, special tokens and chat templates, read the way transformers reads them:
//! `tokenizer.json` for the model, `tokenizer_config.json` for bos/eos/pad and the chat
//! template (or `chat_template.jinja`), rendered with minijinja in HF's Jinja settings.

use std::path::{Path, PathBuf};

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot load tokenizer {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("bad JSON in {path} at line {line}, column {column}: {message}")]
    Json { path: PathBuf, line: usize, column: usize, message: String },
    #[error("tokenizer: {0}")]
    Tokenize(String),
    #[error("this model has no chat template (tokenizer_config.json `chat_template` or chat_template.jinja)")]
    NoChatTemplate,
    #[error("chat template: {0}")]
    Template(String),
}

/// One chat message, as OpenAI and HF templates spell it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl Tokenizer {
    /// Reads `tokenizer.json`, and `tokenizer_config.json` / `chat_template.jinja` when present.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| TokenizerError::Load { path: path.clone(), reason: e.to_string() })?;
        let config_path = dir.join("tokenizer_config.json");
        let config = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str::<Value>(&text).map_err(|e| TokenizerError::Json {
                path: config_path.clone(),
                line: e.line(),
                column: e.column(),
                message: e.to_string(),
            })?,
            Err(_) => Value::Null,
        };
        let jinja_path = dir.join("chat_template.jinja");
        let chat_template = std::fs::read_to_string(&jinja_path).ok().or_else(|| template_from_config(&config));
        Ok(Self {
            inner,
            bos_token: special_token(&config, "bos_token"),
            eos_token: special_token(&config, "eos_token"),
            pad_token: special_token(&config, "pad_token"),
            chat_template,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn pad_token(&self) -> Option<&str> {
        self.pad_token.as_deref()
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_id(t))
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Encodes text; `add_special_tokens` applies the post-processor (e.g. adds bos).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self.inner.encode(text, add_special_tokens).map_err(|e| TokenizerError::Tokenize(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| TokenizerError::Tokenize(e.to_string()))
    }


    /// Renders the chat template as transformers' `apply_chat_template(tokenize=False)`.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, TokenizerError> {
        let template = self.chat_template.as_deref().ok_or(TokenizerError::NoChatTemplate)?;
        let mut env = Environment::new();
        // transformers renders with trim_blocks and lstrip_blocks on.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", |format: String| chrono_free_date(&format));
        env.add_template("chat", template).map_err(|e| TokenizerError::Template(e.to_string()))?;
        let rendered = env
            .get_template("chat")
            .and_then(|t| {
                t.render(context! {
                    messages => messages,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => self.bos_token.as_deref().unwrap_or(""),
                    eos_token => self.eos_token.as_deref().unwrap_or(""),
                    pad_token => self.pad_token.as_deref().unwrap_or(""),
                })
            })
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        Ok(rendered)
    }

    /// Token ids of a rendered chat prompt: the template already holds the special tokens,
    /// so none are added (what transformers does with `tokenize=True`).
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, TokenizerError> {
        self.encode(&self.apply_chat_template(messages, true)?, false)
    }
}

/// Incremental detokenizer for one sequence, owned by it (so an engine can keep one per
/// sequence): text comes out only once it is complete UTF-8, so byte-fallback tokens that
/// split a character never produce broken output. Decoding a short window of recent
/// tokens, rather than each token alone, keeps the spaces and merges a full decode gives.
#[derive(Debug, Clone)]
pub struct IncrementalDecoder {
    skip_special_tokens: bool,
    /// Recent tokens: `[prefix..read)` was already emitted, `[read..)` is pending.
    ids: Vec<u32>,
    read: usize,
}

impl IncrementalDecoder {
    pub fn new(skip_special_tokens: bool) -> Self {
        Self { skip_special_tokens, ids: Vec::new(), read: 0 }
    }

    /// Feeds one token; returns the text it completes, if any.
    pub fn step(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[..self.read], self.skip_special_tokens)?;
        let after = tokenizer.decode(&self.ids, self.skip_special_tokens)?;
        if after.len() <= before.len() || after.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let Some(piece) = after.get(before.len()..) else {
            return Ok(None);
        };
        let piece = piece.to_string();
        // The emitted tokens become the next window's context.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        Ok(Some(piece))
    }
}

/// `bos_token` etc. are a string or an AddedToken object `{"content": ...}`.
fn special_token(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// `chat_template` is a string, or a list of `{name, template}` where `default` wins.
fn template_from_config(config: &Value) -> Option<String> {
    match config.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => {
            let named = |want: &str| {
                list.iter().find(|t| t.get("name").and_then(Value::as_str) == Some(want)).and_then(|t| t.get("template"))
            };
            named("default").or_else(|| list.first().and_then(|t| t.get("template"))).and_then(Value::as_str).map(str::to_string)
        }
        _ => None,
    }
}

/// Templates call `strftime_now("%d %b %Y")` for a date line. Only the common
/// directives are supported; anything else is left as written.
fn chrono_free_date(format: &str) -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    let (year, month, day) = civil_from_days(days);
    const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    let name = MONTHS[(month - 1) as usize];
    format
        .replace("%Y", &year.to_string())
        .replace("%m", &format!("{month:02}"))
        .replace("%d", &format!("{day:02}"))
        .replace("%B", name)
        .replace("%b", &name[..3])
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}
