//! The f32 vector operations the register kernels ([`super::byte_rows`],
//! [`super::half_gemm`]) are written in, for AVX2 (eight lanes) and AVX-512 (sixteen).
//! A kernel's body is generic over [`F32Lanes`] and `#[inline(always)]`, and each vector
//! set gets an entry point compiled with its `#[target_feature]`s, so the body and every
//! operation in it inline into that set's instructions.

use std::arch::x86_64::*;

/// A vector set's f32 vector, its operations, and the decodings into it.
///
/// # Safety
/// Every method may only run on a CPU with the implementor's vector set, and from a
/// function compiled for it (or they would not inline); pointers must address the
/// values each method reads.
pub(super) trait F32Lanes {
    type Vector: Copy;
    /// f32 values in a vector.
    const WIDTH: usize;
    /// Rows and channels of a block whose running sums (one a row and channel) a kernel
    /// keeps in registers beside a decoded vector a channel: AVX2 has sixteen registers,
    /// AVX-512 thirty-two.
    const ROW_BLOCK: usize;
    const CHANNEL_BLOCK: usize;
    unsafe fn zero() -> Self::Vector;
    unsafe fn splat(value: f32) -> Self::Vector;
    unsafe fn load(values: *const f32) -> Self::Vector;
    /// `a · b + sum`, rounded once.
    unsafe fn mul_add(a: Self::Vector, b: Self::Vector, sum: Self::Vector) -> Self::Vector;
    unsafe fn add(a: Self::Vector, b: Self::Vector) -> Self::Vector;
    /// The sum of the lanes.
    unsafe fn sum(v: Self::Vector) -> f32;
    /// The `2 · WIDTH` e4m3fn bytes at `bytes` as f32 values times 2^−8, the first `WIDTH`
    /// in the first vector. A byte's exponent and mantissa, shifted into an f16's, are
    /// its value times 2^−8 (the biases are 7 and 15), subnormals included, so the f16
    /// conversion instruction decodes it; magnitude 0x7F (NaN) would land on a finite f16
    /// and is made NaN apart.
    unsafe fn e4m3(bytes: *const u8) -> [Self::Vector; 2];
    /// The `2 · WIDTH` int8 values at `bytes` as f32, the first `WIDTH` in the first vector.
    unsafe fn int8(bytes: *const u8) -> [Self::Vector; 2];
    /// The `WIDTH` f16 (or, with `BF16`, bf16) values at `bits` as f32, exactly.
    unsafe fn half<const BF16: bool>(bits: *const u16) -> Self::Vector;
}

/// AVX2 with FMA and F16C.
pub(super) struct Avx2;

/// AVX-512 F, BW, DQ and VL (x86-64-v4) beside AVX2's set.
pub(super) struct Avx512;

impl F32Lanes for Avx2 {
    type Vector = __m256;
    const WIDTH: usize = 8;
    const ROW_BLOCK: usize = 4;
    const CHANNEL_BLOCK: usize = 2;

    #[inline(always)]
    unsafe fn zero() -> __m256 {
        unsafe { _mm256_setzero_ps() }
    }

    #[inline(always)]
    unsafe fn splat(value: f32) -> __m256 {
        unsafe { _mm256_set1_ps(value) }
    }

    #[inline(always)]
    unsafe fn load(values: *const f32) -> __m256 {
        unsafe { _mm256_loadu_ps(values) }
    }

    #[inline(always)]
    unsafe fn mul_add(a: __m256, b: __m256, sum: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, sum) }
    }

    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_add_ps(a, b) }
    }

    #[inline(always)]
    unsafe fn sum(v: __m256) -> f32 {
        unsafe { super::horizontal_sum(v) }
    }

    #[inline(always)]
    unsafe fn e4m3(bytes: *const u8) -> [__m256; 2] {
        unsafe { super::byte_gemm::e4m3_lanes16(_mm_loadu_si128(bytes.cast())) }
    }

    #[inline(always)]
    unsafe fn int8(bytes: *const u8) -> [__m256; 2] {
        unsafe {
            let (low, high) = (_mm_loadl_epi64(bytes.cast()), _mm_loadl_epi64(bytes.add(8).cast()));
            [_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(low)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(high))]
        }
    }

    #[inline(always)]
    unsafe fn half<const BF16: bool>(bits: *const u16) -> __m256 {
        unsafe {
            let halves = _mm_loadu_si128(bits.cast());
            if BF16 { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(halves))) } else { _mm256_cvtph_ps(halves) }
        }
    }
}

impl F32Lanes for Avx512 {
    type Vector = __m512;
    const WIDTH: usize = 16;
    const ROW_BLOCK: usize = 6;
    const CHANNEL_BLOCK: usize = 4;

    #[inline(always)]
    unsafe fn zero() -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }

    #[inline(always)]
    unsafe fn splat(value: f32) -> __m512 {
        unsafe { _mm512_set1_ps(value) }
    }

    #[inline(always)]
    unsafe fn load(values: *const f32) -> __m512 {
        unsafe { _mm512_loadu_ps(values) }
    }

    #[inline(always)]
    unsafe fn mul_add(a: __m512, b: __m512, sum: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, sum) }
    }

    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }

    #[inline(always)]
    unsafe fn sum(v: __m512) -> f32 {
        unsafe { _mm512_reduce_add_ps(v) }
    }

    #[inline(always)]
    unsafe fn e4m3(bytes: *const u8) -> [__m512; 2] {
        unsafe {
            // Sign-extended to 16 bits and shifted left by 7, the sign sits on bits 14
            // and 15: clearing bit 14 leaves the f16.
            let shifted = _mm512_slli_epi16::<7>(_mm512_cvtepi8_epi16(_mm256_loadu_si256(bytes.cast())));
            let half = _mm512_and_si512(shifted, _mm512_set1_epi16(0xBFFFu16 as i16));
            let nan = _mm512_cmpeq_epi16_mask(_mm512_and_si512(shifted, _mm512_set1_epi16(0x3F80)), _mm512_set1_epi16(0x3F80));
            let halves = _mm512_mask_blend_epi16(nan, half, _mm512_set1_epi16(0x7E00));
            [_mm512_cvtph_ps(_mm512_castsi512_si256(halves)), _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(halves))]
        }
    }

    #[inline(always)]
    unsafe fn int8(bytes: *const u8) -> [__m512; 2] {
        unsafe {
            let (low, high) = (_mm_loadu_si128(bytes.cast()), _mm_loadu_si128(bytes.add(16).cast()));
            [_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(low)), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(high))]
        }
    }

    #[inline(always)]
    unsafe fn half<const BF16: bool>(bits: *const u16) -> __m512 {
        unsafe {
            let halves = _mm256_loadu_si256(bits.cast());
            if BF16 { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves))) } else { _mm512_cvtph_ps(halves) }
        }
    }
}
