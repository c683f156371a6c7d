//! W8A8 on the tile unit: int8 weights `[N, K]` as the left operand where they lie (a
//! tile is sixteen channels' 64 bytes, lines a channel apart), int8 activation codes as
//! the right, every product summed exactly in i32 as the reference sums them.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{ActivationScales, RightTiles, ScaledOutput, Task, TileBuffer, TileProduct, LINE, LINES, TILE_BYTES};
use crate::kernels::host::byte_gemm::ByteWeightSlices;

/// Rows from which a product runs here rather than in AVX-512 VNNI's register kernel.
/// Below, both stream the weight from memory and VNNI's channel-by-channel reads keep
/// up better than tile loads that step a channel at a time (BENCHMARKS.md, "W8A8 on
/// AMX": at 4096², 0.41 ms against 0.56 at one row, even at four, 1.05 against 0.64 at
/// eight).
pub(crate) const MIN_ROWS: usize = 8;

/// int8 codes `[m, K]` (integers in −128..=127, as f32) as right-operand tiles.
///
/// # Safety
/// Only where [`super::available`] reported the tile unit usable.
pub(crate) unsafe fn codes(codes: &[f32], m: usize, k: usize) -> RightTiles {
    assert!(codes.len() >= m * k);
    // SAFETY: passed on from the caller (both need AVX-512).
    unsafe { RightTiles::new(m, k, |row, bytes| encode_codes(&codes[row * k..(row + 1) * k], bytes)) }
}

/// `codes` as bytes, sixteen at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
fn encode_codes(codes: &[f32], bytes: &mut [u8]) {
    let whole = codes.len() / 16 * 16;
    for (codes, bytes) in codes[..whole].chunks_exact(16).zip(bytes.chunks_exact_mut(16)) {
        // SAFETY: sixteen f32 read, sixteen bytes written.
        unsafe { _mm_storeu_si128(bytes.as_mut_ptr().cast(), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_loadu_ps(codes.as_ptr())))) };
    }
    bytes[whole..].iter_mut().zip(&codes[whole..]).for_each(|(byte, &code)| *byte = code as i8 as u8);
}

/// `out [m, channels] = (codes · W[channels]ᵀ) · a_scales[row] · the channel's scale`,
/// the products summed in i32 and scaled in the reference's order; `channels` spans at
/// most [`super::CHANNELS`].
///
/// # Safety
/// Only where [`super::available`] reported the tile unit usable; `codes` made by
/// [`codes`] for `m` rows of the weight's K.
pub(crate) unsafe fn channels(weight: &ByteWeightSlices, codes: &RightTiles, a_scales: &[f32], m: usize, channels: Range<usize>, out: &mut [f32]) {
    assert!(codes.steps == weight.k.div_ceil(LINE));
    // One scale per row, over all of K.
    let activation_scales = ActivationScales { values: a_scales, per_row: 1, columns: weight.k.max(1) };
    let output = ScaledOutput { weight, activation_scales, m, channels, out };
    let mut task = Int8Task { output, padded: [TileBuffer([0; TILE_BYTES]), TileBuffer([0; TILE_BYTES])] };
    // SAFETY: passed on from the caller.
    unsafe { super::run(&mut task, codes, LINE) };
}

struct Int8Tiles;

impl TileProduct for Int8Tiles {
    type Sum = i32;

    #[inline(always)]
    unsafe fn product<const SUMS: u8, const LEFT: u8, const RIGHT: u8>() {
        unsafe { super::dpbssd::<SUMS, LEFT, RIGHT>() };
    }

    fn value(sum: i32) -> f32 {
        sum as f32
    }
}

struct Int8Task<'a> {
    output: ScaledOutput<'a>,
    /// Tiles that reach past the last channel or column, copied with zeros beyond.
    padded: [TileBuffer; 2],
}

impl<'a> Task<'a> for Int8Task<'a> {
    type Product = Int8Tiles;

    fn weight_tile(&mut self, tile: usize, step: usize) -> (*const u8, usize) {
        let (weight, channels) = (self.output.weight, &self.output.channels);
        let (k, column, first) = (weight.k, step * LINE, channels.start + tile * LINES);
        let (rows, columns) = ((channels.end - first).min(LINES), (k - column).min(LINE));
        if rows == LINES && columns == LINE {
            return (weight.bytes[first * k + column..].as_ptr(), k);
        }
        let padded = &mut self.padded[tile].0;
        padded.fill(0);
        for (line, n) in padded.chunks_mut(LINE).zip(first..first + rows) {
            line[..columns].copy_from_slice(&weight.bytes[n * k + column..n * k + column + columns]);
        }
        (padded.as_ptr(), LINE)
    }

    fn output(&mut self) -> &mut ScaledOutput<'a> {
        &mut self.output
    }
}
