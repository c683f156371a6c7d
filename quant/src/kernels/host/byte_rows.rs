//! 8-bit weights (e4m3, or int8 with float activations) times a few rows of float
//! activations, decoded in registers: a step's bytes of each of a block of channels become
//! two vectors of f32 (e4m3 through the f16 conversion instruction, int8 by widening)
//! that every row's running sums multiply at once, so nothing is stored between the decode and the
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
    /// Each row and channel keeps two running sums: the chunk's, and the scaled total.
    const ROW_BLOCK: usize = 4;
    const CHANNEL_BLOCK: usize = L::CHANNEL_BLOCK / 2;

    fn weight(&self) -> (&[u8], usize) {
        (self.0.bytes, self.0.k)
    }

    /// Whole scale chunks.
    fn slice_columns(&self, rows: usize) -> usize {
        sliced::slice_columns(rows, 4, self.0.chunk())
    }

    /// Per scale chunk, sums of products in a vector a row and channel, then added to
    /// its total times the chunk's scale; the columns past the chunk's last whole step
    /// decode one at a time.
    #[inline(always)]
    unsafe fn block<const R: usize, const C: usize>(&self, n: usize, ks: Range<usize>, x: &[f32], ahead: [&[u8]; C]) -> [[f32; C]; R] {
        let weight = self.0;
        let (k, step) = (weight.k, 2 * L::WIDTH);
        let bytes = &weight.bytes[n * k..(n + C) * k];
        assert!(x.len() >= R * k && ks.end <= k);
        // SAFETY (every vector operation): the caller runs this where `L`'s set is present.
        let mut totals = [[unsafe { L::zero() }; C]; R];
        let mut tails = [[0f32; C]; R];
        let chunk = weight.chunk();
        // A block of few rows and channels keeps a second running sum for each step's
        // second vector, so that its multiply-adds do not wait on the first's.
        let split = R * C <= 4;
        for start in ks.clone().step_by(chunk) {
            let end = (start + chunk).min(ks.end);
            let vector_end = start + (end - start) / step * step;
            let (mut sums, mut second_sums) = ([[unsafe { L::zero() }; C]; R], [[unsafe { L::zero() }; C]; R]);
            for j in (start..vector_end).step_by(step) {
                for lookahead in ahead {
                    prefetch_line(lookahead, j - ks.start);
                }
                let mut weights = [[unsafe { L::zero() }; 2]; C];
                for (c, decoded) in weights.iter_mut().enumerate() {
                    // SAFETY: j + step ≤ K, within each of the block's channels.
                    let at = unsafe { bytes.as_ptr().add(c * k + j) };
                    *decoded = unsafe { if E4M3 { L::e4m3(at) } else { L::int8(at) } };
                }
                for half in 0..2 {
                    let target = if split && half == 1 { &mut second_sums } else { &mut sums };
                    for (r, row_sums) in target.iter_mut().enumerate() {
                        // SAFETY: j + step ≤ K, so the load lies in row r of the asserted `[R, K]`.
                        let activations = unsafe { L::load(x.as_ptr().add(r * k + j + half * L::WIDTH)) };
                        for (sum, decoded) in row_sums.iter_mut().zip(&weights) {
                            *sum = unsafe { L::mul_add(activations, decoded[half], *sum) };
                        }
                    }
                }
            }
            for c in 0..C {
                let scale = weight.scale(n + c, start);
                // e4m3 lanes hold values · 2^−8: the 2^8 joins the scale (exact, a power of two).
                let lane_scale = unsafe { L::splat(if E4M3 { scale * 256.0 } else { scale }) };
                let channel = &bytes[c * k + vector_end..c * k + end];
                for r in 0..R {
                    let sum = if split { unsafe { L::add(sums[r][c], second_sums[r][c]) } } else { sums[r][c] };
                    totals[r][c] = unsafe { L::mul_add(sum, lane_scale, totals[r][c]) };
                    let row = &x[r * k + vector_end..r * k + end];
                    let tail: f32 = row.iter().zip(channel).map(|(&a, &b)| a * if E4M3 { e4m3_to_f32(b) } else { b as i8 as f32 }).sum();
                    tails[r][c] += tail * scale;
                }
            }
        }
        let mut block = [[0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                block[r][c] = unsafe { L::sum(totals[r][c]) } + tails[r][c];
            }
        }
        block
    }
}
