//! 8-bit weights `[N, K]` decoded into K-major f32 tiles `[ks, cols]`, the layout the
//! `gemm` crate packs fastest. Where the CPU has AVX2, eight bytes of each of eight
//! channels are decoded into eight vectors, scaled, and transposed in registers, so each
//! store writes eight channels of one column; the rest goes one channel at a time.

use std::ops::Range;

use super::byte_gemm::{decode_channel, ByteValues, ByteWeightSlices};
use super::tiles::DEPTH;

/// Columns `ks` (`ks.start` a multiple of 8, `ks.len() ≤ DEPTH`) of the channels `cols`,
/// decoded as `values` into `out` `[ks, cols]`.
#[inline(always)]
pub(super) fn decode_tile(weight: &ByteWeightSlices, values: ByteValues, ks: Range<usize>, cols: Range<usize>, out: &mut [f32]) {
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut first_scalar = cols.start;
    #[cfg(target_arch = "x86_64")]
    if super::avx2() && weight.chunk().is_multiple_of(8) && ks.start.is_multiple_of(8) && cols.len() <= super::tiles::CHANNELS {
        let eights = cols.start..cols.end - cols.len() % 8;
        // SAFETY: the CPU was just checked to have the features the function is compiled for.
        unsafe { eight_channel_groups(weight, values, ks.clone(), eights.clone(), cols.len(), out) };
        first_scalar = eights.end;
    }
    for n in first_scalar..cols.end {
        channel_into_column(weight, values, n, ks.clone(), out, cols.len(), n - cols.start);
    }
}

/// Columns `ks` (at most [`DEPTH`]) of channel `n` into column `column` of `out`, whose
/// rows are `width` apart.
#[inline(always)]
fn channel_into_column(weight: &ByteWeightSlices, values: ByteValues, n: usize, ks: Range<usize>, out: &mut [f32], width: usize, column: usize) {
    let mut row = [0f32; DEPTH];
    let row = &mut row[..ks.len()];
    decode_channel(weight, values, n, ks, row);
    for (k, &value) in row.iter().enumerate() {
        out[k * width + column] = value;
    }
}

/// The channels `cols` (a multiple of 8 of them) into columns `0..cols.len()` of `out`,
/// whose rows are `width` apart: whole bands of eight columns by 8×8 transposes, the
/// last columns one channel at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn eight_channel_groups(weight: &ByteWeightSlices, values: ByteValues, ks: Range<usize>, cols: Range<usize>, width: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let bands = ks.start..ks.end - ks.len() % 8;
    assert!(cols.len().is_multiple_of(8) && cols.len() <= super::tiles::CHANNELS && cols.end <= weight.n && ks.end <= weight.k);
    assert!(out.len() >= ks.len() * width && weight.bytes.len() >= weight.n * weight.k);
    // e4m3 lanes come out as value · 2^−8: the 2^8 joins the scales (exact).
    let unit = match values {
        ByteValues::E4m3 => 256.0,
        ByteValues::Int8 | ByteValues::Int8Codes => 1.0,
    };
    let mut scales = [0f32; super::tiles::CHANNELS];
    for band in bands.clone().step_by(8) {
        // A new scale only where a band starts a scale chunk (chunks are multiples of 8).
        if band == ks.start || band % weight.chunk() == 0 {
            for (c, scale) in scales[..cols.len()].iter_mut().enumerate() {
                *scale = match values {
                    ByteValues::Int8Codes => 1.0,
                    _ => weight.scale(cols.start + c, band) * unit,
                };
            }
        }
        let first_row = (band - ks.start) * width;
        for group in (0..cols.len()).step_by(8) {
            let lanes = std::array::from_fn::<_, 8, _>(|i| {
                // SAFETY: channel `cols.start + group + i` < N and columns band..band+8 ≤ K,
                // inside the asserted `[N, K]` bytes.
                let bytes = unsafe { _mm_loadl_epi64(weight.bytes.as_ptr().add((cols.start + group + i) * weight.k + band).cast()) };
                let decoded = match values {
                    ByteValues::E4m3 => super::byte_gemm::e4m3_lanes(bytes),
                    ByteValues::Int8 | ByteValues::Int8Codes => _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)),
                };
                _mm256_mul_ps(decoded, _mm256_set1_ps(scales[group + i]))
            });
            for (i, column) in transpose8(lanes).into_iter().enumerate() {
                // SAFETY: row `band − ks.start + i` < ks.len() and columns group..group+8
                // ≤ width, inside the asserted `out`.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(first_row + i * width + group), column) };
            }
        }
    }
    // Columns past the last whole band.
    let tail = &mut out[(bands.end - ks.start) * width..];
    for n in cols.clone() {
        channel_into_column(weight, values, n, bands.end..ks.end, tail, width, n - cols.start);
    }
}

/// Rows `r[0..8]` of an 8×8 matrix → its columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn transpose8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let (t0, t1) = (_mm256_unpacklo_ps(r[0], r[1]), _mm256_unpackhi_ps(r[0], r[1]));
    let (t2, t3) = (_mm256_unpacklo_ps(r[2], r[3]), _mm256_unpackhi_ps(r[2], r[3]));
    let (t4, t5) = (_mm256_unpacklo_ps(r[4], r[5]), _mm256_unpackhi_ps(r[4], r[5]));
    let (t6, t7) = (_mm256_unpacklo_ps(r[6], r[7]), _mm256_unpackhi_ps(r[6], r[7]));
    let (u0, u1) = (_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2));
    let (u2, u3) = (_mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3));
    let (u4, u5) = (_mm256_shuffle_ps::<0x44>(t4, t6), _mm256_shuffle_ps::<0xEE>(t4, t6));
    let (u6, u7) = (_mm256_shuffle_ps::<0x44>(t5, t7), _mm256_shuffle_ps::<0xEE>(t5, t7));
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}
