//! FP8 on the tile unit where activations are quantized onto e4m3 too: every e4m3 value
//! is exact in bf16, so the bf16 tile product (pairs of exact products summed into f32)
//! multiplies weight and activation codes, and both scales apply once per sum of a
//! scale chunk (all of K for channel or tensor scales, 128 columns for 128×128 blocks).
//! The weight's bytes widen to bf16 a task at a time, into tile order, and serve every
//! row block from there.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

use super::{ActivationScales, Bf16Tiles, RightTiles, ScaledOutput, Task, CHANNELS, LINE, LINES, TILE_BYTES};
use crate::kernels::host::byte_gemm::{e4m3_to_f32, ByteWeightSlices};
use crate::kernels::host::lanes::{Avx512, F32Lanes};

/// bf16 values a tile line holds: one step's columns.
pub(crate) const COLUMNS: usize = LINE / 2;

/// Rows from which a product runs here rather than in the e4m3 register kernel. Below,
/// widening each task's weight to bf16 costs what the register kernel's whole product
/// does (BENCHMARKS.md, "FP8 on AMX": at 4096², 2.35 ms against 2.25 at four rows, 2.47
/// against 3.41 at eight).
pub(crate) const MIN_ROWS: usize = 8;

/// e4m3 activation codes `[m, K]` (e4m3 values, as f32) as right-operand bf16 tiles.
///
/// # Safety
/// Only where [`super::available`] reported the tile unit usable.
pub(crate) unsafe fn codes(codes: &[f32], m: usize, k: usize) -> RightTiles {
    assert!(codes.len() >= m * k);
    // SAFETY: passed on from the caller (both need AVX-512).
    unsafe { RightTiles::new(m, 2 * k, |row, bytes| encode_bf16(&codes[row * k..(row + 1) * k], bytes)) }
}

/// `values` (each exact in bf16) as little-endian bf16, sixteen at a time: the upper
/// half of each f32.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
fn encode_bf16(values: &[f32], bytes: &mut [u8]) {
    let whole = values.len() / 16 * 16;
    for (values, bytes) in values[..whole].chunks_exact(16).zip(bytes.chunks_exact_mut(32)) {
        // SAFETY: sixteen f32 read, thirty-two bytes written.
        unsafe {
            let upper = _mm512_srli_epi32::<16>(_mm512_castps_si512(_mm512_loadu_ps(values.as_ptr())));
            _mm256_storeu_si256(bytes.as_mut_ptr().cast(), _mm512_cvtepi32_epi16(upper));
        }
    }
    for (value, bytes) in values[whole..].iter().zip(bytes[2 * whole..].chunks_exact_mut(2)) {
        bytes.copy_from_slice(&((value.to_bits() >> 16) as u16).to_le_bytes());
    }
}

thread_local! {
    /// A task's weight tiles in bf16, kept between tasks (up to 896 KiB at K = 14 336).
    static WIDENED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `out [m, channels] = codes · W[channels]ᵀ` for e4m3 weights, each chunk of K's sums
/// (products exact, summed in f32) times its activation scale and its weight scale;
/// `channels` spans at most [`CHANNELS`].
///
/// # Safety
/// Only where [`super::available`] reported the tile unit usable; `codes` made by
/// [`codes`] for `m` rows of the weight's K; the scales' chunks whole steps of
/// [`COLUMNS`] (or all of K) and within the weight's scale chunks.
pub(crate) unsafe fn channels(weight: &ByteWeightSlices, codes: &RightTiles, activation_scales: ActivationScales, m: usize, channels: Range<usize>, out: &mut [f32]) {
    let k = weight.k;
    let steps = k.div_ceil(COLUMNS);
    assert!(codes.steps == steps && channels.len() <= CHANNELS && channels.end <= weight.n && weight.bytes.len() >= weight.n * k);
    WIDENED.with_borrow_mut(|widened| {
        let weight_tiles = channels.len().div_ceil(LINES);
        widened.clear();
        widened.resize(weight_tiles * steps * TILE_BYTES, 0);
        for (c, n) in channels.clone().enumerate() {
            let tiles = &mut widened[c / LINES * steps * TILE_BYTES..][..steps * TILE_BYTES];
            // SAFETY: the tile unit's CPUs have AVX-512.
            unsafe { widen_channel(&weight.bytes[n * k..(n + 1) * k], c % LINES, tiles) };
        }
        let mut task = E4m3Task { output: ScaledOutput { weight, activation_scales, m, channels, out }, widened, steps };
        // SAFETY: passed on from the caller.
        unsafe { super::run(&mut task, codes, COLUMNS) };
    });
}

/// A channel's e4m3 bytes as bf16 into line `line` of each step's tile in `tiles`
/// (`[steps, 16, 64]` bytes), thirty-two at a time: decoded to f32 (times 2^−8, which
/// the multiply takes back out exactly) and cut to their upper halves.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
fn widen_channel(bytes: &[u8], line: usize, tiles: &mut [u8]) {
    assert!(line < LINES && tiles.len() >= bytes.len().div_ceil(COLUMNS) * TILE_BYTES);
    let whole = bytes.len() / COLUMNS;
    for (step, bytes) in bytes.chunks_exact(COLUMNS).enumerate() {
        // SAFETY: thirty-two bytes read; sixty-four written to the line, inside `tiles`.
        unsafe {
            let scale_up = _mm512_set1_ps(256.0);
            let [low, high] = Avx512::e4m3(bytes.as_ptr());
            let half = |values: __m512| _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(_mm512_castps_si512(_mm512_mul_ps(values, scale_up))));
            let out = tiles.as_mut_ptr().add(step * TILE_BYTES + line * LINE);
            _mm256_storeu_si256(out.cast(), half(low));
            _mm256_storeu_si256(out.add(32).cast(), half(high));
        }
    }
    for (column, &byte) in bytes.iter().enumerate().skip(whole * COLUMNS) {
        let at = column / COLUMNS * TILE_BYTES + line * LINE + column % COLUMNS * 2;
        tiles[at..at + 2].copy_from_slice(&((e4m3_to_f32(byte).to_bits() >> 16) as u16).to_le_bytes());
    }
}

struct E4m3Task<'a> {
    output: ScaledOutput<'a>,
    /// The task's weight tiles in bf16, `[tiles, steps, 16, 64]` bytes.
    widened: &'a [u8],
    steps: usize,
}

impl<'a> Task<'a> for E4m3Task<'a> {
    type Product = Bf16Tiles;

    fn weight_tile(&mut self, tile: usize, step: usize) -> (*const u8, usize) {
        (self.widened[(tile * self.steps + step) * TILE_BYTES..][..TILE_BYTES].as_ptr(), LINE)
    }

    fn output(&mut self) -> &mut ScaledOutput<'a> {
        &mut self.output
    }
}
