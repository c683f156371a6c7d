//! Single-sequence generation with a KV cache: prefill the prompt, then decode one token
//! per step until a stop token, a stop string or the token budget.

use std::time::{Duration, Instant};

use burn::tensor::Tensor;
use ember_models::DecoderModel;

use super::sampling::{Sampler, SamplingParams};
use super::stop::StopStrings;
use crate::error::Error;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt_ids: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    /// Tokens that end generation (not included in the output text).
    pub stop_token_ids: Vec<u32>,
    /// Strings that end generation; the output text is cut before them.
    pub stop_strings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// The `max_tokens` budget ran out.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

impl Generation {
    /// Decode throughput, excluding the prompt.
    pub fn decode_tokens_per_second(&self) -> f64 {
        let steps = self.tokens.len().saturating_sub(1) as f64;
        steps / self.decode_time.as_secs_f64().max(f64::EPSILON)
    }
}

/// Generates a continuation of `request.prompt_ids`, handing each piece of finished text
/// to `on_text` as soon as it can no longer turn into a stop string.
pub fn generate(
    model: &DecoderModel,
    tokenizer: &Tokenizer,
    request: &GenerationRequest,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, Error> {
    check_prompt(model, &request.prompt_ids)?;
    request.sampling.validate().map_err(Error::InvalidArgument)?;
    let mut sampler = Sampler::new(request.sampling.clone());
    let mut cache = model.new_cache();
    let mut history = request.prompt_ids.clone();
    let mut tokens = Vec::new();
    let mut stream = tokenizer.stream(true);
    let mut stops = StopStrings::new(&request.stop_strings);

    let started = Instant::now();
    let mut logits = last_row(model.forward_ids(&request.prompt_ids, &mut cache))?;
    let prefill_time = started.elapsed();
    let decode_started = Instant::now();
    let mut finish_reason = FinishReason::Length;
    while tokens.len() < request.max_tokens {
        let token = sampler.sample(&mut logits, &history);
        if request.stop_token_ids.contains(&token) {
            finish_reason = FinishReason::Stop;
            break;
        }
        tokens.push(token);
        history.push(token);
        if let Some(piece) = stream.step(token)? {
            let (ready, stopped) = stops.push(&piece);
            on_text(ready);
            if stopped {
                finish_reason = FinishReason::Stop;
                break;
            }
        }
        if tokens.len() == request.max_tokens {
            break;
        }
        logits = last_row(model.forward_ids(&[token], &mut cache))?;
    }
    if finish_reason == FinishReason::Length || !stops.stopped() {
        on_text(stops.flush());
    }
    Ok(Generation {
        text: stops.into_text(),
        tokens,
        finish_reason,
        prompt_tokens: request.prompt_ids.len(),
        prefill_time,
        decode_time: decode_started.elapsed(),
    })
}

/// Rejects empty prompts and ids outside the vocabulary before they reach the device.
pub fn check_prompt(model: &DecoderModel, ids: &[u32]) -> Result<(), Error> {
    let vocab = model.config().vocab_size;
    if ids.is_empty() {
        return Err(Error::InvalidArgument("the prompt is empty".into()));
    }
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::InvalidArgument(format!("token id {bad} is outside the vocabulary (size {vocab})")));
    }
    Ok(())
}

/// The last position's logits, on the host.
fn last_row(logits: Tensor<2>) -> Result<Vec<f32>, Error> {
    let [seq, _] = logits.dims();
    logits
        .narrow(0, seq - 1, 1)
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::Device(format!("reading logits: {e:?}")))
}
