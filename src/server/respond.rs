//! Running a job on the engine thread and answering in OpenAI's format: one JSON body,
//! or server-sent events (a chunk per token and choice, usage if asked, `[DONE]`).
//! Dropping the response — the client went away — aborts the job's requests.

use std::convert::Infallible;
use std::sync::{mpsc, Arc};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc as channel, oneshot};

use super::error::ApiError;
use super::worker::{Command, Event};
use super::AppState;
use crate::engine::{CompletionDelta, FinishReason, Prompt, RequestId, SamplingParams, TokenLogprobs};
use crate::Tokenizer;

pub enum Kind {
    /// Legacy completions; `echoes` is the prompt text to repeat per prompt (empty
    /// without `echo`).
    Completion { echoes: Vec<String> },
    Chat,
}

pub struct Job {
    pub kind: Kind,
    /// Token ids and parameters per prompt.
    pub requests: Vec<(Vec<u32>, SamplingParams)>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Aborts the job's requests in the engine unless disarmed once they all finished.
struct AbortOnDrop {
    ids: Vec<RequestId>,
    commands: mpsc::Sender<Command>,
}

impl AbortOnDrop {
    fn disarm(&mut self) {
        self.ids.clear();
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if !self.ids.is_empty() {
            let _ = self.commands.send(Command::Abort(std::mem::take(&mut self.ids)));
        }
    }
}

pub async fn run(state: Arc<AppState>, job: Job) -> Result<Response, ApiError> {
    let n = job.requests.first().map_or(1, |(_, params)| params.n);
    let logprobs = job.requests.first().is_some_and(|(_, params)| params.logprobs.is_some());
    let requests: Vec<(Prompt, SamplingParams)> = job.requests.into_iter().map(|(ids, params)| (Prompt::Tokens(ids), params)).collect();
    let prompts = requests.len();
    let (events, receiver) = channel::unbounded_channel();
    let (reply, replied) = oneshot::channel();
    let gone = || ApiError::unavailable("the engine is not running (the server is shutting down)");
    state.commands.send(Command::Submit { requests, events, reply }).map_err(|_| gone())?;
    let ids = replied.await.map_err(|_| gone())??;
    let guard = AbortOnDrop { ids, commands: state.commands.clone() };
    let render = Renderer {
        chat: matches!(job.kind, Kind::Chat),
        id: response_id(matches!(job.kind, Kind::Chat)),
        created: unix_time(),
        model: state.config.served_model_name.clone(),
        tokenizer: state.tokenizer.clone(),
        logprobs,
        null_usage: job.stream && job.include_usage,
    };
    let echoes = match job.kind {
        Kind::Completion { echoes } => echoes,
        Kind::Chat => vec![String::new(); prompts],
    };
    let choices = (0..prompts * n).map(|i| Choice::new(echoes[i / n].clone())).collect();
    let progress = Progress { receiver, guard, choices, n, unfinished_prompts: prompts, usage: Usage::default() };
    if job.stream {
        Ok(stream_response(render, progress, job.include_usage).into_response())
    } else {
        collect(render, progress).await
    }
}

/// What one choice (prompt × completion) has produced.
struct Choice {
    text: String,
    logprobs: Vec<TokenLogprobs>,
    finish_reason: Option<&'static str>,
    /// Bytes of text before the next token (OpenAI's `text_offset`); in a full response,
    /// where the first token starts (after an echoed prompt).
    offset: usize,
}

impl Choice {
    fn new(echo: String) -> Self {
        Self { offset: echo.len(), text: echo, logprobs: Vec::new(), finish_reason: None }
    }
}

#[derive(Default, Clone, Copy)]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
}

impl Usage {
    fn json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// A job's requests in flight: their events, and what each choice has so far.
struct Progress {
    receiver: channel::UnboundedReceiver<Event>,
    guard: AbortOnDrop,
    choices: Vec<Choice>,
    n: usize,
    unfinished_prompts: usize,
    usage: Usage,
}

/// What the next event meant for the job.
enum Step {
    /// Deltas, as (choice index, delta).
    Deltas(Vec<(usize, CompletionDelta)>),
    Failed(String),
    /// The engine dropped the job (shutdown).
    Aborted,
}

impl Progress {
    async fn next(&mut self) -> Step {
        match self.receiver.recv().await {
            Some(Event::Output { position, output }) => {
                if let Some(metrics) = output.finished {
                    self.unfinished_prompts -= 1;
                    self.usage.prompt_tokens += metrics.prompt_tokens;
                    self.usage.completion_tokens += metrics.completion_tokens;
                    if self.unfinished_prompts == 0 {
                        self.guard.disarm();
                    }
                }
                Step::Deltas(output.deltas.into_iter().map(|delta| (position * self.n + delta.index, delta)).collect())
            }
            Some(Event::Failed(message)) => Step::Failed(message),
            None => Step::Aborted,
        }
    }

    fn done(&self) -> bool {
        self.unfinished_prompts == 0
    }
}

struct Renderer {
    chat: bool,
    id: String,
    created: u64,
    model: String,
    tokenizer: Option<Arc<Tokenizer>>,
    logprobs: bool,
    /// OpenAI's chunks carry `"usage": null` until the usage chunk when it was asked for.
    null_usage: bool,
}

impl Renderer {
    fn token(&self, id: u32) -> String {
        match &self.tokenizer {
            Some(tokenizer) => tokenizer.decode(&[id], false).unwrap_or_default(),
            None => id.to_string(),
        }
    }

    /// Logprobs of `entries` in the endpoint's format, the first token at `offset`, which
    /// is moved past them (completions' `text_offset`).
    fn logprobs(&self, entries: &[TokenLogprobs], offset: &mut usize) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        if self.chat {
            let entry = |id: u32, logprob: f32| {
                let token = self.token(id);
                json!({ "token": token, "logprob": logprob, "bytes": token.as_bytes() })
            };
            let content: Vec<Value> = entries
                .iter()
                .map(|lp| {
                    let mut value = entry(lp.token, lp.logprob);
                    value["top_logprobs"] = lp.top.iter().map(|&(id, logprob)| entry(id, logprob)).collect();
                    value
                })
                .collect();
            return json!({ "content": content });
        }
        let mut tokens = Vec::new();
        let mut offsets = Vec::new();
        for lp in entries {
            let token = self.token(lp.token);
            offsets.push(*offset);
            *offset += token.len();
            tokens.push(token);
        }
        let top: Vec<Value> = entries
            .iter()
            .map(|lp| Value::Object(lp.top.iter().map(|&(id, logprob)| (self.token(id), json!(logprob))).collect()))
            .collect();
        json!({
            "tokens": tokens,
            "token_logprobs": entries.iter().map(|lp| lp.logprob).collect::<Vec<_>>(),
            "top_logprobs": top,
            "text_offset": offsets,
        })
    }

    fn envelope(&self, object: &str, choices: Vec<Value>) -> Value {
        let mut value = json!({ "id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices });
        if self.null_usage {
            value["usage"] = Value::Null;
        }
        value
    }

    /// One streamed chunk for a choice.
    fn chunk(&self, index: usize, text: &str, logprobs: Value, finish_reason: Option<&str>) -> Value {
        if self.chat {
            let delta = if text.is_empty() { json!({}) } else { json!({ "content": text }) };
            let choice = json!({ "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason });
            self.envelope("chat.completion.chunk", vec![choice])
        } else {
            let choice = json!({ "index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason });
            self.envelope("text_completion", vec![choice])
        }
    }

    /// The chunk that opens a choice: the assistant role for chat, the echoed prompt for
    /// completions.
    fn opening(&self, index: usize, choice: &Choice) -> Option<Value> {
        if self.chat {
            let choice = json!({ "index": index, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null });
            Some(self.envelope("chat.completion.chunk", vec![choice]))
        } else {
            (!choice.text.is_empty()).then(|| self.chunk(index, &choice.text, Value::Null, None))
        }
    }

    fn usage_chunk(&self, usage: Usage) -> Value {
        let mut chunk = self.envelope(if self.chat { "chat.completion.chunk" } else { "text_completion" }, Vec::new());
        chunk["usage"] = usage.json();
        chunk
    }

    fn response(&self, choices: &[Choice], usage: Usage) -> Value {
        let choices: Vec<Value> = choices
            .iter()
            .enumerate()
            .map(|(index, choice)| {
                let logprobs = self.logprobs(&choice.logprobs, &mut choice.offset.clone());
                if self.chat {
                    json!({
                        "index": index,
                        "message": { "role": "assistant", "content": choice.text },
                        "logprobs": logprobs,
                        "finish_reason": choice.finish_reason,
                    })
                } else {
                    json!({ "index": index, "text": choice.text, "logprobs": logprobs, "finish_reason": choice.finish_reason })
                }
            })
            .collect();
        let mut body = self.envelope(if self.chat { "chat.completion" } else { "text_completion" }, choices);
        body["usage"] = usage.json();
        body
    }
}

async fn collect(render: Renderer, mut progress: Progress) -> Result<Response, ApiError> {
    while !progress.done() {
        match progress.next().await {
            Step::Deltas(deltas) => {
                for (index, delta) in deltas {
                    let choice = &mut progress.choices[index];
                    choice.text.push_str(&delta.text);
                    choice.logprobs.extend(delta.logprobs);
                    if let Some(reason) = delta.finish_reason {
                        choice.finish_reason = Some(reason.as_str());
                    }
                }
            }
            Step::Failed(message) => return Err(ApiError::internal(format!("generation failed: {message}"))),
            Step::Aborted => return Err(ApiError::unavailable("the request was aborted: the server is shutting down")),
        }
    }
    Ok(Json(render.response(&progress.choices, progress.usage)).into_response())
}

fn stream_response(render: Renderer, progress: Progress, include_usage: bool) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let opening: Vec<Value> = progress.choices.iter().enumerate().filter_map(|(i, c)| render.opening(i, c)).collect();
    let render = Arc::new(render);
    let deltas = stream::unfold(Some(progress), move |progress| {
        let render = render.clone();
        async move {
            let mut progress = progress?;
            let mut chunks = Vec::new();
            match progress.next().await {
                Step::Deltas(deltas) => {
                    for (index, delta) in deltas {
                        let choice = &mut progress.choices[index];
                        let logprobs = render.logprobs(delta.logprobs.as_slice(), &mut choice.offset);
                        let reason = delta.finish_reason.map(FinishReason::as_str);
                        choice.finish_reason = reason;
                        if delta.token.is_some() || !delta.text.is_empty() || reason.is_some() {
                            chunks.push(Chunk::Json(render.chunk(index, &delta.text, logprobs, reason)));
                        }
                    }
                    if !progress.done() {
                        return Some((chunks, Some(progress)));
                    }
                    if include_usage {
                        chunks.push(Chunk::Json(render.usage_chunk(progress.usage)));
                    }
                }
                Step::Failed(message) => chunks.push(Chunk::Json(ApiError::internal(format!("generation failed: {message}")).body())),
                Step::Aborted => {
                    // vLLM's convention: unfinished choices end with `abort`.
                    let unfinished = progress.choices.iter().enumerate().filter(|(_, c)| c.finish_reason.is_none());
                    for (index, _) in unfinished {
                        chunks.push(Chunk::Json(render.chunk(index, "", Value::Null, Some("abort"))));
                    }
                }
            }
            chunks.push(Chunk::Done);
            Some((chunks, None))
        }
    });
    let events = stream::iter(opening.into_iter().map(Chunk::Json).map(|c| vec![c]))
        .chain(deltas)
        .flat_map(|chunks| stream::iter(chunks.into_iter().map(|chunk| Ok(chunk.event()))));
    Sse::new(events).keep_alive(KeepAlive::default())
}

enum Chunk {
    Json(Value),
    Done,
}

impl Chunk {
    fn event(self) -> SseEvent {
        match self {
            Self::Json(value) => SseEvent::default().data(value.to_string()),
            Self::Done => SseEvent::default().data("[DONE]"),
        }
    }
}

fn response_id(chat: bool) -> String {
    let prefix = if chat { "chatcmpl" } else { "cmpl" };
    format!("{prefix}-{:032x}", rand::random::<u128>())
}

pub(super) fn unix_time() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
