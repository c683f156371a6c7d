//! The inference engine: a paged KV cache, continuous batching, per-request sampling and
//! stop handling, the offline batch API, and perplexity scoring.

mod block_pool;
mod core;
mod offline;
mod perplexity;
mod sampling;
mod scheduler;
mod sequence;
mod stop;

pub use self::core::{Engine, EngineConfig, EngineStats, KvCacheSize, Prompt, RequestMetrics, StepOutput};
pub use block_pool::BlockPool;
pub use offline::{Completion, RequestOutput};
pub use perplexity::{perplexity, PerplexityReport};
pub use sampling::{argmax, Sampler, SamplingParams, TokenLogprobs, MAX_LOGPROBS};
pub use sequence::{CompletionDelta, FinishReason, RequestId};
pub use stop::StopStrings;

use ember_models::DecoderModel;

use crate::error::Error;

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
