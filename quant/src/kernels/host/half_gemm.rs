//! Float weights kept in their checkpoint's f16 or bf16, times f32 activations. Both
//! halves convert to f32 exactly, so this is the f32 product of the f32 weight while
//! reading half the bytes: at a few rows, where a matmul is bound by reading the weight,
//! that is half the time. Where the CPU has AVX2, FMA and F16C (or AVX-512), a step of
//! eight (sixteen) values of each of a block of channels becomes an f32 vector in
//! registers (the f16 conversion instruction, or a widen and shift for bf16) that a block
//! of rows' running sums multiply at once. From [`super::float_tiled_rows`] rows the weight is decoded a
//! tile at a time for the `gemm` crate instead ([`super::tiles`]), and where the CPU has
//! AMX, from a few rows, its tile unit multiplies the weight ([`super::amx::half`]).

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
                    return unsafe { registers::convert_f16(bits, out) };
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

/// `[m, K] · Wᵀ` → `[m, N]`, f32, row-major.
pub fn half_gemm(weight: &HalfWeightSlices, x: &[f32], m: usize) -> Vec<f32> {
    super::by_column_blocks(m, weight.n, CHANNELS, |channels, out| {
        #[cfg(target_arch = "x86_64")]
        {
            use super::VectorIsa;
            let bf16 = weight.format == HalfFormat::BF16;
            // SAFETY (every call): `vector_isa` reports only sets the CPU was checked to have.
            match (super::vector_isa(), bf16) {
                (VectorIsa::Amx | VectorIsa::Avx512, false) => return unsafe { registers::channels_avx512::<false>(weight, x, m, channels, out) },
                (VectorIsa::Amx | VectorIsa::Avx512, true) => return unsafe { registers::channels_avx512::<true>(weight, x, m, channels, out) },
                (VectorIsa::Avx2, false) => return unsafe { registers::channels_avx2::<false>(weight, x, m, channels, out) },
                (VectorIsa::Avx2, true) => return unsafe { registers::channels_avx2::<true>(weight, x, m, channels, out) },
                (VectorIsa::Baseline, _) => {}
            }
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

/// The register kernel: each step's values of a block of channels become an f32 vector
/// a channel (the f16 conversion instruction, or a widen and shift for bf16) that a block
/// of rows' running sums multiply at once, each row's activations loaded once for every
/// channel of the block.
#[cfg(target_arch = "x86_64")]
mod registers {
    use std::arch::x86_64::*;
    use std::marker::PhantomData;
    use std::ops::Range;

    use super::HalfWeightSlices;
    use crate::kernels::host::lanes::{Avx2, Avx512, F32Lanes};
    use crate::kernels::host::prefetch_line;
    use crate::kernels::host::sliced::{self, RowKernel};

    /// `out [m, channels] = x [m, K] · W[channels]ᵀ` with AVX2; `BF16` picks the format.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn channels_avx2<const BF16: bool>(weight: &HalfWeightSlices, x: &[f32], m: usize, channels: Range<usize>, out: &mut [f32]) {
        // SAFETY: compiled for AVX2's set, which the caller checked the CPU has.
        unsafe { sliced::channels(&HalfRows::<Avx2, BF16>(weight, PhantomData), x, m, channels, out) }
    }

    /// [`channels_avx2`] with AVX-512.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
    pub(super) fn channels_avx512<const BF16: bool>(weight: &HalfWeightSlices, x: &[f32], m: usize, channels: Range<usize>, out: &mut [f32]) {
        // SAFETY: compiled for AVX-512's set, which the caller checked the CPU has.
        unsafe { sliced::channels(&HalfRows::<Avx512, BF16>(weight, PhantomData), x, m, channels, out) }
    }

    /// The kernel, in `L`'s vectors.
    struct HalfRows<'a, L, const BF16: bool>(&'a HalfWeightSlices<'a>, PhantomData<L>);

    impl<L: F32Lanes, const BF16: bool> RowKernel for HalfRows<'_, L, BF16> {
        type Input = f32;
        type Weight = u16;
        type Sum = f32;
        const ROW_BLOCK: usize = L::ROW_BLOCK;
        const CHANNEL_BLOCK: usize = L::CHANNEL_BLOCK;

        fn weight(&self) -> (&[u16], usize) {
            (self.0.values, self.0.k)
        }

        fn slice_columns(&self, rows: usize) -> usize {
            sliced::slice_columns(rows, 4, 2 * L::WIDTH)
        }

        /// Steps of two vectors a channel; a block of few rows and channels keeps a
        /// second running sum for the second vector, so that its multiply-adds do not
        /// wait on the first's.
        #[inline(always)]
        unsafe fn block<const R: usize, const C: usize>(&self, n: usize, ks: Range<usize>, x: &[f32], ahead: [&[u16]; C]) -> [[f32; C]; R] {
            let (k, step) = (self.0.k, 2 * L::WIDTH);
            let values = &self.0.values[n * k..(n + C) * k];
            assert!(x.len() >= R * k && ks.end <= k);
            let vector_end = ks.start + ks.len() / step * step;
            let split = R * C <= SPLIT_SUMS;
            // SAFETY (every vector operation): the caller runs this where `L`'s set is present.
            let (mut sums, mut second_sums) = ([[unsafe { L::zero() }; C]; R], [[unsafe { L::zero() }; C]; R]);
            for j in (ks.start..vector_end).step_by(step) {
                for lookahead in ahead {
                    prefetch_line(lookahead, j - ks.start);
                }
                for half in 0..2 {
                    let at = j + half * L::WIDTH;
                    let mut weights = [unsafe { L::zero() }; C];
                    for (c, decoded) in weights.iter_mut().enumerate() {
                        // SAFETY: at + WIDTH ≤ K, within each of the block's channels.
                        *decoded = unsafe { L::half::<BF16>(values.as_ptr().add(c * k + at)) };
                    }
                    let target = if split && half == 1 { &mut second_sums } else { &mut sums };
                    for (r, row_sums) in target.iter_mut().enumerate() {
                        // SAFETY: at + WIDTH ≤ K, so the load lies in row r of the asserted `[R, K]`.
                        let activations = unsafe { L::load(x.as_ptr().add(r * k + at)) };
                        for (sum, &weights) in row_sums.iter_mut().zip(&weights) {
                            *sum = unsafe { L::mul_add(activations, weights, *sum) };
                        }
                    }
                }
            }
            let mut totals = [[0f32; C]; R];
            for r in 0..R {
                let row = &x[r * k + vector_end..r * k + ks.end];
                for c in 0..C {
                    let tail: f32 = row.iter().zip(&values[c * k + vector_end..c * k + ks.end]).map(|(&a, &bits)| a * to_f32::<BF16>(bits)).sum();
                    let sum = if split { unsafe { L::add(sums[r][c], second_sums[r][c]) } } else { sums[r][c] };
                    totals[r][c] = unsafe { L::sum(sum) } + tail;
                }
            }
            totals
        }
    }

    /// The most running sums of a block (rows times channels) that take a second sum each.
    const SPLIT_SUMS: usize = 4;

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
