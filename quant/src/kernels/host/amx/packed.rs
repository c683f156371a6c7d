//! Packed integer weights (`Int4` / `Int8` weight-only: GPTQ, AWQ, compressed-tensors
//! W4A16 / W8A16, torchao) times float activations, on the tile unit's bf16 products.
//!
//! A weight value less its zero point is a small integer (at most 255 in magnitude),
//! exact in bf16. An f32 activation is exactly the sum of three bf16 values (its leading
//! eight significant bits rounded, eight more of what remains, and the rest), an f16 one
//! of two and a bf16 one of itself; so that many bf16 products multiply an activation by
//! a weight value exactly, and the tile unit sums them in f32 as the reference sums its
//! own products. Each group's sums take the group's scale once.
//!
//! The operands swap roles against [`super::run`]: the activations are the left operand,
//! a line holding 32 consecutive values of one row (copied into tiles per call, one tile
//! per term, block of sixteen rows and step of 32 columns), and the weight is the right.
//! A right-operand line holds two consecutive K rows of sixteen channels, which is how
//! K-packed words lie already: a word row of sixteen channels is 64 contiguous bytes and
//! unpacks into four lines (4-bit) or two (8-bit), without a transpose. A tile of sums
//! is then sixteen rows by sixteen channels, the output's own order, and a group's
//! scales apply along its lines.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use super::terms::{pass_blocks, round_to_bf16, span_steps, task_width, upper_halves};
use super::{load, load_config, release, store, zero, Bf16Tiles, Sums, TileConfig, TileProduct, LINE, LINES, TILE_BYTES};
use crate::kernels::host::int_gemm::{Centring, IntWeightSlices};

/// Rows from which a product runs here rather than in the register kernel: below them
/// the per-call widening of the weight costs more than the register kernel's products.
/// Alone, a 4096² product crosses near twelve rows (BENCHMARKS.md, "Int4 / Int8
/// weight-only on AMX": Int4 on the tiles 2.5 ms against the register kernel's 2.2 at
/// eight rows, 2.5 against 4.2 at sixteen); inside a model, whose weights do not stay in
/// cache between calls, near sixteen (a decode step of sixteen sequences 3% faster on
/// the tiles once 4-bit values are widened by lookup).
pub(crate) const MIN_ROWS: usize = 16;

/// bf16 values a tile line holds: one step's columns of a row, or sixteen channels'
/// values of two K rows.
const COLUMNS: usize = LINE / 2;

/// A tile line of bf16 values, aligned as the tile loads read best.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u16; COLUMNS]);

const ZERO_LINE: Line = Line([0; COLUMNS]);

/// Whether the tile loop takes a `bits`-bit weight of `k` rows in groups of `group_size`
/// (stored contiguously when `contiguous`): each group whole steps of 32 rows, or one
/// group spanning K.
pub(crate) fn takes(bits: u32, k: usize, group_size: usize, contiguous: bool) -> bool {
    let whole_steps = group_size >= k || (group_size > 0 && group_size.is_multiple_of(COLUMNS));
    matches!(bits, 4 | 8) && k > 0 && k.is_multiple_of(32 / bits as usize) && contiguous && whole_steps
}

/// `[m, K] · dequant(W)` → `[m, N]`, f32, row-major, for activations `x` whose values
/// `terms` bf16 values carry exactly (three for any f32 between 2^−100 and 2^127 in
/// magnitude: smaller remainders fall below bf16's normal range, which the tile unit
/// reads as zero).
///
/// # Safety
/// Only where [`super::available`] reported the tile unit usable, for a weight whose
/// groups are contiguous runs of `group_size` rows and which [`takes`] accepts.
pub(crate) unsafe fn gemm(weight: &IntWeightSlices, group_size: usize, x: &[f32], m: usize, terms: usize) -> Vec<f32> {
    let k = weight.k;
    let group_size = group_size.min(k).max(1);
    assert!(x.len() >= m * k && (1..=3).contains(&terms));
    // SAFETY: passed on from the caller (the tile unit's CPUs have AVX-512).
    let activations = unsafe { ActivationTiles::new(x, m, k, terms) };
    let group_sums = match weight.centring {
        Centring::Float(_) => group_sums(x, m, k, group_size),
        Centring::Midpoint | Centring::Integer(_) => Vec::new(),
    };
    let product = Product { weight, activations: &activations, group_sums: &group_sums, group_size, m };
    let width = task_width(m.div_ceil(LINES) * k.div_ceil(COLUMNS) * terms * TILE_BYTES, weight.n);
    // SAFETY: passed on from the caller.
    crate::kernels::host::by_column_blocks(m, weight.n, width, |channels, out| unsafe { product.channels(channels, out) })
}

/// Each row's sum over each group, `[m, G]`: what a group's float offsets multiply.
fn group_sums(x: &[f32], m: usize, k: usize, group_size: usize) -> Vec<f32> {
    (0..m).flat_map(|row| x[row * k..(row + 1) * k].chunks(group_size).map(|group| group.iter().sum::<f32>())).collect()
}

/// Activations `[m, K]` as left-operand tiles `[blocks, steps, terms, 16 lines]`: line
/// `r` of a tile holds row `16 · block + r`'s columns of the step as one of its bf16
/// terms. Rows past `m` and columns past K are zeros.
struct ActivationTiles {
    lines: Vec<Line>,
    steps: usize,
    terms: usize,
}

impl ActivationTiles {
    /// # Safety
    /// Only on CPUs with AVX-512 (F, BW, DQ, VL).
    unsafe fn new(x: &[f32], m: usize, k: usize, terms: usize) -> Self {
        let steps = k.div_ceil(COLUMNS);
        let block_lines = steps * terms * LINES;
        let mut lines = vec![ZERO_LINE; m.div_ceil(LINES) * block_lines];
        lines.par_chunks_mut(block_lines.max(1)).enumerate().for_each(|(block, tiles)| {
            for lane in 0..LINES.min(m - block * LINES) {
                let row = block * LINES + lane;
                // SAFETY: passed on from the caller.
                unsafe { split_row(&x[row * k..(row + 1) * k], lane, terms, tiles) };
            }
        });
        Self { lines, steps, terms }
    }

    /// Term `term`'s tile of row block `block` at step `step`.
    fn tile(&self, block: usize, step: usize, term: usize) -> *const u8 {
        self.lines[((block * self.steps + step) * self.terms + term) * LINES..][..LINES].as_ptr().cast()
    }
}

/// A row's values as `terms` bf16 terms into line `lane` of its block's tiles `tiles`
/// (`[steps, terms, 16 lines]`), sixteen values at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
fn split_row(row: &[f32], lane: usize, terms: usize, tiles: &mut [Line]) {
    assert!(lane < LINES && tiles.len() >= row.len().div_ceil(COLUMNS) * terms * LINES);
    for (step, values) in row.chunks(COLUMNS).enumerate() {
        for (half, values) in values.chunks(COLUMNS / 2).enumerate() {
            let mask = (1u32 << values.len()).wrapping_sub(1) as u16;
            // SAFETY: the mask reads only `values`' own lanes.
            let mut rest = unsafe { _mm512_maskz_loadu_ps(mask, values.as_ptr()) };
            for term in 0..terms {
                let rounded = round_to_bf16(rest);
                rest = _mm512_sub_ps(rest, rounded);
                let line = &mut tiles[(step * terms + term) * LINES + lane].0[half * COLUMNS / 2..][..COLUMNS / 2];
                // SAFETY: sixteen u16 written to a slice of sixteen.
                unsafe { _mm256_storeu_si256(line.as_mut_ptr().cast(), upper_halves(rounded)) };
            }
        }
    }
}

thread_local! {
    /// A task's weight tiles over a span in bf16, kept between tasks (at most
    /// `terms::WIDENED_BYTES`).
    static WIDENED: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// One product's operands, shared by its tasks.
struct Product<'a> {
    weight: &'a IntWeightSlices<'a>,
    activations: &'a ActivationTiles,
    /// `[m, G]` for float offsets, empty otherwise.
    group_sums: &'a [f32],
    group_size: usize,
    m: usize,
}

impl Product<'_> {
    /// `out [m, channels]`: for each pass of row blocks ([`pass_blocks`]), a span of K
    /// at a time, the task's weight over the span widened to bf16 tiles, then each pair
    /// of them times every pair of the pass's row blocks, a group (or the part of one in
    /// the span) at a time into four tiles of sums, scaled into `out`.
    ///
    /// # Safety
    /// Only where [`super::available`] reported the tile unit usable.
    unsafe fn channels(&self, channels: Range<usize>, out: &mut [f32]) {
        let (weight, activations, m) = (self.weight, self.activations, self.m);
        let steps = weight.k.div_ceil(COLUMNS);
        let weight_tiles = channels.len().div_ceil(LINES);
        let blocks = m.div_ceil(LINES);
        assert!(activations.steps == steps && channels.end <= weight.n && out.len() >= m * channels.len());
        assert!(activations.lines.len() >= blocks * steps * activations.terms * LINES);
        let group_steps = self.group_size.div_ceil(COLUMNS).min(steps).max(1);
        let pass_blocks = pass_blocks(blocks, activations.terms);
        let span_steps = span_steps(pass_blocks, activations.terms, weight_tiles, group_steps).min(steps);
        out[..m * channels.len()].fill(0.0);
        WIDENED.with_borrow_mut(|widened| {
            // Every line the loop reads is written by `widen`: no clearing.
            if widened.len() < weight_tiles * span_steps * LINES {
                widened.resize(weight_tiles * span_steps * LINES, ZERO_LINE);
            }
            let mut output = TaskOutput { product: self, channels: channels.clone(), out, sums: [const { Sums([0.0; LINES * LINES]) }; 4] };
            // SAFETY: passed on from the caller; widening between spans leaves the tiles
            // and their configuration alone.
            unsafe { load_config(&TileConfig::full()) };
            for rows in (0..blocks).step_by(pass_blocks).map(|start| start..(start + pass_blocks).min(blocks)) {
                for span in (0..steps).step_by(span_steps).map(|start| start..(start + span_steps).min(steps)) {
                    for tile in 0..weight_tiles {
                        let first = channels.start + tile * LINES;
                        let tile_channels = first..(first + LINES).min(channels.end);
                        // SAFETY: the tile unit's CPUs have AVX-512.
                        unsafe { widen(weight, tile_channels, self.group_size, span.clone(), &mut widened[tile * span_steps * LINES..][..span.len() * LINES]) };
                    }
                    let weight_tile = |tile: usize, step: usize| widened[(tile * span_steps + step - span.start) * LINES..][..LINES].as_ptr().cast::<u8>();
                    // SAFETY (every tile instruction): the caller checked the tile unit is
                    // usable and the configuration is loaded; each load reads sixteen lines
                    // of 64 bytes from a tile of `widened` or of the activations, and each
                    // store writes the 1 KiB of a tile of sums.
                    unsafe {
                        for first_tile in (0..weight_tiles).step_by(2) {
                            let two_tiles = weight_tiles - first_tile >= 2;
                            for first in rows.clone().step_by(2) {
                                let pair = rows.end - first >= 2;
                                let mut start = span.start;
                                while start < span.end {
                                    let group = start / group_steps;
                                    let group_end = ((group + 1) * group_steps).min(steps);
                                    let end = group_end.min(span.end);
                                    zero::<0>();
                                    zero::<1>();
                                    zero::<2>();
                                    zero::<3>();
                                    for step in start..end {
                                        load::<4>(weight_tile(first_tile, step), LINE);
                                        if two_tiles {
                                            load::<5>(weight_tile(first_tile + 1, step), LINE);
                                        }
                                        row_block::<0, 1>(activations, first, step, two_tiles);
                                        if pair {
                                            row_block::<2, 3>(activations, first + 1, step, two_tiles);
                                        }
                                    }
                                    let tiles = Tiles { first_block: first, pair, first_tile, two_tiles };
                                    output.scale(tiles, group, end == group_end);
                                    start = end;
                                }
                            }
                        }
                    }
                }
            }
            // SAFETY: passed on from the caller.
            unsafe { release() };
        });
    }
}

/// Every term of row block `block` at `step` times weight tiles 4 (into sums `S0`) and,
/// if `two_tiles`, 5 (into `S1`), alternating between tiles 6 and 7 for the terms so
/// that a load need not wait for the products of the one before.
///
/// # Safety
/// The tile configuration is loaded and the weight tiles are.
#[inline(always)]
unsafe fn row_block<const S0: u8, const S1: u8>(activations: &ActivationTiles, block: usize, step: usize, two_tiles: bool) {
    for term in 0..activations.terms {
        // SAFETY: the tile is sixteen lines of `activations`; passed on from the caller.
        unsafe {
            if term % 2 == 0 {
                load::<6>(activations.tile(block, step, term), LINE);
                Bf16Tiles::product::<S0, 6, 4>();
                if two_tiles {
                    Bf16Tiles::product::<S1, 6, 5>();
                }
            } else {
                load::<7>(activations.tile(block, step, term), LINE);
                Bf16Tiles::product::<S0, 7, 4>();
                if two_tiles {
                    Bf16Tiles::product::<S1, 7, 5>();
                }
            }
        }
    }
}

/// Channels `channels` (at most sixteen) of the weight over steps `span` of K as
/// right-operand bf16 tiles `lines` (`[span, 16 lines]`): line `j` of step `s` holds,
/// for each channel, the values of K rows `32s + 2j` and `32s + 2j + 1` less their zero
/// point (the midpoint for float offsets, which the scaling adds). Lines past K are zeros.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
fn widen(weight: &IntWeightSlices, channels: Range<usize>, group_size: usize, span: Range<usize>, lines: &mut [Line]) {
    let (bits, k, n) = (weight.bits, weight.k, weight.n);
    let per_word = 32 / bits as usize;
    let rows = span.start * COLUMNS..(span.end * COLUMNS).min(k);
    let groups = k.div_ceil(group_size);
    assert!(channels.len() <= LINES && channels.end <= n && lines.len() >= span.len() * LINES && rows.start < k);
    assert!(weight.words.len() >= k / per_word * n && weight.scales.len() >= groups * n);
    let mask = (1u32 << channels.len()).wrapping_sub(1) as u16;
    let midpoint = _mm512_set1_epi32(1 << (bits - 1));
    // What the group's zero points make, set at the span's first row.
    let (mut lookup_offsets, mut biased_zeros) = (nibble_offsets(midpoint), _mm512_setzero_ps());
    // SAFETY: 64 bytes read from a table of 32 u16.
    let nibble_values = unsafe { _mm512_loadu_epi16(CENTRED_NIBBLES.as_ptr().cast()) };
    for row in rows.clone().step_by(per_word) {
        if row == rows.start || row.is_multiple_of(group_size) {
            let zeros = match weight.centring {
                Centring::Integer(points) => {
                    assert!(points.len() >= groups * n);
                    // SAFETY: the mask reads the group's channels, inside `points`.
                    unsafe { _mm512_maskz_loadu_epi32(mask, points.as_ptr().add(row / group_size * n + channels.start).cast()) }
                }
                Centring::Midpoint | Centring::Float(_) => midpoint,
            };
            lookup_offsets = nibble_offsets(zeros);
            biased_zeros = _mm512_add_ps(_mm512_cvtepi32_ps(zeros), _mm512_set1_ps(f32::from_bits(MAGIC as u32)));
        }
        // SAFETY: the mask reads the word row's channels, inside `words`.
        let words = unsafe { _mm512_maskz_loadu_epi32(mask, weight.words.as_ptr().add(row / per_word * n + channels.start).cast()) };
        for pair in 0..per_word / 2 {
            let line = match bits {
                4 => nibble_line(words, pair, lookup_offsets, nibble_values),
                _ => byte_line(words, pair, biased_zeros),
            };
            // SAFETY: sixty-four bytes written to a line of `lines`.
            unsafe { _mm512_storeu_si512(lines[(row - rows.start) / 2 + pair].0.as_mut_ptr().cast(), line) };
        }
    }
    let written = rows.len() / 2;
    lines[written..span.len() * LINES].fill(ZERO_LINE);
}

/// bf16 of `i − 16` at index `i`: a 4-bit value less its zero point (−15 to 15), plus
/// 16, looks up its bf16 here.
const CENTRED_NIBBLES: [u16; 32] = {
    let mut values = [0u16; 32];
    let mut index = 0;
    while index < 32 {
        values[index] = ((index as f32 - 16.0).to_bits() >> 16) as u16;
        index += 1;
    }
    values
};

/// `16 − zero` in each half of a lane, for the lanes' zero points `zeros`: what moves a
/// 4-bit value less its zero point onto its index in [`CENTRED_NIBBLES`] (no half
/// borrows, every index stays within 1..=31).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
fn nibble_offsets(zeros: __m512i) -> __m512i {
    _mm512_sub_epi32(_mm512_set1_epi32(0x0010_0010), _mm512_or_si512(zeros, _mm512_slli_epi32::<16>(zeros)))
}

/// Line `pair` of a word row of 4-bit values: nibbles `2 · pair` and `2 · pair + 1` of
/// each word less the lane's zero point, as the low and high bf16 of its lane, looked up
/// in `nibble_values` ([`CENTRED_NIBBLES`]) at the value plus `offsets`
/// ([`nibble_offsets`]): fewer operations than converting.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
fn nibble_line(words: __m512i, pair: usize, offsets: __m512i, nibble_values: __m512i) -> __m512i {
    let shifted = _mm512_srl_epi32(words, _mm_cvtsi32_si128(8 * pair as i32));
    let low = _mm512_and_si512(shifted, _mm512_set1_epi32(0xf));
    // low | (the next nibble moved to bits 16–19): both values of the pair, one a half.
    let both = _mm512_ternarylogic_epi32::<0xf8>(low, _mm512_slli_epi32::<12>(shifted), _mm512_set1_epi32(0xf_0000));
    _mm512_permutexvar_epi16(_mm512_add_epi32(both, offsets), nibble_values)
}

/// The bits of the f32 2^23: or-ed with an integer below 2^8 (placed in the lowest
/// mantissa bits), they make the f32 2^23 plus that integer.
const MAGIC: i32 = 0x4b00_0000;

/// Line `pair` of a word row of 8-bit values: bytes `2 · pair` and `2 · pair + 1` of each
/// word less the lane's zero point, as the low and high bf16 of its lane. Each byte
/// becomes the f32 2^23 + byte by or-ing it under [`MAGIC`]'s exponent, and subtracting
/// `biased_zeros` (2^23 + zero) leaves byte − zero exactly; at most eight significant
/// bits, so the f32's upper half is its bf16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
fn byte_line(words: __m512i, pair: usize, biased_zeros: __m512) -> __m512i {
    let (byte_mask, magic) = (_mm512_set1_epi32(0xff), _mm512_set1_epi32(MAGIC));
    // (shifted & 0xff) | MAGIC: the ternary logic table of A & B | C.
    let value = |shift: usize| {
        let shifted = _mm512_srl_epi32(words, _mm_cvtsi32_si128(shift as i32));
        _mm512_sub_ps(_mm512_castsi512_ps(_mm512_ternarylogic_epi32::<0xea>(shifted, byte_mask, magic)), biased_zeros)
    };
    let (low, high) = (_mm512_castps_si512(value(16 * pair)), _mm512_castps_si512(value(16 * pair + 8)));
    // low >> 16 | high & 0xffff0000: the table of A | B & C.
    _mm512_ternarylogic_epi32::<0xf8>(_mm512_srli_epi32::<16>(low), high, _mm512_set1_epi32(0xffff_0000_u32 as i32))
}

/// The tiles of sums a pass of the task's loop fills: row blocks `first_block` (and the
/// next if `pair`) by weight tiles `first_tile` (and the next if `two_tiles`), tile of
/// sums `2 · block + tile` of the pair's.
#[derive(Clone, Copy)]
struct Tiles {
    first_block: usize,
    pair: bool,
    first_tile: usize,
    two_tiles: bool,
}

/// A task's tiles of sums on their way into its output `out [m, channels]`.
struct TaskOutput<'a, 'p> {
    product: &'p Product<'p>,
    channels: Range<usize>,
    out: &'a mut [f32],
    sums: [Sums<f32>; 4],
}

impl TaskOutput<'_, '_> {
    /// The filled tiles of sums, over group `group` or a part of it, times the group's
    /// scales into `out`, and, where `group_ends`, its offsets times the rows' sums over
    /// the group. Every tile is stored before any is scaled, so the stores need not wait
    /// for the scaling.
    ///
    /// # Safety
    /// The tile configuration is loaded, on a CPU with AVX-512.
    #[inline(always)]
    unsafe fn scale(&mut self, tiles: Tiles, group: usize, group_ends: bool) {
        // SAFETY: passed on from the caller; each store writes the 1 KiB of its sums.
        unsafe {
            store::<0>(&mut self.sums[0]);
            if tiles.two_tiles {
                store::<1>(&mut self.sums[1]);
            }
            if tiles.pair {
                store::<2>(&mut self.sums[2]);
                if tiles.two_tiles {
                    store::<3>(&mut self.sums[3]);
                }
            }
        }
        for slot in 0..4 {
            let (block, tile) = (slot / 2, slot % 2);
            if (tile == 1 && !tiles.two_tiles) || (block == 1 && !tiles.pair) {
                continue;
            }
            // SAFETY: passed on from the caller.
            unsafe { self.scale_slot(slot, tiles.first_block + block, tiles.first_tile + tile, group, group_ends) };
        }
    }

    /// [`Self::scale`] for the tile of sums in `slot`: row block `block` by weight tile
    /// `tile`.
    #[target_feature(enable = "avx512f")]
    fn scale_slot(&mut self, slot: usize, block: usize, tile: usize, group: usize, group_ends: bool) {
        let (weight, n, m) = (self.product.weight, self.product.weight.n, self.product.m);
        let (width, column) = (self.channels.len(), tile * LINES);
        let tile_width = (width - column).min(LINES);
        let channel = self.channels.start + column;
        let rows = block * LINES..((block + 1) * LINES).min(m);
        assert!(self.out.len() >= m * width && rows.start < m);
        let mut scales = [0f32; LINES];
        scales[..tile_width].copy_from_slice(&weight.scales[group * n + channel..][..tile_width]);
        let mut offsets = [0f32; LINES];
        let mut row_sums = [0f32; LINES];
        if let (Centring::Float(values), true) = (weight.centring, group_ends) {
            offsets[..tile_width].copy_from_slice(&values[group * n + channel..][..tile_width]);
            let groups = self.product.group_sums.len() / m.max(1);
            for (lane, row) in rows.clone().enumerate() {
                row_sums[lane] = self.product.group_sums[row * groups + group];
            }
        }
        let mask = (1u32 << tile_width).wrapping_sub(1) as u16;
        // SAFETY: sixteen f32 read from arrays of sixteen.
        let (scales, offsets) = unsafe { (_mm512_loadu_ps(scales.as_ptr()), _mm512_loadu_ps(offsets.as_ptr())) };
        for (lane, row) in rows.enumerate() {
            // SAFETY: a line of the sums read; the mask keeps the output's reads and
            // writes to the tile's `tile_width` channels of `row`, inside `out`.
            unsafe {
                let sums = _mm512_loadu_ps(self.sums[slot].0[lane * LINES..].as_ptr());
                let value = _mm512_add_ps(_mm512_mul_ps(sums, scales), _mm512_mul_ps(offsets, _mm512_set1_ps(row_sums[lane])));
                let at = self.out.as_mut_ptr().add(row * width + column);
                _mm512_mask_storeu_ps(at, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at), value));
            }
        }
    }
}
