//! The offline batch API, vLLM's `LLM.generate`: submit every prompt at once and let
//! continuous batching run them to the end.

use indicatif::{ProgressBar, ProgressStyle};

use super::core::{Engine, Prompt, RequestMetrics};
use super::sampling::{SamplingParams, TokenLogprobs};
use super::sequence::{FinishReason, RequestId};
use crate::error::Error;

/// One finished completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub index: usize,
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    /// One entry per token when the request asked for logprobs.
    pub logprobs: Vec<TokenLogprobs>,
}

/// Everything a request produced, in the order the prompts were given.
#[derive(Debug, Clone)]
pub struct RequestOutput {
    /// The request's `n` completions, by index.
    pub completions: Vec<Completion>,
    pub metrics: RequestMetrics,
}

impl Engine {
    /// Runs every request to completion, batched, and returns the outputs in input order.
    /// If any request is invalid, none is run.
    pub fn generate(&mut self, requests: Vec<(Prompt, SamplingParams)>, progress: bool) -> Result<Vec<RequestOutput>, Error> {
        let mut ids: Vec<RequestId> = Vec::with_capacity(requests.len());
        for (position, (prompt, params)) in requests.into_iter().enumerate() {
            match self.add_request(prompt, params) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    ids.iter().for_each(|&id| {
                        self.abort(id);
                    });
                    return Err(Error::InvalidArgument(format!("request {position}: {e}")));
                }
            }
        }
        let bar = progress_bar(progress, ids.len() as u64);
        let mut pending: std::collections::HashMap<RequestId, (Vec<Completion>, usize)> =
            ids.iter().enumerate().map(|(position, &id)| (id, (Vec::new(), position))).collect();
        let mut results: Vec<Option<RequestOutput>> = vec![None; ids.len()];
        let mut generated = 0usize;
        while self.has_unfinished() {
            for output in self.step()? {
                let Some((completions, position)) = pending.get_mut(&output.request) else { continue };
                for delta in output.deltas {
                    let slot = match completions.iter().position(|c| c.index == delta.index) {
                        Some(slot) => slot,
                        None => {
                            completions.push(Completion { index: delta.index, text: String::new(), token_ids: Vec::new(), finish_reason: FinishReason::Length, logprobs: Vec::new() });
                            completions.len() - 1
                        }
                    };
                    let completion = &mut completions[slot];
                    completion.text.push_str(&delta.text);
                    completion.token_ids.extend(delta.token);
                    completion.logprobs.extend(delta.logprobs);
                    if let Some(reason) = delta.finish_reason {
                        completion.finish_reason = reason;
                    }
                    generated += usize::from(delta.token.is_some());
                }
                if let Some(metrics) = output.finished {
                    let position = *position;
                    if let Some((mut completions, _)) = pending.remove(&output.request) {
                        completions.sort_by_key(|c| c.index);
                        results[position] = Some(RequestOutput { completions, metrics });
                    }
                    bar.inc(1);
                }
            }
            let seconds = bar.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("{:.1} tokens/s", generated as f64 / seconds));
        }
        bar.finish_and_clear();
        results
            .into_iter()
            .enumerate()
            .map(|(position, result)| result.ok_or_else(|| Error::Device(format!("request {position} was dropped before it finished"))))
            .collect()
    }
}

fn progress_bar(visible: bool, requests: u64) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(requests);
    bar.set_style(
        ProgressStyle::with_template("generating {bar:30} {pos}/{len} requests [{elapsed}] {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
