//! int8 weights times a few rows of int8 activation codes (W8A8), in registers: sixteen
//! bytes of a channel widen to sixteen i16 lanes, which the CPU's i16 multiply-add pairs
//! with each row's codes into eight i32 sums, so every product is summed exactly and one
//! widening serves up to [`ROW_BLOCK`] rows. The fused int8 path of [`super::byte_gemm`]
//! runs this where the CPU has AVX2.

use std::arch::x86_64::*;
use std::ops::Range;

use super::byte_gemm::ByteWeightSlices;
use super::{next_channel, prefetch_line, row_blocks};

/// Rows whose sums one pass over a channel's bytes keeps in registers.
const ROW_BLOCK: usize = 4;

/// `out [m, channels] = (a [m, K] · W[channels]ᵀ) · a_scales[row] · the channel's scale`,
/// the products summed in i32 and scaled in the reference's order.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn int8_channels(weight: &ByteWeightSlices, a: &[i16], a_scales: &[f32], m: usize, channels: Range<usize>, out: &mut [f32]) {
    let (k, width) = (weight.k, channels.len());
    assert!(a.len() >= m * k && a_scales.len() >= m && out.len() >= m * width && channels.end <= weight.n && weight.bytes.len() >= weight.n * k);
    for (c, n) in channels.clone().enumerate() {
        let bytes = &weight.bytes[n * k..(n + 1) * k];
        let next = next_channel(weight.bytes, k, n, &channels);
        let w_scale = weight.scale(n, 0);
        for (first, rows, ahead) in row_blocks(m, ROW_BLOCK, next) {
            let a = &a[first * k..(first + rows) * k];
            let sums: &[i32] = match rows {
                4 => &channel_rows::<4>(bytes, a, ahead),
                3 => &channel_rows::<3>(bytes, a, ahead),
                2 => &channel_rows::<2>(bytes, a, ahead),
                _ => &channel_rows::<1>(bytes, a, ahead),
            };
            for (r, &sum) in sums.iter().enumerate() {
                out[(first + r) * width + c] = sum as f32 * a_scales[first + r] * w_scale;
            }
        }
    }
}

/// The `R` rows of `a` (`[R, K]`, K = `bytes.len()`) times one channel's int8 `bytes`,
/// exactly, prefetching `ahead` (what is read next) alongside.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn channel_rows<const R: usize>(bytes: &[u8], a: &[i16], ahead: &[u8]) -> [i32; R] {
    let k = bytes.len();
    assert!(a.len() >= R * k);
    let vector_end = k / 16 * 16;
    let mut sums = [_mm256_setzero_si256(); R];
    for j in (0..vector_end).step_by(16) {
        prefetch_line(ahead, j);
        // SAFETY: j + 16 ≤ K = bytes.len().
        let weights = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(bytes.as_ptr().add(j).cast()) });
        for (r, sum) in sums.iter_mut().enumerate() {
            // SAFETY: j + 16 ≤ K, so the sixteen codes lie in row r of the asserted `[R, K]`.
            let codes = unsafe { _mm256_loadu_si256(a.as_ptr().add(r * k + j).cast()) };
            *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(codes, weights));
        }
    }
    let mut totals = [0i32; R];
    for r in 0..R {
        let mut lanes = [0i32; 8];
        // SAFETY: `lanes` holds eight i32, the store's width.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), sums[r]) };
        let tail: i32 = a[r * k + vector_end..(r + 1) * k].iter().zip(&bytes[vector_end..]).map(|(&a, &b)| a as i32 * b as i8 as i32).sum();
        totals[r] = lanes.iter().sum::<i32>() + tail;
    }
    totals
}
