//! Float weights kept in bf16 (most checkpoints' own dtype) or f16 times float
//! activations, on the tile unit's bf16 products ([`left_weights`]). bf16 weights need
//! no widening: sixteen channels of a `[N, K]` weight, 32 values of each, are a
//! left-operand tile as they lie, loaded in place with the channel length as the line
//! stride. f16 weights are split a span at a time into two bf16 terms. With the
//! activations' exact terms every product is the f32 reference's, and only the order of
//! the f32 sums differs.

use std::arch::x86_64::*;
use std::ops::Range;

use super::left_weights::{self, LeftWeights, COLUMNS};
use super::LINES;
use crate::kernels::host::half_gemm::{HalfFormat, HalfWeightSlices};

/// Rows from which a product of a weight of `format` runs here rather than in the
/// register kernel (BENCHMARKS.md, "Float weights on AMX", at 4096²). bf16 weights are
/// read as stored, so the tiles pay no widening: at four rows both wait on memory alike
/// (1.3–1.4 ms), at eight the tiles take 1.4 ms against 2.4–2.6. f16 weights are split
/// into two bf16 terms a task at a time (1 ms a call) and take twice the products: 3.4 ms
/// against 2.7 at eight rows, 3.1–3.6 against 5.3 at sixteen.
pub(crate) fn min_rows(format: HalfFormat) -> usize {
    match format {
        HalfFormat::BF16 => 5,
        HalfFormat::F16 => 12,
    }
}

/// `[m, K] · Wᵀ` → `[m, N]`, f32, row-major, for activations `x` whose values `terms`
/// bf16 values carry exactly ([`left_weights::gemm`]).
///
/// # Safety
/// Only where [`super::available`] reported the tile unit usable, for a weight whose K
/// [`left_weights::takes`] accepts.
pub(crate) unsafe fn gemm(weight: &HalfWeightSlices, x: &[f32], m: usize, terms: usize) -> Vec<f32> {
    assert!(weight.values.len() >= weight.n * weight.k);
    // SAFETY: passed on from the caller.
    unsafe { left_weights::gemm(weight, x, m, terms) }
}

/// bf16 weights' tiles are read in place, but for the last of a task whose channels are
/// not whole tiles: its lines over the span are staged, `[16, span columns]`, zeros past
/// N (a tile load reads sixteen lines). f16 weights are staged over each span as two
/// bf16 terms, `[terms, tiles, 16, span columns]`.
impl LeftWeights for HalfWeightSlices<'_> {
    fn shape(&self) -> [usize; 2] {
        [self.n, self.k]
    }

    /// An f16 value's eleven significant bits take two.
    fn terms(&self) -> usize {
        match self.format {
            HalfFormat::BF16 => 1,
            HalfFormat::F16 => 2,
        }
    }

    fn chunk_steps(&self) -> usize {
        usize::MAX
    }

    fn scale(&self, _channel: usize, _chunk: usize) -> f32 {
        1.0
    }

    unsafe fn stage(&self, channels: &Range<usize>, span: &Range<usize>, staged: &mut Vec<u16>) {
        let (k, span_columns, tiles) = (self.k, span.len() * COLUMNS, channels.len().div_ceil(LINES));
        match self.format {
            HalfFormat::F16 => {
                staged.resize(2 * tiles * LINES * span_columns, 0);
                for tile in 0..tiles {
                    let first = channels.start + tile * LINES;
                    // SAFETY: passed on from the caller (the tile unit's CPUs have F16C).
                    unsafe { split_f16(self, first..(first + LINES).min(channels.end), span.clone(), tile, tiles, staged) };
                }
            }
            HalfFormat::BF16 => {
                let partial = channels.len() % LINES;
                if partial == 0 {
                    return;
                }
                staged.clear();
                staged.resize(LINES * span_columns, 0);
                let columns = span.start * COLUMNS..span.end * COLUMNS;
                for (line, channel) in staged.chunks_exact_mut(span_columns).zip(channels.end - partial..channels.end) {
                    line.copy_from_slice(&self.values[channel * k + columns.start..channel * k + columns.end]);
                }
            }
        }
    }

    fn tile(&self, staged: &[u16], channels: &Range<usize>, span: &Range<usize>, term: usize, tile: usize, step: usize) -> (*const u8, usize) {
        let (k, span_columns, tiles) = (self.k, span.len() * COLUMNS, channels.len().div_ceil(LINES));
        let first = channels.start + tile * LINES;
        match self.format {
            HalfFormat::F16 => {
                let at = (term * tiles + tile) * LINES * span_columns + (step - span.start) * COLUMNS;
                (staged[at..].as_ptr().cast(), 2 * span_columns)
            }
            HalfFormat::BF16 if first + LINES <= channels.end => (self.values[first * k + step * COLUMNS..].as_ptr().cast(), 2 * k),
            HalfFormat::BF16 => (staged[(step - span.start) * COLUMNS..].as_ptr().cast(), 2 * span_columns),
        }
    }
}

/// f16 channels `channels` (at most sixteen, tile `tile` of `tiles`) over steps `span`
/// as two bf16 terms into `staged` (`[2, tiles, 16, span columns]`): the value cut to
/// bf16's eight significant bits, and the three that leaves (exact in bf16, as f16's
/// smallest values are normal there). Lines past the channels are zeros.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,f16c")]
fn split_f16(weight: &HalfWeightSlices, channels: Range<usize>, span: Range<usize>, tile: usize, tiles: usize, staged: &mut [u16]) {
    let (k, span_columns) = (weight.k, span.len() * COLUMNS);
    let columns = span.start * COLUMNS..span.end * COLUMNS;
    assert!(channels.len() <= LINES && channels.end <= weight.n && columns.end <= k && staged.len() >= 2 * tiles * LINES * span_columns);
    let upper_half = _mm512_set1_epi32(0xffff_0000_u32 as i32);
    // The upper halves of two vectors' sixteen f32, in order: the odd u16 of each.
    let odd_halves = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for line in 0..LINES {
        let term_line = |term: usize| ((term * tiles + tile) * LINES + line) * span_columns;
        let Some(channel) = channels.clone().nth(line) else {
            for term in 0..2 {
                staged[term_line(term)..][..span_columns].fill(0);
            }
            continue;
        };
        let values = &weight.values[channel * k + columns.start..channel * k + columns.end];
        for (step, values) in values.chunks_exact(COLUMNS).enumerate() {
            // SAFETY: thirty-two f16 read from `values`; thirty-two u16 written to each
            // term's line, inside `staged` (checked above).
            unsafe {
                let (low, high) = (_mm256_loadu_si256(values.as_ptr().cast()), _mm256_loadu_si256(values.as_ptr().add(16).cast()));
                let (low, high) = (_mm512_cvtph_ps(low), _mm512_cvtph_ps(high));
                let cut = |value: __m512| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(value), upper_half));
                let (low_cut, high_cut) = (cut(low), cut(high));
                let (low_rest, high_rest) = (_mm512_sub_ps(low, low_cut), _mm512_sub_ps(high, high_cut));
                let pack = |low: __m512, high: __m512| _mm512_permutex2var_epi16(_mm512_castps_si512(low), odd_halves, _mm512_castps_si512(high));
                _mm512_storeu_si512(staged[term_line(0) + COLUMNS * step..][..COLUMNS].as_mut_ptr().cast(), pack(low_cut, high_cut));
                _mm512_storeu_si512(staged[term_line(1) + COLUMNS * step..][..COLUMNS].as_mut_ptr().cast(), pack(low_rest, high_rest));
            }
        }
    }
}
