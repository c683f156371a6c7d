//! A paged KV cache: every layer's keys and values live in one preallocated pool of
//! fixed-size blocks, and a sequence owns a list of blocks (its block table) instead of a
//! contiguous buffer. A step over several sequences writes each new token's key/value to
//! its slot and gathers each sequence's context through its block table.
//!
//! Which blocks are free or shared is the engine's business; the pool only stores.

use burn::tensor::{Bool, DType, Device, IndexingUpdateOp, Int, Tensor, TensorData};
use ember_quant::kernels::host::attention::QuerySpan;
use ember_quant::kernels::AttentionKernel;
use ember_quant::ComputeDtype;

use crate::config::ModelConfig;

/// One sequence's part of a batched step: `tokens` go at positions `start..`, and its
/// block table covers at least `start + tokens.len()` positions.
#[derive(Debug, Clone, Copy)]
pub struct SequenceChunk<'a> {
    pub tokens: &'a [u32],
    /// Positions already in the cache for this sequence.
    pub start: usize,
    pub block_table: &'a [u32],
}

impl SequenceChunk<'_> {
    /// Positions in the cache once this chunk is written.
    pub fn context_len(&self) -> usize {
        self.start + self.tokens.len()
    }
}

/// Keys and values of every layer, `[num_blocks, kv_heads, block_size, head_dim]` each:
/// one KV head's positions of a block are adjacent, so a kernel reading one head's
/// context walks whole runs of `block_size * head_dim` values.
#[derive(Debug)]
pub struct PagedKvCache {
    layers: Vec<PagedLayer>,
    block_size: usize,
    num_blocks: usize,
    kv_heads: usize,
}

#[derive(Debug)]
pub struct PagedLayer {
    keys: Tensor<4>,
    values: Tensor<4>,
}

impl PagedKvCache {
    /// Allocates the whole pool up front, zero-filled, in the model's compute dtype.
    pub fn new(config: &ModelConfig, device: &Device, dtype: ComputeDtype, num_blocks: usize, block_size: usize) -> Self {
        let shape = [num_blocks, config.num_kv_heads, block_size, config.head_dim];
        let layers = (0..config.num_layers)
            .map(|_| PagedLayer {
                keys: Tensor::zeros(shape, (device, dtype.burn())),
                values: Tensor::zeros(shape, (device, dtype.burn())),
            })
            .collect();
        Self { layers, block_size, num_blocks, kv_heads: config.num_kv_heads }
    }

    /// Device bytes one block takes across all layers (keys and values).
    pub fn bytes_per_block(config: &ModelConfig, dtype: ComputeDtype, block_size: usize) -> usize {
        2 * config.num_layers * block_size * config.num_kv_heads * config.head_dim * dtype.burn().size()
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub(crate) fn layer(&mut self, index: usize) -> &mut PagedLayer {
        &mut self.layers[index]
    }

    /// Row of a pool's `[num_blocks * kv_heads * block_size, head_dim]` view holding
    /// `kv_head`'s entry for position `pos` of `chunk`'s sequence.
    fn row(&self, chunk: &SequenceChunk, pos: usize, kv_head: usize) -> i64 {
        let block = chunk.block_table[pos / self.block_size] as usize;
        ((block * self.kv_heads + kv_head) * self.block_size + pos % self.block_size) as i64
    }

    /// Copies whole blocks (`(source, destination)` pairs) in every layer: a forked
    /// sequence gets its own copy of a partly filled block it shared.
    pub fn copy_blocks(&mut self, pairs: &[(u32, u32)], device: &Device) {
        if pairs.is_empty() {
            return;
        }
        let blocks = |pick: fn(&(u32, u32)) -> u32| ints(pairs.iter().map(|pair| pick(pair) as i64).collect(), device);
        let (from, to) = (blocks(|p| p.0), blocks(|p| p.1));
        for layer in &mut self.layers {
            for pool in [&mut layer.keys, &mut layer.values] {
                let copies = pool.clone().select(0, from.clone());
                update_rows(pool, to.clone(), copies);
            }
        }
    }
}

impl PagedLayer {
    /// Stores `keys`/`values` (`[tokens, kv_heads, head_dim]`) at the pool `rows` of
    /// [`StepLayout::write_rows`].
    pub(crate) fn write(&mut self, rows: Tensor<1, Int>, keys: Tensor<3>, values: Tensor<3>) {
        for (pool, entries) in [(&mut self.keys, keys), (&mut self.values, values)] {
            let [tokens, kv_heads, dim] = entries.dims();
            update_rows(pool, rows.clone(), entries.reshape([tokens * kv_heads, 1, 1, dim]));
        }
    }

    /// The whole pools (handles), for kernels that read them in place.
    pub(crate) fn pools(&self) -> (Tensor<4>, Tensor<4>) {
        (self.keys.clone(), self.values.clone())
    }

    /// Gathers the pool `rows` of [`GatheredStep::read_rows`] as `[batch, kv_heads,
    /// context, head_dim]`.
    pub(crate) fn read(&self, rows: Tensor<1, Int>, batch: usize, context: usize) -> (Tensor<4>, Tensor<4>) {
        let gather = |pool: &Tensor<4>| {
            let [blocks, heads, block_size, dim] = pool.dims();
            pool.clone().reshape([blocks * heads * block_size, dim]).select(0, rows.clone()).reshape([batch, heads, context, dim])
        };
        (gather(&self.keys), gather(&self.values))
    }
}

/// Writes `entries` (`[count, …]`) over rows `rows` of the pool seen as 2-D with rows
/// of one entry's size: a head's position (`[count, 1, 1, dim]`) or a whole block. Flex
/// copies whole rows of a 2-D tensor, where for 4-D it computes every value's place; the
/// pool is taken out first, so it is uniquely owned and updated in place.
fn update_rows(pool: &mut Tensor<4>, rows: Tensor<1, Int>, entries: Tensor<4>) {
    let shape = pool.dims();
    let [count, a, b, c] = entries.dims();
    let row_len = a * b * c;
    let device = entries.device();
    let whole = std::mem::replace(pool, Tensor::empty([0, 0, 0, 0], &device));
    let view = whole.reshape([shape.iter().product::<usize>() / row_len, row_len]);
    *pool = view.select_assign(0, rows, entries.reshape([count, row_len]), IndexingUpdateOp::Assign).reshape(shape);
}

/// Index tensors for one batched step, built once on the host and shared by every layer.
///
/// Tokens travel flattened (`[tokens, hidden]`, sequences one after another) through the
/// linears; how attention finds each sequence's context is [`StepAttention`].
#[derive(Debug, Clone)]
pub struct StepLayout {
    /// Pool row (see [`PagedKvCache::row`]) of every new token's every KV head.
    pub(crate) write_rows: Tensor<1, Int>,
    /// Flat row of each sequence's last token: the only rows that need logits.
    pub(crate) last_rows: Tensor<1, Int>,
    pub(crate) positions: Vec<usize>,
    pub(crate) attention: StepAttention,
    pub(crate) sliding_window: Option<usize>,
}

/// What the step's attention kernel reads besides the pools.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per step
pub(crate) enum StepAttention {
    /// The Burn-ops path: queries padded to `[batch, max_query, …]`, against contexts
    /// gathered and padded to `max_context` and masked.
    Gathered(GatheredStep),
    /// The decode kernel: block tables (i32 `[batch, max_blocks]`) and context lengths
    /// (i32 `[batch]`).
    PagedDecode { block_tables: Tensor<2, Int>, context_lens: Tensor<1, Int> },
    /// The host kernel: each sequence's rows, start and block table.
    Host(Vec<QuerySpan>),
}

#[derive(Debug, Clone)]
pub(crate) struct GatheredStep {
    pub(crate) batch: usize,
    pub(crate) max_query: usize,
    pub(crate) max_context: usize,
    /// Pool row of every KV head's every padded context position, `[batch, kv_heads,
    /// max_context]` flat (padding reads the sequence's position 0, masked).
    pub(crate) read_rows: Tensor<1, Int>,
    /// Flat token row of every padded query (padding repeats row 0); `None` when every
    /// sequence brings one token, so flat and padded are the same.
    pub(crate) query_rows: Option<Tensor<1, Int>>,
    /// Padded query row of every flat token, to come back from attention.
    pub(crate) token_rows: Option<Tensor<1, Int>>,
    pub(crate) mask: Option<Tensor<4, Bool>>,
}

impl StepLayout {
    /// Every sequence brings one token: the step may run the decode kernel.
    pub fn is_decode_only(chunks: &[SequenceChunk]) -> bool {
        chunks.iter().all(|c| c.tokens.len() == 1)
    }

    /// Checks the chunks against `cache` and builds the step's indices for `kernel`
    /// ([`AttentionKernel::PagedDecode`] only for a decode-only step).
    pub fn new(chunks: &[SequenceChunk], cache: &PagedKvCache, sliding_window: Option<usize>, kernel: AttentionKernel, device: &Device) -> Result<Self, String> {
        let (block_size, num_blocks) = (cache.block_size, cache.num_blocks);
        if chunks.is_empty() {
            return Err("a step needs at least one sequence".into());
        }
        for (i, chunk) in chunks.iter().enumerate() {
            if chunk.tokens.is_empty() {
                return Err(format!("sequence {i} of the step has no tokens"));
            }
            let needed = chunk.context_len().div_ceil(block_size);
            if chunk.block_table.len() < needed {
                return Err(format!("sequence {i} needs {needed} blocks for {} positions, its table has {}", chunk.context_len(), chunk.block_table.len()));
            }
            if let Some(bad) = chunk.block_table[..needed].iter().find(|&&b| b as usize >= num_blocks) {
                return Err(format!("sequence {i} refers to block {bad}, the pool has {num_blocks}"));
            }
        }
        if kernel == AttentionKernel::PagedDecode && !Self::is_decode_only(chunks) {
            return Err("the decode kernel takes one token per sequence".into());
        }
        let tokens: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        let mut write_rows = Vec::with_capacity(tokens * cache.kv_heads);
        let mut positions = Vec::with_capacity(tokens);
        let mut last_rows = Vec::with_capacity(chunks.len());
        let mut flat = 0usize;
        for chunk in chunks {
            for pos in chunk.start..chunk.context_len() {
                write_rows.extend((0..cache.kv_heads).map(|head| cache.row(chunk, pos, head)));
                positions.push(pos);
            }
            flat += chunk.tokens.len();
            last_rows.push((flat - 1) as i64);
        }
        let attention = match kernel {
            AttentionKernel::Reference => StepAttention::Gathered(GatheredStep::new(chunks, cache, sliding_window, device)),
            AttentionKernel::PagedDecode => paged_decode(chunks, block_size, device),
            AttentionKernel::Host => StepAttention::Host(query_spans(chunks, block_size)),
        };
        Ok(Self { write_rows: ints(write_rows, device), last_rows: ints(last_rows, device), positions, attention, sliding_window })
    }

    /// Tokens in the step, all sequences together.
    pub fn tokens(&self) -> usize {
        self.positions.len()
    }
}

fn ints(values: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let len = values.len();
    Tensor::<1, Int>::from_data(TensorData::new(values, [len]), device)
}

impl GatheredStep {
    fn new(chunks: &[SequenceChunk], cache: &PagedKvCache, sliding_window: Option<usize>, device: &Device) -> Self {
        let batch = chunks.len();
        let max_query = chunks.iter().map(|c| c.tokens.len()).max().unwrap_or(1);
        let max_context = chunks.iter().map(SequenceChunk::context_len).max().unwrap_or(1);
        let tokens: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        let mut read_rows = Vec::with_capacity(batch * cache.kv_heads * max_context);
        let mut query_rows = Vec::with_capacity(batch * max_query);
        let mut token_rows = Vec::with_capacity(tokens);
        let mut mask = Vec::with_capacity(batch * max_query * max_context);
        let mut flat = 0usize;
        for (i, chunk) in chunks.iter().enumerate() {
            let (start, len, context) = (chunk.start, chunk.tokens.len(), chunk.context_len());
            for head in 0..cache.kv_heads {
                read_rows.extend((0..max_context).map(|pos| cache.row(chunk, if pos < context { pos } else { 0 }, head)));
            }
            for q in 0..max_query {
                query_rows.push(if q < len { (flat + q) as i64 } else { 0 });
                let query_pos = start + q;
                mask.extend((0..max_context).map(|key| match q < len {
                    true => key > query_pos || sliding_window.is_some_and(|w| query_pos - key >= w),
                    // Padded queries see key 0 only, so their softmax stays finite.
                    false => key > 0,
                }));
            }
            token_rows.extend((0..len).map(|q| (i * max_query + q) as i64));
            flat += len;
        }
        let padded = max_query > 1;
        let any_masked = mask.iter().any(|&m| m);
        Self {
            batch,
            max_query,
            max_context,
            read_rows: ints(read_rows, device),
            query_rows: padded.then(|| ints(query_rows, device)),
            token_rows: padded.then(|| ints(token_rows, device)),
            mask: any_masked.then(|| Tensor::from_data(TensorData::new(mask, [batch, 1, max_query, max_context]), device)),
        }
    }
}

/// The decode kernel's block tables and context lengths.
fn paged_decode(chunks: &[SequenceChunk], block_size: usize, device: &Device) -> StepAttention {
    let batch = chunks.len();
    let width = chunks.iter().map(|c| c.context_len().div_ceil(block_size)).max().unwrap_or(1);
    let tables: Vec<i32> = chunks.iter().flat_map(|c| (0..width).map(|i| c.block_table.get(i).map_or(0, |&b| b as i32))).collect();
    let lens: Vec<i32> = chunks.iter().map(|c| c.context_len() as i32).collect();
    StepAttention::PagedDecode {
        block_tables: Tensor::<2, Int>::from_data(TensorData::new(tables, [batch, width]), (device, DType::I32)),
        context_lens: Tensor::<1, Int>::from_data(TensorData::new(lens, [batch]), (device, DType::I32)),
    }
}

/// Each sequence's rows, first position and the blocks its context needs.
fn query_spans(chunks: &[SequenceChunk], block_size: usize) -> Vec<QuerySpan> {
    let mut first_row = 0;
    chunks
        .iter()
        .map(|chunk| {
            let rows = first_row..first_row + chunk.tokens.len();
            first_row = rows.end;
            let blocks = chunk.context_len().div_ceil(block_size);
            QuerySpan { rows, start: chunk.start, block_table: chunk.block_table[..blocks].to_vec() }
        })
        .collect()
}
