//! `POST /v1/completions` and `POST /v1/chat/completions`: each turns its body into a
//! [`Job`] (token ids and sampling parameters per prompt), checked against the context
//! before anything reaches the engine.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::protocol::{ChatRequest, CompletionRequest, PromptInput, StreamOptions};
use super::respond::{Job, Kind};
use super::AppState;
use crate::engine::SamplingParams;
use crate::ChatMessage;

/// OpenAI's default for `/v1/completions`; chat defaults to the room left in the context.
const DEFAULT_COMPLETION_TOKENS: usize = 16;
/// OpenAI's limits on prompts per request and on `n`.
const MAX_PROMPTS: usize = 2048;
const MAX_N: usize = 128;

pub async fn completions(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    // Parsing and tokenizing up to a few MiB of text: off the async workers.
    let job = tokio::task::block_in_place(|| completion_job(&state, body))?;
    super::respond::run(state, job).await
}

pub async fn chat_completions(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let job = tokio::task::block_in_place(|| chat_job(&state, body))?;
    super::respond::run(state, job).await
}

fn completion_job(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Job, ApiError> {
    let request: CompletionRequest = parse_body(state, body)?;
    state.check_model(request.model.as_deref())?;
    if request.suffix.is_some() {
        return Err(ApiError::bad_request("`suffix` is not supported").with_param("suffix"));
    }
    let echo = request.echo.unwrap_or(false);
    if echo && request.logprobs.is_some() {
        return Err(ApiError::bad_request("`echo` with `logprobs` is not supported (no prompt logprobs)").with_param("echo"));
    }
    let prompts = request.prompt.into_prompts()?;
    if prompts.len() > MAX_PROMPTS {
        return Err(ApiError::bad_request(format!("{} prompts in one request; at most {MAX_PROMPTS}", prompts.len())).with_param("prompt"));
    }
    let mut requests = Vec::new();
    let mut echoes = Vec::new();
    for prompt in prompts {
        let (ids, text) = match prompt {
            PromptInput::Text(text) => (state.tokenizer()?.encode(&text, true).map_err(crate::Error::from)?, text),
            PromptInput::Tokens(ids) => {
                let text = if echo { state.decode(&ids) } else { String::new() };
                (ids, text)
            }
        };
        let max_tokens = state.completion_budget(ids.len(), request.sampling.max_tokens, Some(DEFAULT_COMPLETION_TOKENS))?;
        let params = request.sampling.to_params(&state.defaults, max_tokens, request.logprobs)?;
        requests.push((ids, params));
        echoes.push(if echo { text } else { String::new() });
    }
    state.check_budget(&requests)?;
    let include_usage = StreamOptions::wants_usage(&request.stream_options);
    let stream = request.stream.unwrap_or(false);
    Ok(Job { kind: Kind::Completion { echoes }, requests, stream, include_usage })
}

fn chat_job(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Job, ApiError> {
    let request: ChatRequest = parse_body(state, body)?;
    state.check_model(request.model.as_deref())?;
    if request.tools.as_ref().is_some_and(|tools| !tools.is_empty()) {
        return Err(ApiError::bad_request("tool calling is not supported").with_param("tools"));
    }
    if request.messages.is_empty() {
        return Err(ApiError::bad_request("`messages` is empty").with_param("messages"));
    }
    let logprobs = match (request.logprobs.unwrap_or(false), request.top_logprobs) {
        (true, top) => Some(top.unwrap_or(0)),
        (false, None) => None,
        (false, Some(_)) => return Err(ApiError::bad_request("`top_logprobs` needs `logprobs: true`").with_param("top_logprobs")),
    };
    let messages: Vec<ChatMessage> = request.messages.into_iter().map(|m| m.into_message()).collect::<Result<_, _>>()?;
    let tokenizer = state.tokenizer()?;
    if !tokenizer.has_chat_template() {
        return Err(ApiError::bad_request("this model has no chat template; use /v1/completions"));
    }
    let ids = tokenizer.encode_chat(&messages).map_err(crate::Error::from)?;
    let requested = request.max_completion_tokens.or(request.sampling.max_tokens);
    // Without a limit, chat may use the rest of the context, within the request budget.
    let n = request.sampling.n.unwrap_or(1).max(1);
    let max_tokens = state.completion_budget(ids.len(), requested, Some(state.config.max_request_tokens / n))?;
    let params = request.sampling.to_params(&state.defaults, max_tokens, logprobs)?;
    let requests = vec![(ids, params)];
    state.check_budget(&requests)?;
    let include_usage = StreamOptions::wants_usage(&request.stream_options);
    let stream = request.stream.unwrap_or(false);
    Ok(Job { kind: Kind::Chat, requests, stream, include_usage })
}

fn parse_body<T: DeserializeOwned>(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(state.config.max_body_bytes)
        } else {
            ApiError::bad_request(format!("could not read the body: {rejection}"))
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| ApiError::from_json(&e))
}

impl AppState {
    /// Refuses requests that would generate more than the server allows at once.
    fn check_budget(&self, requests: &[(Vec<u32>, SamplingParams)]) -> Result<(), ApiError> {
        if let Some((_, params)) = requests.iter().find(|(_, p)| p.n > MAX_N) {
            return Err(ApiError::bad_request(format!("n is {}; at most {MAX_N}", params.n)).with_param("n"));
        }
        let total: usize = requests.iter().map(|(_, p)| p.n.saturating_mul(p.max_tokens)).fold(0, usize::saturating_add);
        let limit = self.config.max_request_tokens;
        if total > limit {
            return Err(ApiError::bad_request(format!(
                "the request asks for up to {total} generated tokens (prompts × n × max_tokens); this server allows {limit}"
            ))
            .with_param("max_tokens"));
        }
        Ok(())
    }

    /// `max_tokens` for a prompt of `prompt_len` tokens: the request's, if it fits in the
    /// context, else `default` capped by the room left (all the room without a default).
    fn completion_budget(&self, prompt_len: usize, requested: Option<usize>, default: Option<usize>) -> Result<usize, ApiError> {
        let limit = self.max_model_len;
        if prompt_len >= limit {
            return Err(ApiError::context_length(format!(
                "this model's maximum context length is {limit} tokens, and the prompt has {prompt_len}: no room for a completion"
            )));
        }
        let room = limit - prompt_len;
        match requested {
            Some(tokens) if tokens > room => Err(ApiError::context_length(format!(
                "this model's maximum context length is {limit} tokens; you requested {} ({prompt_len} in the prompt, {tokens} for the completion)",
                prompt_len.saturating_add(tokens)
            ))
            .with_param("max_tokens")),
            Some(tokens) => Ok(tokens),
            None => Ok(default.map_or(room, |d| d.min(room))),
        }
    }
}
