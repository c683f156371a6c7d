//! int8 weights times a few rows of int8 activation codes (W8A8), in registers, every
//! product summed exactly in i32, one pass over a block of channels' bytes serving a block of rows:
//!
//! - AVX2: sixteen bytes widen to i16 lanes, which the i16 multiply-add pairs with each
//!   row's codes (as i16) into eight i32 sums;
//! - AVX-512 VNNI: sixty-four bytes at once go through the u8 · i8 dot-product
//!   instruction with each row's codes biased by 128 into u8, four products to each of
//!   sixteen i32 sums; the bias comes back out as 128 · Σw, which the same instruction
//!   sums alongside against ones.
//!
//! The fused int8 path of [`super::byte_gemm`] runs these.

use std::arch::x86_64::*;
use std::ops::Range;

use super::byte_gemm::{ByteWeightSlices, CODE_BIAS};
use super::prefetch_line;
use super::sliced::{self, RowKernel};

/// `out [m, channels] = (a [m, K] · W[channels]ᵀ) · a_scales[row] · the channel's scale`,
/// the products summed in i32 and scaled in the reference's order, with AVX2; `a` holds
/// the codes as i16.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn int8_channels_avx2(weight: &ByteWeightSlices, a: &[i16], a_scales: &[f32], m: usize, channels: Range<usize>, out: &mut [f32]) {
    let mut sums = vec![0i32; m * channels.len()];
    // SAFETY: compiled for AVX2's set, which the caller checked the CPU has.
    unsafe { sliced::channels(&Avx2Rows(weight), a, m, channels.clone(), &mut sums) };
    scale_sums(weight, &sums, a_scales, channels, out);
}

/// [`int8_channels_avx2`] with AVX-512 VNNI; `biased` holds the codes plus
/// [`CODE_BIAS`], as bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn int8_channels_vnni(weight: &ByteWeightSlices, biased: &[u8], a_scales: &[f32], m: usize, channels: Range<usize>, out: &mut [f32]) {
    let mut sums = vec![0i32; m * channels.len()];
    // SAFETY: compiled for AVX-512 VNNI's set, which the caller checked the CPU has.
    unsafe { sliced::channels(&VnniRows(weight), biased, m, channels.clone(), &mut sums) };
    scale_sums(weight, &sums, a_scales, channels, out);
}

/// `out[row, c]` = `sums[row, c] · a_scales[row] · scale(channel c)`.
#[inline(always)]
fn scale_sums(weight: &ByteWeightSlices, sums: &[i32], a_scales: &[f32], channels: Range<usize>, out: &mut [f32]) {
    let width = channels.len();
    for (row, (sums, out)) in sums.chunks(width).zip(out.chunks_mut(width)).enumerate() {
        for ((o, &sum), n) in out.iter_mut().zip(sums).zip(channels.clone()) {
            *o = sum as f32 * a_scales[row] * weight.scale(n, 0);
        }
    }
}

/// The codes past a kernel's last whole step, one at a time: `Σ (a − bias) · w`.
#[inline(always)]
fn tail_sum<A: Copy + Into<i32>>(codes: &[A], bytes: &[u8], bias: i32) -> i32 {
    codes.iter().zip(bytes).map(|(&a, &b)| (a.into() - bias) * b as i8 as i32).sum()
}

struct Avx2Rows<'a>(&'a ByteWeightSlices<'a>);

impl RowKernel for Avx2Rows<'_> {
    type Input = i16;
    type Weight = u8;
    type Sum = i32;
    /// Sums take one register a row and channel.
    const ROW_BLOCK: usize = 4;
    const CHANNEL_BLOCK: usize = 2;

    fn weight(&self) -> (&[u8], usize) {
        (self.0.bytes, self.0.k)
    }

    fn slice_columns(&self, rows: usize) -> usize {
        sliced::slice_columns(rows, 2, 16)
    }

    #[inline(always)]
    unsafe fn block<const R: usize, const C: usize>(&self, n: usize, ks: Range<usize>, a: &[i16], ahead: [&[u8]; C]) -> [[i32; C]; R] {
        let k = self.0.k;
        let bytes = &self.0.bytes[n * k..(n + C) * k];
        assert!(a.len() >= R * k && ks.end <= k);
        let vector_end = ks.start + ks.len() / 16 * 16;
        // SAFETY (every vector operation): the caller runs this where AVX2 is present.
        let mut sums = [[unsafe { _mm256_setzero_si256() }; C]; R];
        for j in (ks.start..vector_end).step_by(16) {
            for lookahead in ahead {
                prefetch_line(lookahead, j - ks.start);
            }
            let mut weights = [unsafe { _mm256_setzero_si256() }; C];
            for (c, widened) in weights.iter_mut().enumerate() {
                // SAFETY: j + 16 ≤ K, within each of the block's channels.
                *widened = unsafe { _mm256_cvtepi8_epi16(_mm_loadu_si128(bytes.as_ptr().add(c * k + j).cast())) };
            }
            for r in 0..R {
                // SAFETY: j + 16 ≤ K, so the sixteen codes lie in row r of the asserted `[R, K]`.
                let codes = unsafe { _mm256_loadu_si256(a.as_ptr().add(r * k + j).cast()) };
                for c in 0..C {
                    sums[r][c] = unsafe { _mm256_add_epi32(sums[r][c], _mm256_madd_epi16(codes, weights[c])) };
                }
            }
        }
        let mut totals = [[0i32; C]; R];
        for r in 0..R {
            for c in 0..C {
                let mut lanes = [0i32; 8];
                // SAFETY: `lanes` holds eight i32, the store's width.
                unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), sums[r][c]) };
                let tail = tail_sum(&a[r * k + vector_end..r * k + ks.end], &bytes[c * k + vector_end..c * k + ks.end], 0);
                totals[r][c] = lanes.iter().sum::<i32>() + tail;
            }
        }
        totals
    }
}

struct VnniRows<'a>(&'a ByteWeightSlices<'a>);

impl RowKernel for VnniRows<'_> {
    type Input = u8;
    type Weight = u8;
    type Sum = i32;
    /// A row and channel's sums take one register, and each channel's weight sum another.
    const ROW_BLOCK: usize = 4;
    const CHANNEL_BLOCK: usize = 4;

    fn weight(&self) -> (&[u8], usize) {
        (self.0.bytes, self.0.k)
    }

    fn slice_columns(&self, rows: usize) -> usize {
        sliced::slice_columns(rows, 1, 64)
    }

    #[inline(always)]
    unsafe fn block<const R: usize, const C: usize>(&self, n: usize, ks: Range<usize>, biased: &[u8], ahead: [&[u8]; C]) -> [[i32; C]; R] {
        let k = self.0.k;
        let bytes = &self.0.bytes[n * k..(n + C) * k];
        assert!(biased.len() >= R * k && ks.end <= k);
        let vector_end = ks.start + ks.len() / 64 * 64;
        // SAFETY (every vector operation): the caller runs this where AVX-512 VNNI is present.
        let (mut sums, mut weight_sums, ones) = unsafe { ([[_mm512_setzero_si512(); C]; R], [_mm512_setzero_si512(); C], _mm512_set1_epi8(1)) };
        for j in (ks.start..vector_end).step_by(64) {
            for lookahead in ahead {
                prefetch_line(lookahead, j - ks.start);
            }
            let mut weights = [unsafe { _mm512_setzero_si512() }; C];
            for c in 0..C {
                // SAFETY: j + 64 ≤ K, within each of the block's channels.
                weights[c] = unsafe { _mm512_loadu_si512(bytes.as_ptr().add(c * k + j).cast()) };
                weight_sums[c] = unsafe { _mm512_dpbusd_epi32(weight_sums[c], ones, weights[c]) };
            }
            for r in 0..R {
                // SAFETY: j + 64 ≤ K, so the sixty-four codes lie in row r of the asserted `[R, K]`.
                let codes = unsafe { _mm512_loadu_si512(biased.as_ptr().add(r * k + j).cast()) };
                for c in 0..C {
                    sums[r][c] = unsafe { _mm512_dpbusd_epi32(sums[r][c], codes, weights[c]) };
                }
            }
        }
        // Σ (a + 128) · w − 128 · Σ w, in wrapping i32 like the lanes (exact wherever the
        // product fits an i32, as the reference's sum must).
        let biases: [i32; C] = std::array::from_fn(|c| unsafe { _mm512_reduce_add_epi32(weight_sums[c]) }.wrapping_mul(CODE_BIAS as i32));
        let mut totals = [[0i32; C]; R];
        for r in 0..R {
            for c in 0..C {
                let tail = tail_sum(&biased[r * k + vector_end..r * k + ks.end], &bytes[c * k + vector_end..c * k + ks.end], CODE_BIAS as i32);
                totals[r][c] = unsafe { _mm512_reduce_add_epi32(sums[r][c]) }.wrapping_sub(biases[c]).wrapping_add(tail);
            }
        }
        totals
    }
}
