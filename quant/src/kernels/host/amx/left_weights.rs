//! Weights as the left operand of the tile unit's bf16 products, times float activations
//! split into the bf16 terms that add up to them exactly ([`super::terms`]): the loop
//! shared by float weights ([`super::half`]) and 8-bit ones ([`super::byte_weights`]).
//!
//! A left-operand tile is sixteen channels of a `[N, K]` weight, 32 values of each, so
//! each weight hands the loop its tiles as bf16 lines ([`LeftWeights`]): read where they
//! lie, or staged a span of K at a time (split into terms, or widened from bytes). For
//! each pass of row blocks ([`pass_blocks`]) and each span (within what the L2 cache
//! keeps of the activations and the task's weight), each pair of weight tiles times
//! every pair of the pass's row blocks makes four tiles of sums, one scale chunk of K
//! (or the part of one in the span) at a time. A tile of sums is sixteen channels by
//! sixteen rows, added transposed into the output, times the chunk's channel scales.

use std::cell::RefCell;
use std::ops::Range;

use super::terms::{float_terms, pass_blocks, span_steps, task_width};
use super::{load, load_config, release, store, zero, Bf16Tiles, RightTiles, Sums, TileConfig, TileProduct, LINE, LINES, TILE_BYTES};

/// bf16 values a tile line holds: one step's columns.
pub(crate) const COLUMNS: usize = LINE / 2;

/// Whether the loop takes a weight of `k` columns: whole steps of 32 columns (a weight
/// read in place loads a step of sixteen channels at a time).
pub(crate) fn takes(k: usize) -> bool {
    k > 0 && k.is_multiple_of(COLUMNS)
}

/// A weight whose tiles the loop multiplies.
pub(super) trait LeftWeights: Sync {
    /// `[N, K]`.
    fn shape(&self) -> [usize; 2];
    /// The bf16 terms that carry each weight value exactly, each its own set of tiles.
    fn terms(&self) -> usize;
    /// Steps of K a channel's scale holds over: its block's width, or at least all of K.
    fn chunk_steps(&self) -> usize;
    /// Channel `channel`'s scale over chunk `chunk` of K.
    fn scale(&self, channel: usize, chunk: usize) -> f32;
    /// Readies channels `channels` (a task's) over steps `span` of K in `staged`, for
    /// [`Self::tile`].
    ///
    /// # Safety
    /// Only on CPUs with the tile unit (which have AVX-512).
    unsafe fn stage(&self, channels: &Range<usize>, span: &Range<usize>, staged: &mut Vec<u16>);
    /// Term `term`'s tile `tile` of the task's channels at step `step` of `span`, staged
    /// in `staged`: a pointer and a line stride from which sixteen lines of 64 bytes may
    /// be read.
    fn tile(&self, staged: &[u16], channels: &Range<usize>, span: &Range<usize>, term: usize, tile: usize, step: usize) -> (*const u8, usize);
}

/// `[m, K] · Wᵀ` → `[m, N]`, f32, row-major, for activations `x` whose values `terms`
/// bf16 values carry exactly (three for any f32 between 2^−100 and 2^127 in magnitude;
/// the tile unit reads bf16 subnormals, in the weight as in the terms, as zero).
///
/// # Safety
/// Only where [`super::available`] reported the tile unit usable, for a weight whose K
/// [`takes`] accepts.
pub(super) unsafe fn gemm<W: LeftWeights>(weight: &W, x: &[f32], m: usize, terms: usize) -> Vec<f32> {
    let [n, k] = weight.shape();
    assert!(takes(k) && x.len() >= m * k && (1..=3).contains(&terms));
    // SAFETY: passed on from the caller.
    let activations = unsafe { float_terms(x, m, k, terms) };
    let product = Product { weight, activations: &activations, m };
    let width = task_width(m.div_ceil(LINES) * (k / COLUMNS) * terms * TILE_BYTES, n);
    // SAFETY: passed on from the caller.
    crate::kernels::host::by_column_blocks(m, n, width, |channels, out| unsafe { product.channels(channels, out) })
}

thread_local! {
    /// A task's weight tiles over a span, as its [`LeftWeights::stage`] lays them out.
    static STAGED: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// One product's operands, shared by its tasks.
struct Product<'a, W> {
    weight: &'a W,
    /// One set of right-operand tiles per term.
    activations: &'a [RightTiles],
    m: usize,
}

impl<W: LeftWeights> Product<'_, W> {
    /// `out [m, channels]`, as the module says.
    ///
    /// # Safety
    /// Only where [`super::available`] reported the tile unit usable.
    unsafe fn channels(&self, channels: Range<usize>, out: &mut [f32]) {
        let (weight, m) = (self.weight, self.m);
        let [n, k] = weight.shape();
        let (steps, terms, weight_terms) = (k / COLUMNS, self.activations.len(), weight.terms());
        let (width, weight_tiles, blocks) = (channels.len(), channels.len().div_ceil(LINES), m.div_ceil(LINES));
        assert!(channels.end <= n && out.len() >= m * width);
        assert!(self.activations.iter().all(|tiles| tiles.steps == steps && tiles.bytes.len() >= blocks * steps * TILE_BYTES));
        let chunk_steps = weight.chunk_steps().clamp(1, steps);
        let pass_blocks = pass_blocks(blocks, terms);
        let span_steps = span_steps(pass_blocks, terms, weight_terms * weight_tiles, chunk_steps).min(steps);
        out[..m * width].fill(0.0);
        STAGED.with_borrow_mut(|staged| {
            let mut output = TaskOutput { weight, channels: channels.clone(), out, m, sums: Sums([0f32; LINES * LINES]) };
            // SAFETY: passed on from the caller; staging between spans leaves the tiles
            // and their configuration alone.
            unsafe { load_config(&TileConfig::full()) };
            for rows in (0..blocks).step_by(pass_blocks).map(|start| start..(start + pass_blocks).min(blocks)) {
                for span in (0..steps).step_by(span_steps).map(|start| start..(start + span_steps).min(steps)) {
                    // SAFETY: passed on from the caller.
                    unsafe { weight.stage(&channels, &span, staged) };
                    let weight_tile = |term: usize, tile: usize, step: usize| weight.tile(staged.as_slice(), &channels, &span, term, tile, step);
                    for first_tile in (0..weight_tiles).step_by(2) {
                        let two_tiles = weight_tiles - first_tile >= 2;
                        for first in rows.clone().step_by(2) {
                            let pair = rows.end - first >= 2;
                            let mut start = span.start;
                            while start < span.end {
                                let chunk = start / chunk_steps;
                                let end = ((chunk + 1) * chunk_steps).min(span.end);
                                // SAFETY (every tile instruction): the caller checked the
                                // tile unit is usable and the configuration is loaded; a
                                // weight tile is what `tile` vouches for, an activation tile
                                // is one of `RightTiles`'.
                                unsafe {
                                    zero::<0>();
                                    zero::<1>();
                                    zero::<2>();
                                    zero::<3>();
                                    for step in start..end {
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
                                    output.add::<0>(first_tile, first, chunk);
                                    if two_tiles {
                                        output.add::<1>(first_tile + 1, first, chunk);
                                    }
                                    if pair {
                                        output.add::<2>(first_tile, first + 1, chunk);
                                        if two_tiles {
                                            output.add::<3>(first_tile + 1, first + 1, chunk);
                                        }
                                    }
                                }
                                start = end;
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

/// A task's output `out [m, channels]`, and the tile of sums on its way there.
struct TaskOutput<'a, W> {
    weight: &'a W,
    channels: Range<usize>,
    out: &'a mut [f32],
    m: usize,
    sums: Sums<f32>,
}

impl<W: LeftWeights> TaskOutput<'_, W> {
    /// Tile of sums `SUMS`, of weight tile `tile` by row block `block` over (part of)
    /// chunk `chunk`, times the chunk's channel scales, added transposed into `out`.
    ///
    /// # Safety
    /// The tile configuration is loaded on this thread.
    #[inline(always)]
    unsafe fn add<const SUMS: u8>(&mut self, tile: usize, block: usize, chunk: usize) {
        // SAFETY: passed on from the caller; the store writes the 1 KiB of `sums`.
        unsafe { store::<SUMS>(&mut self.sums) };
        let (width, column) = (self.channels.len(), tile * LINES);
        let tile_width = (width - column).min(LINES);
        let mut scales = [0f32; LINES];
        for (offset, scale) in scales[..tile_width].iter_mut().enumerate() {
            *scale = self.weight.scale(self.channels.start + column + offset, chunk);
        }
        let rows = block * LINES..((block + 1) * LINES).min(self.m);
        for (lane, row) in rows.enumerate() {
            let out = &mut self.out[row * width + column..][..tile_width];
            for (channel, (value, scale)) in out.iter_mut().zip(&scales).enumerate() {
                *value += self.sums.0[channel * LINES + lane] * scale;
            }
        }
    }
}
