//! 8-bit weights on the tile unit's bf16 products: every e4m3 value and every int8 one is
//! exact in bf16, so a weight's bytes widen to bf16 tiles a task at a time and serve every
//! row block from there. Against them go either the activations' own e4m3 codes (FP8
//! with quantized activations, [`channels`]: both scales apply once per sum of a scale
//! chunk, all of K for channel or tensor scales, 128 columns for 128×128 blocks), or, for
//! float activations (FP8 weight-only, int8 weights in W8A8 layers whose activations stay
//! float), each activation's exact bf16 terms ([`float_gemm`], through the loop of
//! [`left_weights`]): every product is then exact, and only the order of the f32 sums
//! differs from the reference's.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

use super::left_weights::{self, LeftWeights, COLUMNS};
use super::terms::upper_halves;
use super::{ActivationScales, Bf16Tiles, RightTiles, ScaledOutput, Task, CHANNELS, LINE, LINES};
use crate::kernels::host::byte_gemm::{e4m3_to_f32, ByteWeightSlices, WeightScales};
use crate::kernels::host::lanes::{Avx512, F32Lanes};

/// bf16 values a tile holds.
const TILE_VALUES: usize = LINES * COLUMNS;

/// Rows from which a product runs here rather than in the register kernel. Below,
/// widening each task's weight to bf16 costs what the register kernel's whole product
/// does; the widening, not the products, sets the time at a few rows, so float
/// activations' three terms cross where e4m3 codes do (BENCHMARKS.md, at 4096²: "FP8 on
/// AMX", codes 2.35 ms against 2.25 at four rows, 2.47 against 3.41 at eight; "8-bit
/// weights with float activations on AMX", 1.8–2.0 ms on the tiles from one row to
/// sixteen, against the register kernel's 1.2–1.4 at four and 2.1–2.7 at eight).
pub(crate) const MIN_ROWS: usize = 8;

/// How a weight's bytes hold its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WeightBytes {
    /// FP8 e4m3fn codes.
    E4m3,
    /// Two's-complement int8 values.
    Int8,
}

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
        unsafe { _mm256_storeu_si256(bytes.as_mut_ptr().cast(), upper_halves(_mm512_loadu_ps(values.as_ptr()))) };
    }
    for (value, bytes) in values[whole..].iter().zip(bytes[2 * whole..].chunks_exact_mut(2)) {
        bytes.copy_from_slice(&((value.to_bits() >> 16) as u16).to_le_bytes());
    }
}

thread_local! {
    /// A task's weight tiles in bf16, kept between tasks (up to 896 KiB at K = 14 336).
    static WIDENED: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
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
        let (weight_tiles, tile_values) = (channels.len().div_ceil(LINES), steps * TILE_VALUES);
        if widened.len() < weight_tiles * tile_values {
            widened.resize(weight_tiles * tile_values, 0);
        }
        for (c, n) in channels.clone().enumerate() {
            let tiles = &mut widened[c / LINES * tile_values..][..tile_values];
            // SAFETY: the tile unit's CPUs have AVX-512.
            unsafe { widen_line(&weight.bytes[n * k..(n + 1) * k], WeightBytes::E4m3, c % LINES, tiles) };
        }
        zero_lines_past(&mut widened[(weight_tiles - 1) * tile_values..][..tile_values], channels.len() - (weight_tiles - 1) * LINES);
        let widened = &widened[..weight_tiles * tile_values];
        let mut task = CodesTask { output: ScaledOutput { weight, activation_scales, m, channels, out }, widened, steps };
        // SAFETY: passed on from the caller.
        unsafe { super::run(&mut task, codes, COLUMNS) };
    });
}

/// `[m, K] · dequant(W)ᵀ` → `[m, N]` for a weight of `bytes` and float activations `x`
/// whose values `terms` bf16 values carry exactly.
///
/// # Safety
/// Only where [`super::available`] reported the tile unit usable, for a weight whose K
/// [`left_weights::takes`] accepts and whose scale blocks are whole steps of
/// [`COLUMNS`] or span K.
pub(crate) unsafe fn float_gemm(weight: &ByteWeightSlices, bytes: WeightBytes, x: &[f32], m: usize, terms: usize) -> Vec<f32> {
    assert!(weight.bytes.len() >= weight.n * weight.k);
    let chunk_steps = match weight.scale_layout {
        WeightScales::Block { bk, .. } if bk < weight.k => {
            assert!(bk.is_multiple_of(COLUMNS), "scale blocks of whole steps");
            bk / COLUMNS
        }
        _ => weight.k.div_ceil(COLUMNS),
    };
    // SAFETY: passed on from the caller.
    unsafe { left_weights::gemm(&Widened { weight, bytes, chunk_steps }, x, m, terms) }
}

/// An 8-bit weight for [`left_weights`]: a task's channels widened over each span into
/// tiles `[tiles, span steps, 16 lines, 32]`, zeros past N.
struct Widened<'a> {
    weight: &'a ByteWeightSlices<'a>,
    bytes: WeightBytes,
    chunk_steps: usize,
}

impl LeftWeights for Widened<'_> {
    fn shape(&self) -> [usize; 2] {
        [self.weight.n, self.weight.k]
    }

    fn terms(&self) -> usize {
        1
    }

    fn chunk_steps(&self) -> usize {
        self.chunk_steps
    }

    fn scale(&self, channel: usize, chunk: usize) -> f32 {
        self.weight.scale(channel, chunk * self.chunk_steps * COLUMNS)
    }

    unsafe fn stage(&self, channels: &Range<usize>, span: &Range<usize>, staged: &mut Vec<u16>) {
        let k = self.weight.k;
        let (tiles, tile_values) = (channels.len().div_ceil(LINES), span.len() * TILE_VALUES);
        if staged.len() < tiles * tile_values {
            staged.resize(tiles * tile_values, 0);
        }
        let columns = span.start * COLUMNS..span.end * COLUMNS;
        for (c, n) in channels.clone().enumerate() {
            let line = &self.weight.bytes[n * k + columns.start..n * k + columns.end];
            // SAFETY: passed on from the caller.
            unsafe { widen_line(line, self.bytes, c % LINES, &mut staged[c / LINES * tile_values..][..tile_values]) };
        }
        zero_lines_past(&mut staged[(tiles - 1) * tile_values..][..tile_values], channels.len() - (tiles - 1) * LINES);
    }

    fn tile(&self, staged: &[u16], _channels: &Range<usize>, span: &Range<usize>, _term: usize, tile: usize, step: usize) -> (*const u8, usize) {
        (staged[(tile * span.len() + step - span.start) * TILE_VALUES..][..TILE_VALUES].as_ptr().cast(), LINE)
    }
}

/// A channel's bytes as bf16 into line `line` of each step's tile in `tiles`
/// (`[steps, 16 lines, 32]`), thirty-two at a time: e4m3 bytes looked up
/// ([`e4m3_line`]), int8 ones converted to f32 and cut to their upper halves. Columns
/// past the channel's end in its last step are zeros: every value of the line is
/// written, so the buffer needs no clearing between tasks.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
fn widen_line(channel: &[u8], bytes: WeightBytes, line: usize, tiles: &mut [u16]) {
    assert!(line < LINES && tiles.len() >= channel.len().div_ceil(COLUMNS) * TILE_VALUES);
    let whole = channel.len() / COLUMNS;
    // SAFETY: four vectors of 32 u16 read from a table of 128.
    let magnitudes = unsafe { E4M3_MAGNITUDES.map(|part| _mm512_loadu_si512(part.as_ptr().cast())) };
    for (step, values) in channel.chunks_exact(COLUMNS).enumerate() {
        // SAFETY: thirty-two bytes read; thirty-two u16 written to the line, inside `tiles`.
        unsafe {
            let out = tiles.as_mut_ptr().add(step * TILE_VALUES + line * COLUMNS);
            match bytes {
                WeightBytes::E4m3 => _mm512_storeu_si512(out.cast(), e4m3_line(_mm256_loadu_si256(values.as_ptr().cast()), &magnitudes)),
                WeightBytes::Int8 => {
                    let [low, high] = Avx512::int8(values.as_ptr());
                    _mm256_storeu_si256(out.cast(), upper_halves(low));
                    _mm256_storeu_si256(out.add(16).cast(), upper_halves(high));
                }
            }
        }
    }
    for (column, &byte) in channel.iter().enumerate().skip(whole * COLUMNS) {
        let value = match bytes {
            WeightBytes::E4m3 => e4m3_to_f32(byte),
            WeightBytes::Int8 => byte as i8 as f32,
        };
        tiles[column / COLUMNS * TILE_VALUES + line * COLUMNS + column % COLUMNS] = (value.to_bits() >> 16) as u16;
    }
    if !channel.len().is_multiple_of(COLUMNS) {
        tiles[whole * TILE_VALUES + line * COLUMNS..][channel.len() % COLUMNS..COLUMNS].fill(0);
    }
}

/// The bf16 of every e4m3fn magnitude (code `0..0x80`, the value exact in bf16; 0x7F
/// NaN), as four parts of 32: what [`e4m3_line`] looks codes up in.
const E4M3_MAGNITUDES: [[u16; 32]; 4] = {
    let mut parts = [[0u16; 32]; 4];
    let mut code = 0;
    while code < 128 {
        let (exponent, mantissa) = (code >> 3, code & 7);
        let value = match (exponent, mantissa) {
            (15, 7) => f32::NAN,
            (0, _) => mantissa as f32 / 512.0,
            _ => f32::from_bits(((exponent + 120) << 23) | (mantissa << 20)),
        };
        parts[code as usize / 32][code as usize % 32] = (value.to_bits() >> 16) as u16;
        code += 1;
    }
    parts
};

/// Thirty-two e4m3 bytes as bf16: each magnitude looked up in [`E4M3_MAGNITUDES`] (bits
/// 0–5 of the code pick one of 64 in two of its parts, bit 6 which two), the sign moved
/// from bit 7 to bit 15. Fewer operations than decoding through f16 and f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
fn e4m3_line(bytes: __m256i, magnitudes: &[__m512i; 4]) -> __m512i {
    let codes = _mm512_cvtepu8_epi16(bytes);
    let low = _mm512_permutex2var_epi16(magnitudes[0], codes, magnitudes[1]);
    let high = _mm512_permutex2var_epi16(magnitudes[2], codes, magnitudes[3]);
    let magnitude = _mm512_mask_blend_epi16(_mm512_test_epi16_mask(codes, _mm512_set1_epi16(0x40)), low, high);
    // magnitude | (codes << 8) & 0x8000: the ternary logic table of A | B & C.
    _mm512_ternarylogic_epi32::<0xf8>(magnitude, _mm512_slli_epi16::<8>(codes), _mm512_set1_epi16(0x8000u16 as i16))
}

/// Zeros lines `present..16` of each step's tile in `tiles` (`[steps, 16 lines, 32]`):
/// the lines past a weight's last channel, which a tile load reads all the same.
fn zero_lines_past(tiles: &mut [u16], present: usize) {
    for step in tiles.chunks_exact_mut(TILE_VALUES) {
        step[present * COLUMNS..].fill(0);
    }
}

/// A task of e4m3 weights times e4m3 activation codes.
struct CodesTask<'a> {
    output: ScaledOutput<'a>,
    /// The task's weight tiles in bf16, `[tiles, steps, 16 lines, 32]`.
    widened: &'a [u16],
    steps: usize,
}

impl<'a> Task<'a> for CodesTask<'a> {
    type Product = Bf16Tiles;

    fn weight_tile(&mut self, tile: usize, step: usize) -> (*const u8, usize) {
        (self.widened[(tile * self.steps + step) * TILE_VALUES..][..TILE_VALUES].as_ptr().cast(), LINE)
    }

    fn output(&mut self) -> &mut ScaledOutput<'a> {
        &mut self.output
    }
}
