//! One completion being generated: its tokens, its place in the KV pool, and its
//! per-completion sampling, detokenizing and stop state.

use super::sampling::{Sampler, TokenLogprobs};
use super::stop::StopStrings;
use crate::tokenizer::IncrementalDecoder;

/// Names a request for its whole life in the engine.
pub type RequestId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` or the model's context ran out.
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

pub(crate) struct Sequence {
    pub request: RequestId,
    /// Which of the request's `n` completions this is.
    pub index: usize,
    pub prompt_len: usize,
    /// The prompt, then the generated tokens.
    pub tokens: Vec<u32>,
    /// Leading tokens whose keys and values are in the cache.
    pub computed: usize,
    pub blocks: Vec<u32>,
    pub sampler: Sampler,
    /// `None` when the model has no tokenizer: tokens only.
    pub decoder: Option<IncrementalDecoder>,
    pub stops: StopStrings,
    /// Completions still to fork from this one once its prompt is in the cache.
    pub forks_pending: usize,
}

impl Sequence {
    pub fn output(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    /// Tokens not yet in the cache: the whole prompt at first (or prompt and output after
    /// a preemption), then the one token sampled last.
    pub fn uncomputed(&self) -> usize {
        self.tokens.len() - self.computed
    }

    /// A sibling completion sharing everything computed so far, blocks included (the
    /// caller takes a reference on each).
    pub fn fork(&self, index: usize) -> Self {
        Self {
            request: self.request,
            index,
            prompt_len: self.prompt_len,
            tokens: self.tokens.clone(),
            computed: self.computed,
            blocks: self.blocks.clone(),
            sampler: Sampler::for_completion(self.sampler.params().clone(), index),
            decoder: self.decoder.clone(),
            stops: self.stops.clone(),
            forks_pending: 0,
        }
    }
}

/// What one completion produced in one step.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionDelta {
    pub index: usize,
    /// The sampled token; `None` when the step only ended the completion (a stop token).
    pub token: Option<u32>,
    /// Text that became final this step (held back while it could start a stop string).
    pub text: String,
    pub logprobs: Option<TokenLogprobs>,
    pub finish_reason: Option<FinishReason>,
}
