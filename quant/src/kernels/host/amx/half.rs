//! Float weights kept in bf16 (most checkpoints' own dtype) times float activations, on
//! the tile unit's bf16 products. The weight needs no widening: sixteen channels of a
//! `[N, K]` weight, 32 values of each, are a left-operand tile as they lie, loaded in
//! place with the channel length as the line stride. Each activation is split into bf16
//! terms that add up to it exactly (three for f32, [`super::terms`]), written as
//! right-operand tiles ([`RightTiles`]), so every product is the f32 reference's and only
//! the order of the f32 sums differs. A tile of sums is then sixteen channels by sixteen
//! rows, added transposed into the output.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

use super::terms::{pass_blocks, round_to_bf16, span_steps, task_width, upper_halves};
use super::{load, load_config, release, store, zero, Bf16Tiles, RightTiles, Sums, TileConfig, TileProduct, LINE, LINES, TILE_BYTES};
use crate::kernels::host::half_gemm::{HalfFormat, HalfWeightSlices};

/// Rows from which a product of a weight of `format` runs here rather than in the
/// register kernel (BENCHMARKS.md, "Float weights on AMX", at 4096²). bf16 weights are
/// read as stored, so the tiles pay no widening: at four rows both wait on memory alike
/// (1.3–1.4 ms), at eight the tiles take 1.4 ms against 2.4–2.6. f16 weights are split
/// into two bf16 terms a task at a time (1 ms a call) and take twice the products: 3.4 ms
/// against 2.7 at eight rows, 3.1–3.6 against 5.3 at sixteen.
pub(crate) fn min_rows(format: HalfFormat) -> usize {
    match format {
        HalfFormat::BF16 => 5,
        HalfFormat::F16 => 12,
    }
}

/// bf16 values a tile line holds: one step's columns.
const COLUMNS: usize = LINE / 2;

/// Whether the tile loop takes a weight of `k` columns: whole steps of 32 columns (a tile
/// load reads a step of sixteen channels).
pub(crate) fn takes(k: usize) -> bool {
    k > 0 && k.is_multiple_of(COLUMNS)
}

/// `[m, K] · Wᵀ` → `[m, N]`, f32, row-major, for activations `x` whose values `terms`
/// bf16 values carry exactly (three for any f32 between 2^−100 and 2^127 in magnitude;
/// the tile unit reads bf16 subnormals, in the weight as in the terms, as zero).
///
/// # Safety
/// Only where [`super::available`] reported the tile unit usable, for a weight that
/// [`takes`] accepts.
pub(crate) unsafe fn gemm(weight: &HalfWeightSlices, x: &[f32], m: usize, terms: usize) -> Vec<f32> {
    let k = weight.k;
    assert!(takes(k) && weight.values.len() >= weight.n * k && x.len() >= m * k && (1..=3).contains(&terms));
    let activations: Vec<RightTiles> = (0..terms)
        // SAFETY: passed on from the caller (the tile unit's CPUs have AVX-512).
        .map(|term| unsafe { RightTiles::new(m, 2 * k, |row, bytes| encode_term(&x[row * k..(row + 1) * k], term, bytes)) })
        .collect();
    let product = Product { weight, activations: &activations, m };
    let width = task_width(m.div_ceil(LINES) * (k / COLUMNS) * terms * TILE_BYTES, weight.n);
    // SAFETY: passed on from the caller.
    crate::kernels::host::by_column_blocks(m, weight.n, width, |channels, out| unsafe { product.channels(channels, out) })
}

/// Term `term` of each of `values` as little-endian bf16 into `bytes`: each term the
/// bf16 rounding of what the terms before it leave, sixteen values at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
fn encode_term(values: &[f32], term: usize, bytes: &mut [u8]) {
    assert!(bytes.len() >= 2 * values.len());
    for (chunk, values) in values.chunks(16).enumerate() {
        let mask = (1u32 << values.len()).wrapping_sub(1) as u16;
        // SAFETY: the mask reads only `values`' own lanes.
        let mut rest = unsafe { _mm512_maskz_loadu_ps(mask, values.as_ptr()) };
        for _ in 0..term {
            rest = _mm512_sub_ps(rest, round_to_bf16(rest));
        }
        // SAFETY: the mask writes one u16 for each of `values`, inside `bytes`.
        unsafe { _mm256_mask_storeu_epi16(bytes[32 * chunk..].as_mut_ptr().cast(), mask, upper_halves(round_to_bf16(rest))) };
    }
}

thread_local! {
    /// f16 weights: a task's channels over a span as bf16 terms, `[terms, tiles, 16, span]`.
    /// bf16 weights: the channels of a task's last tile, zeros past N (a tile load reads
    /// sixteen lines).
    static STAGED: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// One product's operands, shared by its tasks.
struct Product<'a> {
    weight: &'a HalfWeightSlices<'a>,
    /// One set of right-operand tiles per term.
    activations: &'a [RightTiles],
    m: usize,
}

impl Product<'_> {
    /// `out [m, channels]`: for each pass of row blocks ([`pass_blocks`]), a span of K at
    /// a time (within what the L2 cache keeps of the activations and the task's weight),
    /// each pair of weight tiles times every pair of the pass's row blocks into four
    /// tiles of sums, added transposed into `out`. bf16 weight tiles are read in place;
    /// f16 ones are split into two bf16 terms per span first.
    ///
    /// # Safety
    /// Only where [`super::available`] reported the tile unit usable.
    unsafe fn channels(&self, channels: Range<usize>, out: &mut [f32]) {
        let (weight, m, k) = (self.weight, self.m, self.weight.k);
        let (steps, terms) = (k / COLUMNS, self.activations.len());
        let (width, weight_tiles, blocks) = (channels.len(), channels.len().div_ceil(LINES), m.div_ceil(LINES));
        assert!(channels.end <= weight.n && out.len() >= m * width && weight.values.len() >= weight.n * k);
        assert!(self.activations.iter().all(|tiles| tiles.steps == steps && tiles.bytes.len() >= blocks * steps * TILE_BYTES));
        let weight_terms = weight_terms(weight.format);
        let pass_blocks = pass_blocks(blocks, terms);
        let span_steps = span_steps(pass_blocks, terms, weight_terms * weight_tiles, 1).min(steps);
        out[..m * width].fill(0.0);
        STAGED.with_borrow_mut(|staged| {
            let partial = width % LINES;
            match weight.format {
                HalfFormat::F16 => staged.resize(weight_terms * weight_tiles * LINES * span_steps * COLUMNS, 0),
                HalfFormat::BF16 if partial != 0 => {
                    staged.clear();
                    staged.resize(LINES * k, 0);
                    staged[..partial * k].copy_from_slice(&weight.values[(channels.end - partial) * k..channels.end * k]);
                }
                HalfFormat::BF16 => {}
            }
            let mut sums = Sums([0f32; LINES * LINES]);
            // SAFETY: passed on from the caller; splitting f16 values between spans leaves
            // the tiles and their configuration alone.
            unsafe { load_config(&TileConfig::full()) };
            for rows in (0..blocks).step_by(pass_blocks).map(|start| start..(start + pass_blocks).min(blocks)) {
                for span in (0..steps).step_by(span_steps).map(|start| start..(start + span_steps).min(steps)) {
                    let span_columns = span.len() * COLUMNS;
                    if weight.format == HalfFormat::F16 {
                        for tile in 0..weight_tiles {
                            let first = channels.start + tile * LINES;
                            // SAFETY: the tile unit's CPUs have AVX-512 and F16C.
                            unsafe { split_f16(weight, first..(first + LINES).min(channels.end), span.clone(), tile, weight_tiles, staged) };
                        }
                    }
                    // Weight term `term`'s tile `tile` at step `step`: a pointer and line stride.
                    let weight_tile = |term: usize, tile: usize, step: usize| -> (*const u8, usize) {
                        let first = channels.start + tile * LINES;
                        match weight.format {
                            HalfFormat::F16 => {
                                let at = (term * weight_tiles + tile) * LINES * span_columns + (step - span.start) * COLUMNS;
                                (staged[at..].as_ptr().cast(), 2 * span_columns)
                            }
                            HalfFormat::BF16 if first + LINES <= channels.end => (weight.values[first * k + step * COLUMNS..].as_ptr().cast(), 2 * k),
                            HalfFormat::BF16 => (staged[step * COLUMNS..].as_ptr().cast(), 2 * k),
                        }
                    };
                    for first_tile in (0..weight_tiles).step_by(2) {
                        let two_tiles = weight_tiles - first_tile >= 2;
                        for first in rows.clone().step_by(2) {
                            let pair = rows.end - first >= 2;
                            // SAFETY (every tile instruction): the caller checked the tile unit
                            // is usable and the configuration is loaded; a weight tile's sixteen
                            // lines of 64 bytes lie in its channels' rows (whole steps of K) or
                            // in `staged`, an activation tile is one of `RightTiles`', and each
                            // store writes the 1 KiB of `sums`.
                            unsafe {
                                zero::<0>();
                                zero::<1>();
                                zero::<2>();
                                zero::<3>();
                                for step in span.clone() {
                                    for term in 0..weight_terms {
                                        let (w0, stride) = weight_tile(term, first_tile, step);
                                        load::<4>(w0, stride);
                                        if two_tiles {
                                            let (w1, stride) = weight_tile(term, first_tile + 1, step);
                                            load::<5>(w1, stride);
                                        }
                                        for tiles in self.activations {
                                            load::<6>(tiles.tile(first, step), LINE);
                                            Bf16Tiles::product::<0, 4, 6>();
                                            if two_tiles {
                                                Bf16Tiles::product::<1, 5, 6>();
                                            }
                                            if pair {
                                                load::<7>(tiles.tile(first + 1, step), LINE);
                                                Bf16Tiles::product::<2, 4, 7>();
                                                if two_tiles {
                                                    Bf16Tiles::product::<3, 5, 7>();
                                                }
                                            }
                                        }
                                    }
                                }
                                let rows = |block: usize| block * LINES..((block + 1) * LINES).min(m);
                                store::<0>(&mut sums);
                                add_transposed(&sums, out, width, first_tile * LINES, rows(first));
                                if two_tiles {
                                    store::<1>(&mut sums);
                                    add_transposed(&sums, out, width, (first_tile + 1) * LINES, rows(first));
                                }
                                if pair {
                                    store::<2>(&mut sums);
                                    add_transposed(&sums, out, width, first_tile * LINES, rows(first + 1));
                                    if two_tiles {
                                        store::<3>(&mut sums);
                                        add_transposed(&sums, out, width, (first_tile + 1) * LINES, rows(first + 1));
                                    }
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

/// The bf16 terms that carry each weight value of `format` exactly: an f16 value's eleven
/// significant bits take two.
fn weight_terms(format: HalfFormat) -> usize {
    match format {
        HalfFormat::BF16 => 1,
        HalfFormat::F16 => 2,
    }
}

/// f16 channels `channels` (at most sixteen, tile `tile` of `tiles`) over steps `span`
/// as two bf16 terms into `staged` (`[2, tiles, 16, span columns]`): the value cut to
/// bf16's eight significant bits, and the three that leaves (exact in bf16, as f16's
/// smallest values are normal there). Lines past the channels are zeros.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,f16c")]
fn split_f16(weight: &HalfWeightSlices, channels: Range<usize>, span: Range<usize>, tile: usize, tiles: usize, staged: &mut [u16]) {
    let (k, span_columns) = (weight.k, span.len() * COLUMNS);
    let columns = span.start * COLUMNS..span.end * COLUMNS;
    assert!(channels.len() <= LINES && channels.end <= weight.n && columns.end <= k && staged.len() >= 2 * tiles * LINES * span_columns);
    let upper_half = _mm512_set1_epi32(0xffff_0000_u32 as i32);
    // The upper halves of two vectors' sixteen f32, in order: the odd u16 of each.
    let odd_halves = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for line in 0..LINES {
        let term_line = |term: usize| ((term * tiles + tile) * LINES + line) * span_columns;
        let Some(channel) = channels.clone().nth(line) else {
            for term in 0..2 {
                staged[term_line(term)..][..span_columns].fill(0);
            }
            continue;
        };
        let values = &weight.values[channel * k + columns.start..channel * k + columns.end];
        for (step, values) in values.chunks_exact(COLUMNS).enumerate() {
            // SAFETY: thirty-two f16 read from `values`; thirty-two u16 written to each
            // term's line, inside `staged` (checked above).
            unsafe {
                let (low, high) = (_mm256_loadu_si256(values.as_ptr().cast()), _mm256_loadu_si256(values.as_ptr().add(16).cast()));
                let (low, high) = (_mm512_cvtph_ps(low), _mm512_cvtph_ps(high));
                let cut = |value: __m512| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(value), upper_half));
                let (low_cut, high_cut) = (cut(low), cut(high));
                let (low_rest, high_rest) = (_mm512_sub_ps(low, low_cut), _mm512_sub_ps(high, high_cut));
                let pack = |low: __m512, high: __m512| _mm512_permutex2var_epi16(_mm512_castps_si512(low), odd_halves, _mm512_castps_si512(high));
                _mm512_storeu_si512(staged[term_line(0) + COLUMNS * step..][..COLUMNS].as_mut_ptr().cast(), pack(low_cut, high_cut));
                _mm512_storeu_si512(staged[term_line(1) + COLUMNS * step..][..COLUMNS].as_mut_ptr().cast(), pack(low_rest, high_rest));
            }
        }
    }
}

/// A tile of sums `sums[channel · 16 + row]` added into `out [m, width]` at the columns
/// from `column` (as many as `out` has) and rows `rows`.
fn add_transposed(sums: &Sums<f32>, out: &mut [f32], width: usize, column: usize, rows: Range<usize>) {
    let tile_width = (width - column).min(LINES);
    for (lane, row) in rows.enumerate() {
        for (channel, value) in out[row * width + column..][..tile_width].iter_mut().enumerate() {
            *value += sums.0[channel * LINES + lane];
        }
    }
}
