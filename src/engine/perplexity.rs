//! Perplexity over a text with a sliding window, as Hugging Face's perplexity guide
//! computes it: windows of `context` tokens advance by `stride`, and each window scores
//! only the tokens the previous one did not, with everything before them as context.

use std::time::Instant;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use ember_models::DecoderModel;

use super::check_prompt;
use crate::error::Error;

#[derive(Debug, Clone, PartialEq)]
pub struct PerplexityReport {
    /// exp(mean negative log-likelihood) over the scored tokens.
    pub perplexity: f64,
    pub mean_nll: f64,
    /// Tokens predicted and scored (all but the first).
    pub scored_tokens: usize,
    pub windows: usize,
    /// Tokens run through the model (windows overlap, so more than scored).
    pub forward_tokens: usize,
    pub seconds: f64,
}

impl PerplexityReport {
    pub fn tokens_per_second(&self) -> f64 {
        self.forward_tokens as f64 / self.seconds.max(1e-9)
    }
}

/// Scores `ids` (at least two tokens) under `model`.
pub fn perplexity(model: &DecoderModel, ids: &[u32], context: usize, stride: usize) -> Result<PerplexityReport, Error> {
    check_prompt(model, ids)?;
    if ids.len() < 2 {
        return Err(Error::InvalidArgument("perplexity needs at least two tokens".into()));
    }
    let max = model.config().max_position_embeddings;
    if context < 2 || context > max {
        return Err(Error::InvalidArgument(format!("context {context} must be between 2 and the model's {max} positions")));
    }
    if stride == 0 || stride > context {
        return Err(Error::InvalidArgument(format!("stride {stride} must be between 1 and the context ({context})")));
    }
    let start = Instant::now();
    let (mut nll, mut scored, mut windows, mut forward_tokens) = (0f64, 0usize, 0usize, 0usize);
    let mut scored_until = 1;
    let mut begin = 0;
    loop {
        let end = (begin + context).min(ids.len());
        let window = &ids[begin..end];
        let logits = model.forward_ids(window, &mut model.new_cache());
        // Position p predicts window[p + 1]; score targets from `scored_until` to `end`
        // (a window's first token has no context inside it and is never a target).
        let first = scored_until.max(begin + 1) - begin - 1;
        let targets: Vec<i64> = window[first + 1..].iter().map(|&t| t as i64).collect();
        let count = targets.len();
        let log_probs = log_softmax(logits.narrow(0, first, count), 1);
        let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [count, 1]), model.device());
        let picked = log_probs.gather(1, targets).try_into_vec_as::<f32>().map_err(|e| Error::Device(format!("reading log-probabilities: {e:?}")))?;
        nll -= picked.iter().map(|&v| v as f64).sum::<f64>();
        scored += count;
        windows += 1;
        forward_tokens += window.len();
        scored_until = end;
        if end == ids.len() {
            break;
        }
        begin += stride;
    }
    let mean_nll = nll / scored as f64;
    Ok(PerplexityReport { perplexity: mean_nll.exp(), mean_nll, scored_tokens: scored, windows, forward_tokens, seconds: start.elapsed().as_secs_f64() })
}
