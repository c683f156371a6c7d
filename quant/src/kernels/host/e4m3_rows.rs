//! e4m3 weights times a few rows of float activations, decoded in registers: sixteen
//! bytes of a channel become two vectors of f32 (through the f16 conversion instruction)
//! that every row's running sums multiply at once, so nothing is stored between the
//! decode and the products, and one decode serves up to [`ROW_BLOCK`] rows. The fused
//! FP8 path of [`super::byte_gemm`] runs this where the CPU has AVX2, FMA and F16C.

use std::arch::x86_64::*;
use std::ops::Range;

use super::byte_gemm::{e4m3_lanes16, e4m3_to_f32, ByteWeightSlices};
use super::{horizontal_sum, prefetch_line, row_blocks};

/// Rows whose sums one pass over a channel's bytes keeps in registers: two vectors each,
/// eight in all, beside the two decoded vectors and the decode's constants.
const ROW_BLOCK: usize = 4;

/// `out [m, channels] = x [m, K] · dequant(W[channels])ᵀ`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn e4m3_channels(weight: &ByteWeightSlices, x: &[f32], m: usize, channels: Range<usize>, out: &mut [f32]) {
    let (k, width) = (weight.k, channels.len());
    assert!(x.len() >= m * k && out.len() >= m * width && channels.end <= weight.n && weight.bytes.len() >= weight.n * k);
    for (c, n) in channels.clone().enumerate() {
        let next = super::next_channel(weight.bytes, k, n, &channels);
        for (first, rows, ahead) in row_blocks(m, ROW_BLOCK, next) {
            let x = &x[first * k..(first + rows) * k];
            let sums: &[f32] = match rows {
                4 => &channel_rows::<4>(weight, n, x, ahead),
                3 => &channel_rows::<3>(weight, n, x, ahead),
                2 => &channel_rows::<2>(weight, n, x, ahead),
                _ => &channel_rows::<1>(weight, n, x, ahead),
            };
            for (r, &sum) in sums.iter().enumerate() {
                out[(first + r) * width + c] = sum;
            }
        }
    }
}

/// The `R` rows of `x` (`[R, K]`) times channel `n`: per scale chunk, sums of products in
/// two vectors a row, then added to the row's total times the chunk's scale; the columns
/// past the chunk's last sixteen decode one at a time. `ahead` (what is read next) is
/// prefetched alongside.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn channel_rows<const R: usize>(weight: &ByteWeightSlices, n: usize, x: &[f32], ahead: &[u8]) -> [f32; R] {
    let k = weight.k;
    let bytes = &weight.bytes[n * k..(n + 1) * k];
    assert!(x.len() >= R * k);
    let mut totals = [_mm256_setzero_ps(); R];
    let mut tails = [0f32; R];
    let chunk = weight.chunk();
    for start in (0..k).step_by(chunk) {
        let end = (start + chunk).min(k);
        let vector_end = start + (end - start) / 16 * 16;
        let (mut low, mut high) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
        for j in (start..vector_end).step_by(16) {
            prefetch_line(ahead, j);
            // SAFETY: j + 16 ≤ K = bytes.len().
            let [low_weights, high_weights] = e4m3_lanes16(unsafe { _mm_loadu_si128(bytes.as_ptr().add(j).cast()) });
            for r in 0..R {
                // SAFETY: j + 16 ≤ K, so both loads lie in row r of the asserted `[R, K]`.
                let (a, b) = unsafe { (_mm256_loadu_ps(x.as_ptr().add(r * k + j)), _mm256_loadu_ps(x.as_ptr().add(r * k + j + 8))) };
                low[r] = _mm256_fmadd_ps(a, low_weights, low[r]);
                high[r] = _mm256_fmadd_ps(b, high_weights, high[r]);
            }
        }
        let scale = weight.scale(n, start);
        // The lanes hold values · 2^−8: the 2^8 joins the scale (exact, a power of two).
        let lane_scale = _mm256_set1_ps(scale * 256.0);
        for r in 0..R {
            totals[r] = _mm256_fmadd_ps(_mm256_add_ps(low[r], high[r]), lane_scale, totals[r]);
            let row = &x[r * k + vector_end..r * k + end];
            let tail: f32 = row.iter().zip(&bytes[vector_end..end]).map(|(&a, &b)| a * e4m3_to_f32(b)).sum();
            tails[r] += tail * scale;
        }
    }
    let mut sums = [0f32; R];
    for r in 0..R {
        sums[r] = horizontal_sum(totals[r]) + tails[r];
    }
    sums
}
