//! The engine: owns the model, the paged KV pool and the scheduler, and runs the loop
//! one step at a time. Requests come in through [`Engine::add_request`], each step
//! returns what every request produced, and [`Engine::abort`] drops a request at once.
//! The offline API ([`Engine::generate`]) and the server are both built on `step`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ember_models::{PagedKvCache, SequenceChunk};

use super::block_pool::BlockPool;
use super::sampling::{SamplingParams, TokenLogprobs};
use super::scheduler::Scheduler;
use super::sequence::{CompletionDelta, FinishReason, RequestId, Sequence};
use super::stop::StopStrings;
use super::Sampler;
use crate::error::Error;
use crate::model::LoadedModel;
use crate::tokenizer::IncrementalDecoder;

/// How much memory the KV pool gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvCacheSize {
    Bytes(usize),
    Blocks(usize),
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    pub kv_cache: KvCacheSize,
    /// Most sequences in one step.
    pub max_num_seqs: usize,
    /// Most tokens in one step; longer prompts are prefilled in chunks of this size.
    pub max_num_batched_tokens: usize,
    /// Longest sequence (prompt and output); defaults to the model's positions, and is
    /// never more than the KV pool holds.
    pub max_model_len: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { block_size: 16, kv_cache: KvCacheSize::Bytes(512 << 20), max_num_seqs: 64, max_num_batched_tokens: 2048, max_model_len: None }
    }
}

/// A prompt as text (tokenized with the model's tokenizer) or as token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

impl From<&str> for Prompt {
    fn from(text: &str) -> Self {
        Self::Text(text.to_string())
    }
}

/// Timings of a finished request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestMetrics {
    pub prompt_tokens: usize,
    /// Over all `n` completions.
    pub completion_tokens: usize,
    /// From arrival to the first sampled token.
    pub time_to_first_token: Duration,
    /// From arrival to the end.
    pub latency: Duration,
}

impl RequestMetrics {
    /// From the first token to the last.
    pub fn decode_time(&self) -> Duration {
        self.latency.saturating_sub(self.time_to_first_token)
    }

    /// Generation speed after the first token, for a request of one completion.
    pub fn decode_tokens_per_second(&self) -> f64 {
        self.completion_tokens.saturating_sub(1) as f64 / self.decode_time().as_secs_f64().max(f64::EPSILON)
    }
}

/// What a request produced in one step.
#[derive(Debug, Clone)]
pub struct StepOutput {
    pub request: RequestId,
    pub deltas: Vec<CompletionDelta>,
    /// Set once every completion of the request has finished.
    pub finished: Option<RequestMetrics>,
}

struct RequestState {
    prompt_tokens: usize,
    unfinished: usize,
    completion_tokens: usize,
    arrival: Instant,
    first_token: Option<Instant>,
}

/// Counters for monitoring and for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    pub preemptions: u64,
}

pub struct Engine {
    loaded: LoadedModel,
    cache: PagedKvCache,
    scheduler: Scheduler,
    requests: HashMap<RequestId, RequestState>,
    next_id: RequestId,
    eos_token_ids: Vec<u32>,
    max_model_len: usize,
}

impl Engine {
    /// Allocates the KV pool on the model's device.
    pub fn new(loaded: LoadedModel, config: &EngineConfig) -> Result<Self, Error> {
        let model = &loaded.model;
        if config.block_size == 0 || config.max_num_seqs == 0 || config.max_num_batched_tokens == 0 {
            return Err(Error::InvalidArgument("block size, max sequences and max batched tokens must be at least 1".into()));
        }
        let per_block = PagedKvCache::bytes_per_block(model.config(), model.dtype(), config.block_size);
        let num_blocks = match config.kv_cache {
            KvCacheSize::Blocks(n) => n,
            KvCacheSize::Bytes(bytes) => bytes / per_block,
        };
        if num_blocks == 0 {
            return Err(Error::InvalidArgument(format!("the KV cache needs at least one block of {per_block} bytes")));
        }
        let capacity = num_blocks * config.block_size;
        let max_model_len = config.max_model_len.unwrap_or(usize::MAX).min(model.config().max_position_embeddings).min(capacity);
        let cache = model.new_paged_cache(num_blocks, config.block_size);
        let eos_token_ids = loaded.stop_token_ids();
        Ok(Self {
            loaded,
            cache,
            scheduler: Scheduler::new(BlockPool::new(num_blocks, config.block_size), config.max_num_seqs, config.max_num_batched_tokens),
            requests: HashMap::new(),
            next_id: 0,
            eos_token_ids,
            max_model_len,
        })
    }

    pub fn loaded(&self) -> &LoadedModel {
        &self.loaded
    }

    /// For weight reloads between steps; the KV pool stays as it is.
    pub fn loaded_mut(&mut self) -> &mut LoadedModel {
        &mut self.loaded
    }

    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    pub fn stats(&self) -> EngineStats {
        let pool = &self.scheduler.pool;
        EngineStats {
            running: self.scheduler.running.len(),
            waiting: self.scheduler.waiting.len(),
            kv_blocks_used: pool.num_used(),
            kv_blocks_total: pool.num_blocks(),
            preemptions: self.scheduler.preemptions,
        }
    }

    pub fn has_unfinished(&self) -> bool {
        self.scheduler.has_work()
    }

    /// Queues a request; it joins the running batch at the next step with room for it.
    pub fn add_request(&mut self, prompt: Prompt, params: SamplingParams) -> Result<RequestId, Error> {
        params.validate().map_err(Error::InvalidArgument)?;
        let tokenizer = self.loaded.tokenizer.as_ref();
        if tokenizer.is_none() && !params.stop.is_empty() {
            return Err(Error::InvalidArgument("stop strings need a tokenizer, and this model has none".into()));
        }
        let prompt_ids = match prompt {
            Prompt::Tokens(ids) => ids,
            Prompt::Text(text) => self.loaded.tokenizer()?.encode(&text, true)?,
        };
        self.check_prompt(&prompt_ids)?;
        let id = self.next_id;
        self.next_id += 1;
        let mut stop_token_ids = params.stop_token_ids.clone();
        if !params.ignore_eos {
            stop_token_ids.extend(&self.eos_token_ids);
        }
        let n = params.n;
        let seq = Sequence {
            request: id,
            index: 0,
            prompt_len: prompt_ids.len(),
            tokens: prompt_ids,
            computed: 0,
            blocks: Vec::new(),
            stops: StopStrings::new(&params.stop),
            sampler: Sampler::for_completion(SamplingParams { stop_token_ids, ..params }, 0),
            decoder: tokenizer.map(|_| IncrementalDecoder::new(true)),
            forks_pending: n - 1,
        };
        self.requests.insert(
            id,
            RequestState { prompt_tokens: seq.prompt_len, unfinished: n, completion_tokens: 0, arrival: Instant::now(), first_token: None },
        );
        self.scheduler.waiting.push_back(seq);
        Ok(id)
    }

    /// Drops a request wherever it is, freeing its KV blocks now. Returns whether the
    /// request was still known.
    pub fn abort(&mut self, request: RequestId) -> bool {
        let known = self.requests.remove(&request).is_some();
        self.scheduler.abort(request) || known
    }

    /// Runs one batched forward pass over what the scheduler picks and samples a token
    /// for every sequence whose tokens are all in the cache. Returns nothing when idle.
    pub fn step(&mut self) -> Result<Vec<StepOutput>, Error> {
        let plan = self.scheduler.schedule();
        if plan.chunks.is_empty() {
            return Ok(Vec::new());
        }
        let model = &self.loaded.model;
        self.cache.copy_blocks(&plan.copies, model.device());
        let running = &self.scheduler.running;
        let chunks: Vec<SequenceChunk> = plan
            .chunks
            .iter()
            .map(|&(i, len)| {
                let seq = &running[i];
                SequenceChunk { tokens: &seq.tokens[seq.computed..seq.computed + len], start: seq.computed, block_table: &seq.blocks }
            })
            .collect();
        let logits = model.forward_paged(&chunks, &mut self.cache)?;
        let vocab = model.config().vocab_size;
        let logits = logits.try_into_vec_as::<f32>().map_err(|e| Error::Device(format!("reading logits: {e:?}")))?;

        let mut outputs: Vec<StepOutput> = Vec::new();
        let mut finished = Vec::new();
        let mut forks = Vec::new();
        for (row, &(i, len)) in plan.chunks.iter().enumerate() {
            let seq = &mut self.scheduler.running[i];
            seq.computed += len;
            if seq.uncomputed() > 0 {
                continue; // a prefill chunk: nothing to sample yet
            }
            let row = &logits[row * vocab..(row + 1) * vocab];
            // Once the prompt is in the cache, the other completions fork off and share
            // its blocks.
            let mut siblings: Vec<Sequence> = (1..=seq.forks_pending).map(|index| seq.fork(index)).collect();
            seq.forks_pending = 0;
            for block in siblings.iter().flat_map(|s| &s.blocks) {
                self.scheduler.pool.share(*block);
            }
            let tokenizer = self.loaded.tokenizer.as_ref();
            let mut deltas = vec![advance(&mut self.scheduler.running[i], row, tokenizer, self.max_model_len)?];
            for sibling in &mut siblings {
                deltas.push(advance(sibling, row, tokenizer, self.max_model_len)?);
            }
            forks.extend(siblings);
            let request = self.scheduler.running[i].request;
            for delta in &deltas {
                if delta.finish_reason.is_some() {
                    finished.push((request, delta.index));
                }
            }
            outputs.push(self.record(request, deltas));
        }
        // Siblings forked this step join the end of the running batch.
        self.scheduler.running.extend(forks);
        for (request, index) in finished {
            if let Some(pos) = self.scheduler.running.iter().position(|s| s.request == request && s.index == index) {
                self.scheduler.retire(pos);
            }
        }
        Ok(outputs)
    }

    /// Updates a request's counters with a step's deltas; fills `finished` at its end.
    fn record(&mut self, request: RequestId, deltas: Vec<CompletionDelta>) -> StepOutput {
        let mut output = StepOutput { request, deltas, finished: None };
        let Some(state) = self.requests.get_mut(&request) else { return output };
        let now = Instant::now();
        state.first_token.get_or_insert(now);
        state.completion_tokens += output.deltas.iter().filter(|d| d.token.is_some()).count();
        state.unfinished -= output.deltas.iter().filter(|d| d.finish_reason.is_some()).count().min(state.unfinished);
        if state.unfinished == 0 {
            output.finished = Some(RequestMetrics {
                prompt_tokens: state.prompt_tokens,
                completion_tokens: state.completion_tokens,
                time_to_first_token: state.first_token.unwrap_or(now) - state.arrival,
                latency: now - state.arrival,
            });
            self.requests.remove(&request);
        }
        output
    }

    /// Rejects empty prompts, ids outside the vocabulary, and prompts that leave no room
    /// for a token within the context.
    fn check_prompt(&self, ids: &[u32]) -> Result<(), Error> {
        super::check_prompt(&self.loaded.model, ids)?;
        if ids.len() >= self.max_model_len {
            return Err(Error::PromptTooLong { tokens: ids.len(), max_model_len: self.max_model_len });
        }
        Ok(())
    }
}

/// Samples the next token of `seq` from its logits row and applies stop conditions.
fn advance(seq: &mut Sequence, row: &[f32], tokenizer: Option<&crate::Tokenizer>, max_model_len: usize) -> Result<CompletionDelta, Error> {
    let mut logits = row.to_vec();
    let (prompt, output) = seq.tokens.split_at(seq.prompt_len);
    let token = seq.sampler.sample(&mut logits, prompt, output);
    let params = seq.sampler.params();
    let logprobs = params.logprobs.map(|top| TokenLogprobs::new(row, token, top));
    let mut delta = CompletionDelta { index: seq.index, token: None, text: String::new(), logprobs: None, finish_reason: None };
    if params.stop_token_ids.contains(&token) {
        delta.finish_reason = Some(FinishReason::Stop);
    } else {
        let max_tokens = params.max_tokens;
        seq.tokens.push(token);
        delta.token = Some(token);
        delta.logprobs = logprobs;
        if let (Some(decoder), Some(tokenizer)) = (seq.decoder.as_mut(), tokenizer) {
            if let Some(piece) = decoder.step(tokenizer, token)? {
                let (ready, stopped) = seq.stops.push(&piece);
                delta.text.push_str(ready);
                if stopped {
                    delta.finish_reason = Some(FinishReason::Stop);
                }
            }
        }
        if delta.finish_reason.is_none() && (seq.output().len() >= max_tokens || seq.tokens.len() >= max_model_len) {
            delta.finish_reason = Some(FinishReason::Length);
        }
    }
    if delta.finish_reason.is_some() && !seq.stops.stopped() {
        delta.text.push_str(seq.stops.flush());
    }
    Ok(delta)
}
