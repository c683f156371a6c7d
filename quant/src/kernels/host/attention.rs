//! Attention for a batched step on the Flex device, read in place from the paged KV
//! pools: each sequence's keys and values are found through its block table, so no
//! context is gathered into a padded tensor and no mask is built, and prefill chunks and
//! decode tokens share one call.
//!
//! The work splits by (sequence, KV head, block of queries). A block's queries, for every
//! query head that reads the KV head, are the rows of one flash-attention pass over the
//! keys they may see, a chunk at a time: the chunk's keys and values are copied out of
//! their blocks once for all those rows, an online softmax keeps each row's running max
//! and sum (rescaling the row's output when the max grows), and the chunk's values are
//! added to the output. Prefill items have enough rows for the `gemm` crate to compute
//! the scores and value sums; decode items (one row per head of a group) take them key
//! by key. When there are too few items for the threads (a decode step of one or two
//! sequences), each item's keys are split into parts computed in parallel, and the
//! parts' sums merged after (flash-decoding).

use std::ops::Range;

use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use super::{dot, HostBuffer};

/// Most rows (queries × heads of a group) in one work item: enough for `gemm`'s
/// micro-kernels to run full, few enough that a prefill splits across the threads.
const QUERY_ROWS: usize = 64;

/// Keys per chunk of the online softmax.
const KEY_CHUNK: usize = 128;

/// Rows up to which an item's scores and value sums are computed key by key, each key
/// read once for all rows, rather than by `gemm`: decode items have one row per head of a
/// group (1–8 in current models), too few for `gemm`'s packing to pay.
const GEMM_ROWS: usize = 16;

/// One sequence's queries in a step.
#[derive(Debug, Clone)]
pub struct QuerySpan {
    /// Its rows of `q`: the step's tokens are flat, one sequence after another.
    pub rows: Range<usize>,
    /// Position of its first query; the queries' own keys are in the pool already.
    pub start: usize,
    /// Pool blocks holding positions `0..start + rows.len()`.
    pub block_table: Vec<u32>,
}

impl QuerySpan {
    fn context_len(&self) -> usize {
        self.start + self.rows.len()
    }
}

/// Causal attention of `q` (`[tokens, heads, head_dim]`) over the paged `key_pool` and
/// `value_pool` (`[blocks, kv_heads, block_size, head_dim]`), softmax in f32: query head
/// `h` reads KV head `h / (heads / kv_heads)`, and a query at position `p` sees keys `p -
/// window + 1..=p` (all of `0..=p` without a window). Returns `[tokens, heads, head_dim]`
/// in `q`'s dtype, or `None` if a tensor is not on the Flex device, the pools are not
/// f32, f16 or bf16, or the shapes, spans and block tables do not fit together.
pub fn paged_attention(q: &Tensor<3>, key_pool: &Tensor<4>, value_pool: &Tensor<4>, spans: &[QuerySpan], window: Option<usize>) -> Option<Tensor<3>> {
    let [tokens, heads, dim] = q.dims();
    let [blocks, kv_heads, block_size, pool_dim] = key_pool.dims();
    let shape = Heads { heads, kv_heads, dim };
    let layout = PoolLayout { block_size, window };
    let fits = value_pool.dims() == key_pool.dims()
        && value_pool.dtype() == key_pool.dtype()
        && pool_dim == dim
        && dim > 0
        && kv_heads > 0
        && heads >= kv_heads
        && heads.is_multiple_of(kv_heads)
        && spans_fit(spans, tokens, blocks, layout);
    if !fits {
        return None;
    }
    let queries = HostBuffer::of(&q.clone().cast(DType::F32))?;
    let (keys, values) = (HostBuffer::of(key_pool)?, HostBuffer::of(value_pool)?);
    let queries = queries.f32s()?;
    let out = match key_pool.dtype() {
        DType::F32 => attend(queries, keys.values::<f32>()?, values.values::<f32>()?, shape, spans, layout),
        DType::F16 => attend(queries, keys.values::<half::f16>()?, values.values::<half::f16>()?, shape, spans, layout),
        DType::BF16 => attend(queries, keys.values::<half::bf16>()?, values.values::<half::bf16>()?, shape, spans, layout),
        _ => return None,
    };
    let out = Tensor::<3>::from_data(TensorData::new(out, [tokens, heads, dim]), (&q.device(), DType::F32));
    Some(out.cast(q.dtype()))
}

/// How the pools are paged, and which keys a query sees.
#[derive(Debug, Clone, Copy)]
struct PoolLayout {
    block_size: usize,
    window: Option<usize>,
}

/// Every span's rows lie within the `tokens` rows without overlap, and its table names
/// pool blocks for all of its positions.
fn spans_fit(spans: &[QuerySpan], tokens: usize, blocks: usize, layout: PoolLayout) -> bool {
    let mut next_row = 0;
    layout.block_size > 0
        && layout.window != Some(0)
        && spans.iter().all(|span| {
            let in_order = span.rows.start >= next_row && span.rows.start < span.rows.end && span.rows.end <= tokens;
            next_row = span.rows.end;
            let needed = span.context_len().div_ceil(layout.block_size);
            in_order && span.block_table.len() >= needed && span.block_table[..needed].iter().all(|&b| (b as usize) < blocks)
        })
}

#[derive(Debug, Clone, Copy)]
struct Heads {
    heads: usize,
    kv_heads: usize,
    dim: usize,
}

impl Heads {
    /// Query heads per KV head.
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// A value of a pool, read as f32.
trait PoolValue: Copy + Sync + bytemuck::Pod + burn::tensor::Element {
    fn to_f32(self) -> f32;

    /// `dst = src` as f32s (same lengths).
    #[inline(always)]
    fn convert(src: &[Self], dst: &mut [f32]) {
        dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v.to_f32());
    }

    /// `values` as f32s: in place when they are, else converted into `scratch`.
    #[inline(always)]
    fn as_f32s<'a>(values: &'a [Self], scratch: &'a mut Vec<f32>) -> &'a [f32] {
        scratch.resize(values.len().max(scratch.len()), 0.0);
        Self::convert(values, &mut scratch[..values.len()]);
        &scratch[..values.len()]
    }
}

impl PoolValue for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[inline(always)]
    fn as_f32s<'a>(values: &'a [Self], _: &'a mut Vec<f32>) -> &'a [f32] {
        values
    }
}

impl PoolValue for half::f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }

    /// One call for the slice: `half` converts it 8 values at a time where the CPU can,
    /// where `to_f32` checks the CPU for every value.
    #[inline(always)]
    fn convert(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
}

impl PoolValue for half::bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

impl HostBuffer {
    /// The values, if they are `E`s.
    fn values<E: PoolValue>(&self) -> Option<&[E]> {
        self.0.as_slice::<E>()
    }
}

/// One work item: queries `tokens` (rows of `q`) of `span`, every head reading
/// `kv_head`, against the positions `keys` (all the tokens may see, or a part of them).
#[derive(Clone)]
struct Item<'a> {
    span: &'a QuerySpan,
    kv_head: usize,
    tokens: Range<usize>,
    keys: Range<usize>,
}

/// An item's output before normalization: per row, the sum of each visible key's
/// value weighted by `e^(score - max)`, with `max` and the sum of those weights.
struct Partial {
    out: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

/// The pools' values for one step, and how to find them.
struct Pools<'a, E> {
    keys: &'a [E],
    values: &'a [E],
    shape: Heads,
    layout: PoolLayout,
}

/// `[tokens, heads, dim]` f32, computed item by item in parallel and then put in place.
fn attend<E: PoolValue>(q: &[f32], keys: &[E], values: &[E], shape: Heads, spans: &[QuerySpan], layout: PoolLayout) -> Vec<f32> {
    let tokens_per_item = (QUERY_ROWS / shape.group()).max(1);
    let whole_items: Vec<Item> = spans
        .iter()
        .flat_map(|span| {
            (0..shape.kv_heads).flat_map(move |kv_head| {
                span.rows.clone().step_by(tokens_per_item).map(move |first| {
                    let tokens = first..(first + tokens_per_item).min(span.rows.end);
                    let first_position = span.start + (first - span.rows.start);
                    let keys = visible_keys(first_position, layout.window).start..first_position + tokens.len();
                    Item { span, kv_head, tokens, keys }
                })
            })
        })
        .collect();
    // Too few items to keep every thread busy (a decode step of one or two sequences):
    // their keys are split, each part a work item, and the parts' sums merged after.
    let wanted_parts = (2 * rayon::current_num_threads()).div_ceil(whole_items.len().max(1));
    let parts_of = |item: &Item| wanted_parts.min(item.keys.len() / MIN_SPLIT_KEYS).max(1);
    let items: Vec<Item> = whole_items.iter().flat_map(|item| split_keys(item, parts_of(item))).collect();
    let pools = Pools { keys, values, shape, layout };
    let partials: Vec<Partial> = items.par_iter().map_init(Scratch::default, |scratch, item| pools.attend_item(q, item, scratch)).collect();

    let Heads { heads, dim, .. } = shape;
    let group = shape.group();
    let mut out = vec![0f32; q.len()];
    let mut next = 0;
    for item in &whole_items {
        let parts = parts_of(item);
        let rows = merge(&partials[next..next + parts], dim);
        next += parts;
        for (token, token_rows) in item.tokens.clone().zip(rows.chunks(group * dim)) {
            let first = (token * heads + item.kv_head * group) * dim;
            out[first..first + group * dim].copy_from_slice(token_rows);
        }
    }
    out
}

/// Fewest keys in one part of a split item: below this, the merge and the second pass
/// over the queries cost more than the threads they occupy save.
const MIN_SPLIT_KEYS: usize = 256;

/// The keys a query at `position` sees.
fn visible_keys(position: usize, window: Option<usize>) -> Range<usize> {
    window.map_or(0, |w| (position + 1).saturating_sub(w))..position + 1
}

/// `item` as `parts` items over consecutive, near-equal parts of its keys.
fn split_keys<'a>(item: &Item<'a>, parts: usize) -> impl Iterator<Item = Item<'a>> + use<'a> {
    let (keys, item) = (item.keys.clone(), item.clone());
    (0..parts).map(move |part| {
        let bound = |part: usize| keys.start + keys.len() * part / parts;
        Item { keys: bound(part)..bound(part + 1), ..item.clone() }
    })
}

/// One item's normalized rows, `[rows, dim]`, from the partials of its key parts: each
/// part's sums are rescaled to the largest max before they are added.
fn merge(partials: &[Partial], dim: usize) -> Vec<f32> {
    let rows = partials.first().map_or(0, |p| p.max.len());
    let mut out = vec![0f32; rows * dim];
    for (row, dst) in out.chunks_mut(dim).enumerate() {
        let max = partials.iter().fold(f32::NEG_INFINITY, |m, p| m.max(p.max[row]));
        let mut sum = 0.0;
        for part in partials {
            // A part that saw none of the row's keys has max -inf, so weight 0.
            let weight = (part.max[row] - max).exp();
            sum += weight * part.sum[row];
            dst.iter_mut().zip(&part.out[row * dim..(row + 1) * dim]).for_each(|(d, &v)| *d += weight * v);
        }
        let inverse = 1.0 / sum;
        dst.iter_mut().for_each(|v| *v *= inverse);
    }
    out
}

/// One worker's buffers, grown to the largest item it meets.
#[derive(Default)]
struct Scratch {
    /// The item's queries, pre-scaled, `[rows, dim]`.
    queries: Vec<f32>,
    /// A chunk's keys and values, `[keys, dim]` each.
    keys: Vec<f32>,
    values: Vec<f32>,
    /// A chunk's scores, then probabilities, `[rows, keys]`.
    scores: Vec<f32>,
    running_max: Vec<f32>,
    running_sum: Vec<f32>,
}

impl Scratch {
    fn prepare(&mut self, rows: usize, dim: usize) {
        fn sized(buffer: &mut Vec<f32>, len: usize) {
            buffer.resize(len.max(buffer.len()), 0.0);
        }
        sized(&mut self.queries, rows * dim);
        sized(&mut self.keys, KEY_CHUNK * dim);
        sized(&mut self.values, KEY_CHUNK * dim);
        sized(&mut self.scores, rows * KEY_CHUNK);
        self.running_max.clear();
        self.running_max.resize(rows, f32::NEG_INFINITY);
        self.running_sum.clear();
        self.running_sum.resize(rows, 0.0);
    }
}

impl<E: PoolValue> Pools<'_, E> {
    /// The item's output rows, `[tokens, group, dim]`, before normalization.
    fn attend_item(&self, q: &[f32], item: &Item, scratch: &mut Scratch) -> Partial {
        #[cfg(target_arch = "x86_64")]
        if super::avx2() {
            // SAFETY: the CPU was just checked to have the features the function is compiled for.
            return unsafe { self.attend_item_avx2(q, item, scratch) };
        }
        self.item_attention(q, item, scratch)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn attend_item_avx2(&self, q: &[f32], item: &Item, scratch: &mut Scratch) -> Partial {
        self.item_attention(q, item, scratch)
    }

    #[inline(always)]
    fn item_attention(&self, q: &[f32], item: &Item, scratch: &mut Scratch) -> Partial {
        let Heads { heads, dim, .. } = self.shape;
        let group = self.shape.group();
        let rows = item.tokens.len() * group;
        scratch.prepare(rows, dim);
        let scale = (dim as f32).powf(-0.5);
        for (i, token) in item.tokens.clone().enumerate() {
            let first = (token * heads + item.kv_head * group) * dim;
            let queries = &q[first..first + group * dim];
            for (dst, &v) in scratch.queries[i * group * dim..(i + 1) * group * dim].iter_mut().zip(queries) {
                *dst = v * scale;
            }
        }
        // Row `r` is the query of token `item.tokens.start + r / group`.
        let first_position = item.span.start + (item.tokens.start - item.span.rows.start);
        let visible = |row: usize| visible_keys(first_position + row / group, self.layout.window);

        let mut out = vec![0f32; rows * dim];
        let Scratch { queries, keys: key_buffer, values: value_buffer, scores, running_max, running_sum } = scratch;
        let queries = &queries[..rows * dim];
        let (running_max, running_sum) = (&mut running_max[..rows], &mut running_sum[..rows]);
        if rows > GEMM_ROWS {
            // Prefill: chunks of keys copied out once for `gemm`'s many rows.
            for chunk_start in item.keys.clone().step_by(KEY_CHUNK) {
                let chunk = chunk_start..(chunk_start + KEY_CHUNK).min(item.keys.end);
                let n = chunk.len();
                let (keys, values) = (&mut key_buffer[..n * dim], &mut value_buffer[..n * dim]);
                self.gather(item, chunk.clone(), keys, values);
                let scores = &mut scores[..rows * n];
                multiply(rows, n, dim, queries, Operand::Transposed(keys), scores, false);
                fold_chunk(scores, chunk, &visible, running_max, running_sum, &mut out);
                multiply(rows, dim, n, scores, Operand::Plain(values), &mut out, true);
            }
        } else {
            // Decode: each block's run of keys read where it lies (f32 pools) or
            // converted once, for the item's few rows, while the next run is fetched.
            let mut runs = self.runs(item, item.keys.clone()).peekable();
            while let Some((run, first)) = runs.next() {
                let n = run.len();
                if let Some((next, next_first)) = runs.peek() {
                    let len = next.len() * dim;
                    super::prefetch(&self.keys[*next_first..*next_first + len]);
                    super::prefetch(&self.values[*next_first..*next_first + len]);
                }
                let keys = E::as_f32s(&self.keys[first..first + n * dim], key_buffer);
                let scores = &mut scores[..rows * n];
                scores_by_key(queries, keys, dim, scores);
                fold_chunk(scores, run, &visible, running_max, running_sum, &mut out);
                let values = E::as_f32s(&self.values[first..first + n * dim], value_buffer);
                add_values_by_key(scores, values, dim, &mut out);
            }
        }
        Partial { out, max: running_max.to_vec(), sum: running_sum.to_vec() }
    }

    /// Copies the keys and values of positions `chunk` of the item's sequence, for its KV
    /// head, into `keys` and `values` (`[chunk, dim]`).
    #[inline(always)]
    fn gather(&self, item: &Item, chunk: Range<usize>, keys: &mut [f32], values: &mut [f32]) {
        let dim = self.shape.dim;
        let mut copied = 0;
        for (run, first) in self.runs(item, chunk) {
            let len = run.len() * dim;
            E::convert(&self.keys[first..first + len], &mut keys[copied..copied + len]);
            E::convert(&self.values[first..first + len], &mut values[copied..copied + len]);
            copied += len;
        }
    }

    /// Positions `keys` of the item's sequence as runs within one block each, with the
    /// pool index of a run's first value for the item's KV head: a run's rows are adjacent.
    #[inline(always)]
    fn runs<'a>(&self, item: &'a Item, keys: Range<usize>) -> impl Iterator<Item = (Range<usize>, usize)> + use<'a, E> {
        let (block_size, kv_heads, dim) = (self.layout.block_size, self.shape.kv_heads, self.shape.dim);
        let mut position = keys.start;
        std::iter::from_fn(move || {
            (position < keys.end).then(|| {
                let (block, offset) = (item.span.block_table[position / block_size] as usize, position % block_size);
                let run = position..(position + block_size - offset).min(keys.end);
                position = run.end;
                (run, ((block * kv_heads + item.kv_head) * block_size + offset) * dim)
            })
        })
    }
}

/// Folds a chunk's scores (`[rows, chunk.len()]`, for the keys at positions `chunk`) into
/// each row's running softmax; `visible` gives the keys a row may see.
#[inline(always)]
fn fold_chunk(scores: &mut [f32], chunk: Range<usize>, visible: &impl Fn(usize) -> Range<usize>, running_max: &mut [f32], running_sum: &mut [f32], out: &mut [f32]) {
    let (n, dim) = (chunk.len(), out.len() / running_max.len());
    let rows = scores.chunks_mut(n).zip(out.chunks_mut(dim)).zip(running_max.iter_mut().zip(running_sum.iter_mut()));
    for (row, ((scores, out), (max, sum))) in rows.enumerate() {
        let seen = visible(row);
        let seen = seen.start.max(chunk.start)..seen.end.min(chunk.end);
        online_softmax(scores, seen.start.saturating_sub(chunk.start)..seen.end.saturating_sub(chunk.start), max, sum, out);
    }
}

/// Folds one chunk of a row's scores into its running softmax: `scores` become the
/// chunk's unnormalized probabilities (zero outside `seen`, the keys the row may see),
/// and `out`, the row's output so far, is rescaled to the new running max.
#[inline(always)]
fn online_softmax(scores: &mut [f32], seen: Range<usize>, running_max: &mut f32, running_sum: &mut f32, out: &mut [f32]) {
    if seen.is_empty() {
        scores.fill(0.0);
        return;
    }
    let (hidden_before, rest) = scores.split_at_mut(seen.start);
    let (seen, hidden_after) = rest.split_at_mut(seen.len());
    hidden_before.fill(0.0);
    hidden_after.fill(0.0);
    let max = running_max.max(lane_max(seen));
    // The first chunk a row sees has a running max of -inf: its rescale is exp(-inf) = 0.
    let rescale = (*running_max - max).exp();
    seen.iter_mut().for_each(|score| *score = exp_nonpositive(*score - max));
    *running_sum = *running_sum * rescale + lane_sum(seen);
    *running_max = max;
    if rescale != 1.0 {
        out.iter_mut().for_each(|v| *v *= rescale);
    }
}

/// `e^x` for `x ≤ 0`, within two ulps, in operations the compiler vectorizes (the
/// library's `exp` is a call per value, and a prefill takes one per score): `x = n ln 2 +
/// r` with `|r| ≤ ln 2 / 2`, `e^r` by its Taylor series to `r^6` (the next term is below
/// 2^-23 of it), times `2^n` built in the exponent bits. Below -87 (where `e^x` leaves
/// f32's normal range) it returns `e^-87`, which no softmax sum notices.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding it rounds to an integer, which lands in the low mantissa bits
    // (a float-to-int conversion would not vectorize, for its saturation).
    const ROUNDER: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUNDER;
    let n_float = shifted - ROUNDER;
    let n = (shifted.to_bits() as i32).wrapping_sub(ROUNDER.to_bits() as i32);
    // ln 2 in two parts, so that `n · LN2_HIGH` is exact and `r` loses nothing.
    let r = x - n_float * LN2_HIGH - n_float * LN2_LOW;
    let series = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let two_to_n = f32::from_bits((n.wrapping_add(127) as u32) << 23);
    series * two_to_n
}

/// Lanes of the running reductions below, so the compiler keeps them in vector registers.
const LANES: usize = 16;

#[inline(always)]
fn lane_max(values: &[f32]) -> f32 {
    let (chunks, rest) = values.as_chunks::<LANES>();
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for chunk in chunks {
        for lane in 0..LANES {
            lanes[lane] = lanes[lane].max(chunk[lane]);
        }
    }
    lanes.iter().chain(rest).fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

#[inline(always)]
fn lane_sum(values: &[f32]) -> f32 {
    let (chunks, rest) = values.as_chunks::<LANES>();
    let mut lanes = [0f32; LANES];
    for chunk in chunks {
        for lane in 0..LANES {
            lanes[lane] += chunk[lane];
        }
    }
    lanes.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Rows one pass of [`add_values_by_key`] serves: each value loaded is used for this many
/// rows, whose running sums (2 vector registers a row) stay in registers.
const ROW_BLOCK: usize = 4;
const _: () = assert!(ROW_BLOCK == 4, "weighted_sums is unrolled for four rows");

/// `scores [rows, n] = queries [rows, dim] · keysᵀ` (`keys` `[n, dim]`), key by key.
#[inline(always)]
fn scores_by_key(queries: &[f32], keys: &[f32], dim: usize, scores: &mut [f32]) {
    let n = keys.len() / dim;
    for (j, key) in keys.chunks_exact(dim).enumerate() {
        for (row, query) in queries.chunks_exact(dim).enumerate() {
            scores[row * n + j] = dot(query, key);
        }
    }
}

/// `out [rows, dim] += probabilities [rows, n] · values [n, dim]`.
#[inline(always)]
fn add_values_by_key(probabilities: &[f32], values: &[f32], dim: usize, out: &mut [f32]) {
    let (rows, n) = (out.len() / dim, values.len() / dim);
    let mut first = 0;
    while first < rows {
        let count = row_block(rows - first);
        let weights = &probabilities[first * n..(first + count) * n];
        let out = &mut out[first * dim..(first + count) * dim];
        match count {
            ROW_BLOCK => weighted_sums::<ROW_BLOCK>(weights, values, dim, out),
            _ => weighted_sums::<1>(weights, values, dim, out),
        }
        first += count;
    }
}

/// Rows in the next pass over the keys: a whole [`ROW_BLOCK`] while that many are left.
#[inline(always)]
fn row_block(left: usize) -> usize {
    if left >= ROW_BLOCK { ROW_BLOCK } else { 1 }
}

/// `out [R, dim] += weights [R, n] · values [n, dim]`, a [`LANES`]-wide slice of `dim` at
/// a time, summed over all the keys in registers before it is added to `out`.
#[inline(always)]
fn weighted_sums<const R: usize>(weights: &[f32], values: &[f32], dim: usize, out: &mut [f32]) {
    let n = values.len() / dim;
    let mut start = 0;
    while start + LANES <= dim {
        let mut sums = [[0f32; LANES]; R];
        for j in 0..n {
            let Some(value) = values[j * dim + start..].first_chunk::<LANES>() else { break };
            // The rows by name, not in a loop: with a loop over them the compiler kept the
            // sums in memory.
            add_scaled(&mut sums[0], weights[j], value);
            if R > 1 {
                add_scaled(&mut sums[1 % R], weights[(1 % R) * n + j], value);
            }
            if R > 2 {
                add_scaled(&mut sums[2 % R], weights[(2 % R) * n + j], value);
            }
            if R > 3 {
                add_scaled(&mut sums[3 % R], weights[(3 % R) * n + j], value);
            }
        }
        for (r, sum) in sums.iter().enumerate() {
            out[r * dim + start..r * dim + start + LANES].iter_mut().zip(sum).for_each(|(o, s)| *o += s);
        }
        start += LANES;
    }
    // The last `dim % LANES` values (head sizes not a multiple of the lanes).
    for j in 0..n {
        for r in 0..R {
            let weight = weights[r * n + j];
            out[r * dim + start..(r + 1) * dim].iter_mut().zip(&values[j * dim + start..(j + 1) * dim]).for_each(|(o, &v)| *o += weight * v);
        }
    }
}

/// `sum += weight * values`, lane by lane.
#[inline(always)]
fn add_scaled(sum: &mut [f32; LANES], weight: f32, values: &[f32; LANES]) {
    for lane in 0..LANES {
        sum[lane] += weight * values[lane];
    }
}

/// The right-hand side of [`multiply`], `[k, n]` as stored.
enum Operand<'a> {
    /// Row-major `[k, n]`.
    Plain(&'a [f32]),
    /// Row-major `[n, k]`, read transposed.
    Transposed(&'a [f32]),
}

/// `dst [m, n] (+)= lhs [m, k] · rhs [k, n]`, all row-major.
fn multiply(m: usize, n: usize, k: usize, lhs: &[f32], rhs: Operand, dst: &mut [f32], accumulate: bool) {
    let (rhs, rhs_row, rhs_column) = match rhs {
        Operand::Plain(values) => (values, n, 1),
        Operand::Transposed(values) => (values, 1, k),
    };
    assert!(lhs.len() >= m * k && rhs.len() >= k * n && dst.len() >= m * n);
    // SAFETY: the assertion bounds every index the call reads or writes: `lhs`'s `m × k`
    // at row stride `k`, `rhs`'s `k × n` (either layout spans `k * n` values) and `dst`'s
    // `m × n` at row stride `n`.
    unsafe { super::gemm_f32(m, n, k, dst, n, accumulate, lhs, k, rhs, rhs_row, rhs_column) }
}
