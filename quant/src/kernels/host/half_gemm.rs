//! Float weights kept in their checkpoint's f16 or bf16, times f32 activations. Both
//! halves convert to f32 exactly, so this is the f32 product of the f32 weight while
//! reading half the bytes: at a few rows, where a matmul is bound by reading the weight,
//! that is half the time. Where the CPU has AVX2, FMA and F16C, sixteen values of a
//! channel become two f32 vectors in registers (the f16 conversion instruction, or a
//! widen and shift for bf16) that up to [`ROW_BLOCK`] rows' running sums multiply at once.
//! From [`super::TILED_ROWS`] rows the weight is decoded a tile at a time for the `gemm`
//! crate instead ([`super::tiles`]).

use std::ops::Range;

use half::slice::HalfFloatSliceExt;
use half::f16;

/// The two 16-bit float formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfFormat {
    F16,
    BF16,
}

impl HalfFormat {
    /// `out[i]` = `bits[i]` as f32.
    #[inline(always)]
    fn convert(self, bits: &[u16], out: &mut [f32]) {
        match self {
            Self::F16 => {
                #[cfg(target_arch = "x86_64")]
                if super::avx2() {
                    // SAFETY: the CPU was just checked to have the features the function is compiled for.
                    return unsafe { avx2::convert_f16(bits, out) };
                }
                bytemuck::cast_slice::<u16, f16>(bits).convert_to_f32_slice(out)
            }
            Self::BF16 => out.iter_mut().zip(bits).for_each(|(v, &bits)| *v = f32::from_bits((bits as u32) << 16)),
        }
    }
}

/// A weight `[n, k]`, row-major, as the bits of its 16-bit values.
pub struct HalfWeightSlices<'a> {
    pub k: usize,
    pub n: usize,
    pub values: &'a [u16],
    pub format: HalfFormat,
}

impl HalfWeightSlices<'_> {
    fn channel(&self, n: usize) -> &[u16] {
        &self.values[n * self.k..(n + 1) * self.k]
    }

    /// Columns `ks` of channels `cols` into `tile` `[cols, ks]` (channel-major), for
    /// [`super::tiles::TileSource`].
    #[inline(always)]
    pub(super) fn decode_tile(&self, ks: Range<usize>, cols: Range<usize>, tile: &mut [f32]) {
        let depth = ks.len();
        for (n, run) in cols.zip(tile.chunks_mut(depth)) {
            self.format.convert(&self.channel(n)[ks.clone()], run);
        }
    }
}

/// Output channels per task: a task reads 16 channels' K values once per row block.
const CHANNELS: usize = 16;

/// Rows whose sums one pass over a channel keeps in registers: two vectors each, eight
/// in all, beside the two decoded vectors.
const ROW_BLOCK: usize = 4;

/// `[m, K] · Wᵀ` → `[m, N]`, f32, row-major.
pub fn half_gemm(weight: &HalfWeightSlices, x: &[f32], m: usize) -> Vec<f32> {
    super::by_column_blocks(m, weight.n, CHANNELS, |channels, out| {
        #[cfg(target_arch = "x86_64")]
        if super::avx2() {
            // SAFETY: the CPU was just checked to have the features the kernels are compiled for.
            return unsafe {
                match weight.format {
                    HalfFormat::F16 => avx2::channels::<false>(weight, x, m, channels, out),
                    HalfFormat::BF16 => avx2::channels::<true>(weight, x, m, channels, out),
                }
            };
        }
        channels_portable(weight, x, m, channels, out)
    })
}

/// Each channel's values converted into a buffer, then one dot product per row.
fn channels_portable(weight: &HalfWeightSlices, x: &[f32], m: usize, channels: Range<usize>, out: &mut [f32]) {
    let (k, width) = (weight.k, channels.len());
    let mut values = vec![0f32; k];
    for (c, n) in channels.enumerate() {
        weight.format.convert(weight.channel(n), &mut values);
        for (row, x) in x.chunks(k).take(m).enumerate() {
            out[row * width + c] = super::dot(x, &values);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{HalfWeightSlices, ROW_BLOCK};
    use crate::kernels::host::{horizontal_sum, next_channel, prefetch_line, row_blocks};

    /// `out [m, channels] = x [m, K] · W[channels]ᵀ`; `BF16` picks the format.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn channels<const BF16: bool>(weight: &HalfWeightSlices, x: &[f32], m: usize, channels: Range<usize>, out: &mut [f32]) {
        let (k, width) = (weight.k, channels.len());
        assert!(x.len() >= m * k && out.len() >= m * width && channels.end <= weight.n && weight.values.len() >= weight.n * k);
        for (c, n) in channels.clone().enumerate() {
            let values = weight.channel(n);
            let next = next_channel(weight.values, k, n, &channels);
            for (first, rows, ahead) in row_blocks(m, ROW_BLOCK, next) {
                let x = &x[first * k..(first + rows) * k];
                let sums: &[f32] = match rows {
                    4 => &channel_rows::<4, BF16>(values, x, ahead),
                    3 => &channel_rows::<3, BF16>(values, x, ahead),
                    2 => &channel_rows::<2, BF16>(values, x, ahead),
                    _ => &channel_rows::<1, BF16>(values, x, ahead),
                };
                for (r, &sum) in sums.iter().enumerate() {
                    out[(first + r) * width + c] = sum;
                }
            }
        }
    }

    /// The `R` rows of `x` (`[R, K]`, K = `values.len()`) times one channel's values,
    /// prefetching `ahead` (what is read next) alongside.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn channel_rows<const R: usize, const BF16: bool>(values: &[u16], x: &[f32], ahead: &[u16]) -> [f32; R] {
        let k = values.len();
        assert!(x.len() >= R * k);
        let vector_end = k / 16 * 16;
        let (mut low, mut high) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
        for j in (0..vector_end).step_by(16) {
            prefetch_line(ahead, j);
            // SAFETY: j + 16 ≤ K = values.len().
            let (first, second) = unsafe { (_mm_loadu_si128(values.as_ptr().add(j).cast()), _mm_loadu_si128(values.as_ptr().add(j + 8).cast())) };
            let (low_weights, high_weights) = (widen::<BF16>(first), widen::<BF16>(second));
            for r in 0..R {
                // SAFETY: j + 16 ≤ K, so both loads lie in row r of the asserted `[R, K]`.
                let (a, b) = unsafe { (_mm256_loadu_ps(x.as_ptr().add(r * k + j)), _mm256_loadu_ps(x.as_ptr().add(r * k + j + 8))) };
                low[r] = _mm256_fmadd_ps(a, low_weights, low[r]);
                high[r] = _mm256_fmadd_ps(b, high_weights, high[r]);
            }
        }
        let mut sums = [0f32; R];
        for r in 0..R {
            let tail: f32 = x[r * k + vector_end..(r + 1) * k].iter().zip(&values[vector_end..]).map(|(&a, &bits)| a * to_f32::<BF16>(bits)).sum();
            sums[r] = horizontal_sum(_mm256_add_ps(low[r], high[r])) + tail;
        }
        sums
    }

    /// Eight 16-bit values as f32: a bf16 is an f32's top half, an f16 converts.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn widen<const BF16: bool>(halves: __m128i) -> __m256 {
        if BF16 { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(halves))) } else { _mm256_cvtph_ps(halves) }
    }

    /// `out[i]` = `bits[i]` as f32, eight at a time through the f16 conversion instruction.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn convert_f16(bits: &[u16], out: &mut [f32]) {
        let len = bits.len().min(out.len());
        let vector_end = len / 8 * 8;
        for j in (0..vector_end).step_by(8) {
            // SAFETY: j + 8 ≤ len, within both slices.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(j), _mm256_cvtph_ps(_mm_loadu_si128(bits.as_ptr().add(j).cast()))) };
        }
        for j in vector_end..len {
            out[j] = to_f32::<false>(bits[j]);
        }
    }

    #[inline(always)]
    fn to_f32<const BF16: bool>(bits: u16) -> f32 {
        if BF16 { f32::from_bits((bits as u32) << 16) } else { half::f16::from_bits(bits).to_f32() }
    }
}
