//! Turning one row of logits into a token, per sequence: penalties, temperature, top-k,
//! top-p, min-p, then a draw from the sequence's own seeded generator (or argmax when
//! the temperature is zero). Each sequence owns its generator, so a seeded request gives
//! the same tokens alone or inside any batch.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What a request asks of generation, with vLLM's names and defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1.0 means no nucleus cut.
    pub top_p: f32,
    /// Drops tokens less likely than `min_p` times the most likely one; 0 disables.
    pub min_p: f32,
    /// 1.0 means no penalty (the CTRL/transformers definition, over prompt and output).
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated (OpenAI's).
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logit of tokens already generated (OpenAI's).
    pub frequency_penalty: f32,
    /// Seeds the request's generators; completion `i` of `n` uses `seed + i`.
    pub seed: Option<u64>,
    pub max_tokens: usize,
    /// Completions per prompt; they share the prompt's KV blocks.
    pub n: usize,
    /// Strings that end a completion; its text is cut before them.
    pub stop: Vec<String>,
    /// Tokens that end a completion, besides the model's end-of-sequence tokens.
    pub stop_token_ids: Vec<u32>,
    /// Keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Return the sampled token's log-probability and this many top alternatives.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            max_tokens: 16,
            n: 1,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }
}

/// Most alternatives a request may ask for per token (OpenAI's limit is 20).
pub const MAX_LOGPROBS: usize = 20;

impl SamplingParams {
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Rejects values that have no meaning, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be a finite number >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(format!("repetition_penalty must be a finite number > 0, got {}", self.repetition_penalty));
        }
        for (name, value) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if !(-2.0..=2.0).contains(&value) {
                return Err(format!("{name} must be in [-2, 2], got {value}"));
            }
        }
        if self.n == 0 {
            return Err("n must be at least 1".into());
        }
        if self.max_tokens == 0 {
            return Err("max_tokens must be at least 1".into());
        }
        if let Some(k) = self.logprobs.filter(|&k| k > MAX_LOGPROBS) {
            return Err(format!("logprobs must be at most {MAX_LOGPROBS}, got {k}"));
        }
        Ok(())
    }
}

/// The log-probability of a sampled token and of the most likely alternatives, from the
/// model's raw logits (before penalties and temperature, as vLLM reports them).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    /// Most likely first.
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprobs {
    pub fn new(logits: &[f32], token: u32, top: usize) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_total = logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32 + max;
        let logprob = |t: u32| logits[t as usize] - log_total;
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let top = top.min(order.len());
        if top > 0 {
            order.select_nth_unstable_by(top - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        }
        order.truncate(top);
        order.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        Self { token, logprob: logprob(token), top: order.into_iter().map(|t| (t, logprob(t))).collect() }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Self::for_completion(params, 0)
    }

    /// The sampler of completion `index` of a request: seeded with `seed + index`.
    pub fn for_completion(params: SamplingParams, index: usize) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed.wrapping_add(index as u64)),
            None => StdRng::from_os_rng(),
        };
        Self { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (one vocabulary row, modified in place) given
    /// the prompt and the tokens generated so far.
    pub fn sample(&mut self, logits: &mut [f32], prompt: &[u32], output: &[u32]) -> u32 {
        apply_repetition_penalty(logits, prompt.iter().chain(output), self.params.repetition_penalty);
        apply_output_penalties(logits, output, self.params.presence_penalty, self.params.frequency_penalty);
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let mut candidates: Vec<(u32, f32)> =
            logits.iter().enumerate().map(|(i, &l)| (i as u32, l / self.params.temperature)).collect();
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if self.params.top_k > 0 {
            candidates.truncate(self.params.top_k);
        }
        let max = candidates[0].1;
        let mut probs: Vec<f32> = candidates.iter().map(|&(_, l)| (l - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.params.top_p < 1.0 {
            // Keep the smallest prefix whose mass reaches top_p (always at least one token).
            let mut mass = 0.0;
            let keep = probs.iter().position(|&p| {
                mass += p;
                mass >= self.params.top_p
            });
            let keep = keep.map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            candidates.truncate(keep);
        }
        if self.params.min_p > 0.0 {
            // Sorted descending, so the kept tokens are a prefix; the first always stays.
            let floor = probs[0] * self.params.min_p;
            let keep = probs.iter().take_while(|&&p| p >= floor).count().max(1);
            probs.truncate(keep);
            candidates.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut draw = self.rng.random::<f32>() * total;
        for (&(token, _), &p) in candidates.iter().zip(&probs) {
            if draw < p {
                return token;
            }
            draw -= p;
        }
        candidates[candidates.len() - 1].0
    }
}

/// Index of the largest logit; the first one on ties (as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Divides positive logits and multiplies negative ones of already-seen tokens.
fn apply_repetition_penalty<'a>(logits: &mut [f32], seen: impl Iterator<Item = &'a u32>, penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut hit = vec![false; logits.len()];
    for &t in seen {
        if let Some(slot) = hit.get_mut(t as usize) {
            *slot = true;
        }
    }
    for (logit, _) in logits.iter_mut().zip(&hit).filter(|(_, &h)| h) {
        *logit = if *logit > 0.0 { *logit / penalty } else { *logit * penalty };
    }
}

/// OpenAI's presence and frequency penalties, over generated tokens only.
fn apply_output_penalties(logits: &mut [f32], output: &[u32], presence: f32, frequency: f32) {
    if presence == 0.0 && frequency == 0.0 {
        return;
    }
    let mut counts = std::collections::HashMap::<u32, u32>::new();
    for &t in output {
        *counts.entry(t).or_default() += 1;
    }
    for (token, count) in counts {
        if let Some(logit) = logits.get_mut(token as usize) {
            *logit -= presence + frequency * count as f32;
        }
    }
}
