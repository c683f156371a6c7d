//! 8-bit weights (e4m3, or int8 with float activations) times a few rows of float
//! activations, decoded in registers: a step's bytes of a channel become two vectors of
//! f32 (e4m3 through the f16 conversion instruction, int8 by widening) that every row's
//! running sums multiply at once, so nothing is stored between the decode and the
//! products, and one decode serves a block of rows. The fused FP8 and int8 weight-only
//! paths of [`super::byte_gemm`] run this where the CPU has AVX2 (sixteen bytes a step)
//! or AVX-512 (thirty-two).

use std::marker::PhantomData;
use std::ops::Range;

use super::byte_gemm::{e4m3_to_f32, ByteWeightSlices};
use super::lanes::{Avx2, Avx512, F32Lanes};
use super::prefetch_line;
use super::sliced::{self, RowKernel};

/// `out [m, channels] = x [m, K] · dequant(W[channels])ᵀ`, with AVX2; `E4M3` picks the
/// format (int8 otherwise).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn byte_channels_avx2<const E4M3: bool>(weight: &ByteWeightSlices, x: &[f32], m: usize, channels: Range<usize>, out: &mut [f32]) {
    // SAFETY: compiled for AVX2's set, which the caller checked the CPU has.
    unsafe { sliced::channels(&ByteRows::<Avx2, E4M3>(weight, PhantomData), x, m, channels, out) }
}

/// [`byte_channels_avx2`] with AVX-512.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
pub(super) fn byte_channels_avx512<const E4M3: bool>(weight: &ByteWeightSlices, x: &[f32], m: usize, channels: Range<usize>, out: &mut [f32]) {
    // SAFETY: compiled for AVX-512's set, which the caller checked the CPU has.
    unsafe { sliced::channels(&ByteRows::<Avx512, E4M3>(weight, PhantomData), x, m, channels, out) }
}

/// The kernel, in `L`'s vectors.
struct ByteRows<'a, L, const E4M3: bool>(&'a ByteWeightSlices<'a>, PhantomData<L>);

impl<L: F32Lanes, const E4M3: bool> RowKernel for ByteRows<'_, L, E4M3> {
    type Input = f32;
    type Weight = u8;
    type Sum = f32;
    const ROW_BLOCK: usize = L::ROW_BLOCK;

    fn weight(&self) -> (&[u8], usize) {
        (self.0.bytes, self.0.k)
    }

    /// Whole scale chunks.
    fn slice_columns(&self, rows: usize) -> usize {
        sliced::slice_columns(rows, 4, self.0.chunk())
    }

    /// Per scale chunk, sums of products in two vectors a row, then added to the row's
    /// total times the chunk's scale; the columns past the chunk's last whole step
    /// decode one at a time.
    #[inline(always)]
    unsafe fn rows<const R: usize>(&self, n: usize, ks: Range<usize>, x: &[f32], ahead: &[u8]) -> [f32; R] {
        let weight = self.0;
        let (k, step) = (weight.k, 2 * L::WIDTH);
        let bytes = &weight.bytes[n * k..(n + 1) * k];
        assert!(x.len() >= R * k && ks.end <= k);
        // SAFETY (every vector operation): the caller runs this where `L`'s set is present.
        let mut totals = [unsafe { L::zero() }; R];
        let mut tails = [0f32; R];
        let chunk = weight.chunk();
        for start in ks.clone().step_by(chunk) {
            let end = (start + chunk).min(ks.end);
            let vector_end = start + (end - start) / step * step;
            let (mut low, mut high) = ([unsafe { L::zero() }; R], [unsafe { L::zero() }; R]);
            for j in (start..vector_end).step_by(step) {
                prefetch_line(ahead, j - ks.start);
                // SAFETY: j + step ≤ K = bytes.len().
                let [low_weights, high_weights] = unsafe { if E4M3 { L::e4m3(bytes.as_ptr().add(j)) } else { L::int8(bytes.as_ptr().add(j)) } };
                for r in 0..R {
                    // SAFETY: j + step ≤ K, so both loads lie in row r of the asserted `[R, K]`.
                    unsafe {
                        let row = x.as_ptr().add(r * k + j);
                        low[r] = L::mul_add(L::load(row), low_weights, low[r]);
                        high[r] = L::mul_add(L::load(row.add(L::WIDTH)), high_weights, high[r]);
                    }
                }
            }
            let scale = weight.scale(n, start);
            // e4m3 lanes hold values · 2^−8: the 2^8 joins the scale (exact, a power of two).
            let lane_scale = unsafe { L::splat(if E4M3 { scale * 256.0 } else { scale }) };
            for r in 0..R {
                totals[r] = unsafe { L::mul_add(L::add(low[r], high[r]), lane_scale, totals[r]) };
                let row = &x[r * k + vector_end..r * k + end];
                let tail: f32 = row.iter().zip(&bytes[vector_end..end]).map(|(&a, &b)| a * if E4M3 { e4m3_to_f32(b) } else { b as i8 as f32 }).sum();
                tails[r] += tail * scale;
            }
        }
        let mut sums = [0f32; R];
        for r in 0..R {
            sums[r] = unsafe { L::sum(totals[r]) } + tails[r];
        }
        sums
    }
}
