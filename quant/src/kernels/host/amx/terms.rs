//! Float activations on the tile unit's bf16 products, shared by [`super::packed`] and
//! [`super::left_weights`]: each value split into bf16 terms that add up to it exactly, and how
//! far a task's loop over those terms' tiles goes before the L2 cache no longer keeps
//! them (spans of K, passes of row blocks, task widths).

use std::arch::x86_64::*;

use burn::tensor::DType;

use super::{RightTiles, CHANNELS, TILE_BYTES};

/// The bf16 terms that carry each activation of `dtype` exactly.
pub(crate) fn terms(dtype: DType) -> usize {
    match dtype {
        DType::BF16 => 1,
        DType::F16 => 2,
        _ => 3,
    }
}

/// `values` rounded to bf16 (to nearest, ties to even), as f32 whose lower sixteen bits
/// are zero. The remainder `values − rounded` is then exact in f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
pub(super) fn round_to_bf16(values: __m512) -> __m512 {
    let bits = _mm512_castps_si512(values);
    let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
    let rounded = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd));
    _mm512_castsi512_ps(_mm512_and_si512(rounded, _mm512_set1_epi32(0xffff_0000_u32 as i32)))
}

/// The upper halves of sixteen f32 as sixteen u16: the bf16 of values already rounded
/// to it ([`round_to_bf16`]).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
pub(super) fn upper_halves(values: __m512) -> __m256i {
    _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(_mm512_castps_si512(values)))
}

/// Float activations `[m, K]` as `terms` sets of right-operand bf16 tiles, set `t`
/// holding each value's term `t`.
///
/// # Safety
/// Only where [`super::available`] reported the tile unit usable.
pub(super) unsafe fn float_terms(x: &[f32], m: usize, k: usize, terms: usize) -> Vec<RightTiles> {
    assert!(x.len() >= m * k && (1..=3).contains(&terms));
    (0..terms)
        // SAFETY: passed on from the caller (the tile unit's CPUs have AVX-512).
        .map(|term| unsafe { RightTiles::new(m, 2 * k, |row, bytes| encode_term(&x[row * k..(row + 1) * k], term, bytes)) })
        .collect()
}

/// Term `term` of each of `values` as little-endian bf16 into `bytes`: each term the
/// bf16 rounding of what the terms before it leave, sixteen values at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
fn encode_term(values: &[f32], term: usize, bytes: &mut [u8]) {
    assert!(bytes.len() >= 2 * values.len());
    for (chunk, values) in values.chunks(16).enumerate() {
        let mask = (1u32 << values.len()).wrapping_sub(1) as u16;
        // SAFETY: the mask reads only `values`' own lanes.
        let mut rest = unsafe { _mm512_maskz_loadu_ps(mask, values.as_ptr()) };
        for _ in 0..term {
            rest = _mm512_sub_ps(rest, round_to_bf16(rest));
        }
        // SAFETY: the mask writes one u16 for each of `values`, inside `bytes`.
        unsafe { _mm256_mask_storeu_epi16(bytes[32 * chunk..].as_mut_ptr().cast(), mask, upper_halves(round_to_bf16(rest))) };
    }
}

/// The activation tiles a span of K covers across every row block, at most: what stays
/// in a core's L2 cache while each of a task's channel pairs passes over it.
const SPAN_BYTES: usize = 512 << 10;

/// The weight tiles a task holds for a span (widened, or read in place), at most: with
/// the span's activations, they stay in a core's L2 cache.
const WIDENED_BYTES: usize = 256 << 10;

/// Channels a task covers at most once its activations outgrow [`SPAN_BYTES`]: memory
/// then delivers each span once per task rather than once per channel pair.
const WIDE_TASK: usize = 4 * CHANNELS;

/// Channels per task for activation tiles of `activation_bytes` and `n` channels: one
/// pair of weight tiles while the activations stay in cache, up to [`WIDE_TASK`] beyond,
/// leaving every thread two tasks.
pub(super) fn task_width(activation_bytes: usize, n: usize) -> usize {
    if activation_bytes <= SPAN_BYTES {
        return CHANNELS;
    }
    (n / (2 * rayon::current_num_threads()) / CHANNELS * CHANNELS).clamp(CHANNELS, WIDE_TASK)
}

/// Steps of K a span covers at least, where the rows allow: each span's tiles of sums are
/// stored and added into the output, which fewer steps of products would not repay.
const MIN_SPAN_STEPS: usize = 16;

/// Row blocks a pass over K covers, of `blocks` with activations of `terms` terms: all
/// while their tiles leave spans of [`MIN_SPAN_STEPS`] within [`SPAN_BYTES`], else as
/// many pairs of blocks as do. Each pass reads the task's weight anew.
pub(super) fn pass_blocks(blocks: usize, terms: usize) -> usize {
    let fitting = SPAN_BYTES / (terms * TILE_BYTES * MIN_SPAN_STEPS);
    blocks.min((fitting / 2 * 2).max(2))
}

/// Steps of K a span covers for `blocks` row blocks of `terms` terms and `weight_tiles`
/// weight tiles: within [`SPAN_BYTES`] and [`WIDENED_BYTES`], and whole groups of
/// `group_steps` steps where one fits.
pub(super) fn span_steps(blocks: usize, terms: usize, weight_tiles: usize, group_steps: usize) -> usize {
    let activation_steps = SPAN_BYTES / (blocks * terms * TILE_BYTES).max(1);
    let steps = activation_steps.min(WIDENED_BYTES / (weight_tiles * TILE_BYTES).max(1)).max(1);
    if steps >= group_steps { steps / group_steps * group_steps } else { steps }
}
