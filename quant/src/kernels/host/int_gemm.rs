//! `x · dequant(W)` for K-packed integer weights (`crate::repr::PackedIntWeight`), read
//! in place from host memory.
//!
//! Each task owns a block of output columns. Within a group the weights are integers, so
//! the products are summed unscaled, `Σ x·q`, and scaled once per group: the zero point
//! (the midpoint 2^(b−1) for symmetric weights) enters as itself times the group's
//! activation sum. Each packed word is unpacked once for up to eight activation rows, and
//! the loops run along the word row so that the compiler vectorizes them across columns.
//! A field is not shifted down before its conversion: masked in place it is the float
//! `q·2^(b·f)` exactly, and the activation it multiplies is scaled by `2^(−b·f)` instead
//! (also exact), which leaves a mask, a conversion and a multiply-add per value.

use std::ops::Range;

use super::VectorIsa;

/// Output columns per task: one word row of the block is 512 bytes of 4-bit weights,
/// and the block's sums for a row tile stay in the L1 cache.
const COLS: usize = 128;

/// Word rows ahead of the current one whose block is requested from memory: each word
/// row of a block is its own short run (the next is a whole matrix row away), which the
/// CPU's stream prefetchers do not follow.
const PREFETCH_WORD_ROWS: usize = 8;

/// How each group is centred.
#[derive(Debug, Clone, Copy)]
pub enum Centring<'a> {
    /// Every zero point is the midpoint 2^(b−1).
    Midpoint,
    /// Unsigned zero points `[G, N]`.
    Integer(&'a [i32]),
    /// Offsets `[G, N]` added after scaling the midpoint-centred values.
    Float(&'a [f32]),
}

/// Which group each stored row is in.
#[derive(Debug, Clone, Copy)]
pub enum Grouping<'a> {
    /// Row `k` is in group `k / group_size`.
    Contiguous(usize),
    /// Row `k` is in group `index[k]`.
    Indexed(&'a [i32]),
}

/// A packed integer weight's buffers: `words` `[K·b/32, N]`, `scales` `[G, N]`.
#[derive(Debug, Clone, Copy)]
pub struct IntWeightSlices<'a> {
    pub bits: u32,
    pub k: usize,
    pub n: usize,
    pub words: &'a [i32],
    pub scales: &'a [f32],
    pub centring: Centring<'a>,
    pub grouping: Grouping<'a>,
}

/// Consecutive stored rows of one group.
#[derive(Debug, Clone)]
struct GroupRun {
    group: usize,
    rows: Range<usize>,
}

impl IntWeightSlices<'_> {
    /// The group of stored row `row`.
    #[inline(always)]
    fn group_of(&self, row: usize) -> usize {
        match self.grouping {
            Grouping::Contiguous(size) => row / size.max(1),
            Grouping::Indexed(index) => index[row] as usize,
        }
    }

    /// The stored rows, in runs of one group each.
    fn group_runs(&self) -> Vec<GroupRun> {
        match self.grouping {
            Grouping::Contiguous(size) => {
                let size = size.max(1);
                (0..self.k.div_ceil(size)).map(|group| GroupRun { group, rows: group * size..((group + 1) * size).min(self.k) }).collect()
            }
            Grouping::Indexed(index) => {
                let mut runs: Vec<GroupRun> = Vec::new();
                for (row, &group) in index.iter().enumerate().take(self.k) {
                    match runs.last_mut() {
                        Some(run) if run.group == group as usize => run.rows.end = row + 1,
                        _ => runs.push(GroupRun { group: group as usize, rows: row..row + 1 }),
                    }
                }
                runs
            }
        }
    }
}

/// `[m, K] · dequant(W)` → `[m, N]`, f32, row-major.
pub fn int_gemm(weight: &IntWeightSlices, x: &[f32], m: usize) -> Vec<f32> {
    let runs = weight.group_runs();
    super::by_column_blocks(m, weight.n, COLS, |cols, out| {
        let mut first = 0;
        while first < m {
            // The widest tile the remaining rows fill: 8, 4, 2 or 1.
            let tile_rows = [8, 4, 2, 1].into_iter().find(|&rows| rows <= m - first).unwrap_or(1);
            let tile = &mut out[first * cols.len()..(first + tile_rows) * cols.len()];
            let rows = &x[first * weight.k..];
            match (weight.bits, tile_rows) {
                (4, 1) => dispatch::<4, 1>(weight, &runs, rows, cols.clone(), tile),
                (4, 2) => dispatch::<4, 2>(weight, &runs, rows, cols.clone(), tile),
                (4, 4) => dispatch::<4, 4>(weight, &runs, rows, cols.clone(), tile),
                (4, _) => dispatch::<4, 8>(weight, &runs, rows, cols.clone(), tile),
                (_, 1) => dispatch::<8, 1>(weight, &runs, rows, cols.clone(), tile),
                (_, 2) => dispatch::<8, 2>(weight, &runs, rows, cols.clone(), tile),
                (_, 4) => dispatch::<8, 4>(weight, &runs, rows, cols.clone(), tile),
                (_, _) => dispatch::<8, 8>(weight, &runs, rows, cols.clone(), tile),
            }
            first += tile_rows;
        }
    })
}

/// Stored rows `rows` of the columns `cols`, dequantized into `out` `[rows, cols]`.
#[inline(always)]
pub fn dequantize_rows(weight: &IntWeightSlices, rows: Range<usize>, cols: Range<usize>, out: &mut [f32]) {
    let per_word = 32 / weight.bits as usize;
    for (row, row_out) in rows.zip(out.chunks_mut(cols.len().max(1))) {
        let words = &weight.words[(row / per_word) * weight.n + cols.start..][..cols.len()];
        let group = weight.group_of(row);
        match weight.bits {
            4 => dequantize_row::<4>(weight, words, row % per_word, group, cols.start, row_out),
            _ => dequantize_row::<8>(weight, words, row % per_word, group, cols.start, row_out),
        }
    }
}

/// Field `field_index` of each of `words` (the word row's columns from `first_col`),
/// dequantized with group `group`.
#[inline(always)]
fn dequantize_row<const BITS: u32>(weight: &IntWeightSlices, words: &[i32], field_index: usize, group: usize, first_col: usize, out: &mut [f32]) {
    let shift = field_index as u32 * BITS;
    let midpoint = 1i32 << (BITS - 1);
    let span = group * weight.n + first_col..group * weight.n + first_col + words.len();
    let scales = &weight.scales[span.clone()];
    let centred = words.iter().map(|&word| field::<BITS>(word, shift) - midpoint);
    match weight.centring {
        Centring::Midpoint => out.iter_mut().zip(centred).zip(scales).for_each(|((o, q), &s)| *o = q as f32 * s),
        Centring::Integer(zeros) => {
            let zeros = &zeros[span];
            out.iter_mut().zip(centred).zip(scales).zip(zeros).for_each(|(((o, q), &s), &z)| *o = (q + midpoint - z) as f32 * s);
        }
        Centring::Float(offsets) => {
            let offsets = &offsets[span];
            out.iter_mut().zip(centred).zip(scales).zip(offsets).for_each(|(((o, q), &s), &offset)| *o = q as f32 * s + offset);
        }
    }
}

/// [`row_tile`], compiled for the widest vector set the CPU has (AVX-512, or AVX2 with
/// FMA).
fn dispatch<const BITS: u32, const R: usize>(weight: &IntWeightSlices, runs: &[GroupRun], x: &[f32], cols: Range<usize>, out: &mut [f32]) {
    // SAFETY (both calls): `vector_isa` reports only sets the CPU was checked to have.
    match super::vector_isa() {
        #[cfg(target_arch = "x86_64")]
        VectorIsa::Amx | VectorIsa::Avx512 => unsafe { row_tile_avx512::<BITS, R>(weight, runs, x, cols, out) },
        #[cfg(target_arch = "x86_64")]
        VectorIsa::Avx2 => unsafe { row_tile_avx2::<BITS, R>(weight, runs, x, cols, out) },
        _ => row_tile::<BITS, R, false>(weight, runs, x, cols, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
fn row_tile_avx512<const BITS: u32, const R: usize>(weight: &IntWeightSlices, runs: &[GroupRun], x: &[f32], cols: Range<usize>, out: &mut [f32]) {
    row_tile::<BITS, R, true>(weight, runs, x, cols, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn row_tile_avx2<const BITS: u32, const R: usize>(weight: &IntWeightSlices, runs: &[GroupRun], x: &[f32], cols: Range<usize>, out: &mut [f32]) {
    row_tile::<BITS, R, true>(weight, runs, x, cols, out)
}

/// `R` activation rows (`x`, row stride K) times the columns `cols`, into `out` `[R, cols]`;
/// with `FMA`, the products accumulate through fused multiply-adds (only where the CPU has
/// them: elsewhere `mul_add` is a library call).
#[inline(always)]
fn row_tile<const BITS: u32, const R: usize, const FMA: bool>(weight: &IntWeightSlices, runs: &[GroupRun], x: &[f32], cols: Range<usize>, out: &mut [f32]) {
    let per_word = (32 / BITS) as usize;
    let (n, k, width) = (weight.n, weight.k, cols.len());
    let mut sums = [[0f32; COLS]; R];
    for run in runs {
        sums.iter_mut().for_each(|s| s[..width].fill(0.0));
        let mut x_sums = [0f32; R];
        let mut row = run.rows.start;
        while row < run.rows.end {
            let words = &weight.words[(row / per_word) * n + cols.start..][..width];
            if row % per_word == 0 && row + per_word <= run.rows.end {
                // A whole word: every field of it is in this group.
                let ahead = (row / per_word + PREFETCH_WORD_ROWS) * n + cols.start;
                if let Some(next) = weight.words.get(ahead..ahead + width) {
                    super::prefetch(next);
                }
                let mut xs = [[0f32; 8]; R];
                for r in 0..R {
                    let values = &x[r * k + row..][..per_word];
                    x_sums[r] += values.iter().sum::<f32>();
                    for (f, (scaled, &value)) in xs[r].iter_mut().zip(values).enumerate() {
                        *scaled = value * field_scale::<BITS>(f);
                    }
                }
                add_words::<BITS, R, FMA>(words, &xs, &mut sums, width);
                row += per_word;
            } else {
                // A group boundary inside the word (uneven act-order groups): one field.
                let shift = (row % per_word) as u32 * BITS;
                for r in 0..R {
                    let xv = x[r * k + row];
                    x_sums[r] += xv;
                    for (sum, &word) in sums[r][..width].iter_mut().zip(words) {
                        *sum += xv * field::<BITS>(word, shift) as f32;
                    }
                }
                row += 1;
            }
        }
        scale_group(weight, run.group, &cols, &sums, &x_sums, out);
    }
}

/// `sums[r][c] += Σ_f xs[r][f] · 2^(b·f) · (field f of words[c])` for a word row, `xs`
/// holding each activation times [`field_scale`].
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `f` is both the field's position and the activation's index
fn add_words<const BITS: u32, const R: usize, const FMA: bool>(words: &[i32], xs: &[[f32; 8]; R], sums: &mut [[f32; COLS]; R], width: usize) {
    let per_word = (32 / BITS) as usize;
    let top = per_word - 1;
    // Bounding the width by the arrays' length lets the compiler drop the index checks.
    let width = width.min(COLS);
    let words = &words[..width];
    // Few rows leave few independent sums per column: each row's fields alternate
    // between `chains` partial sums so consecutive multiply-adds do not wait on each other.
    let chains = if R <= 2 { 2 } else { 1 };
    for c in 0..width {
        let word = words[c];
        let mut acc = [[0f32; 2]; R];
        for f in 0..per_word {
            // Masked in place, a field below the top is a non-negative multiple of
            // 2^(b·f) with at most b significant bits: its conversion is exact. The top
            // field would carry the sign bit, so it is shifted down instead.
            let q = match f == top {
                true => ((word as u32) >> (f as u32 * BITS)) as i32 as f32,
                false => (word & (field_mask::<BITS>() << (f as u32 * BITS))) as f32,
            };
            let chain = f % chains;
            for r in 0..R {
                let acc = &mut acc[r][chain];
                *acc = if FMA { xs[r][f].mul_add(q, *acc) } else { *acc + xs[r][f] * q };
            }
        }
        for r in 0..R {
            sums[r][c] += if chains == 2 { acc[r][0] + acc[r][1] } else { acc[r][0] };
        }
    }
}

/// What the activation at field `f` of a word is scaled by for [`add_words`]: the
/// inverse of the field's place value, or 1 for the top field, which is shifted down.
/// (Exact above 2^−100 in magnitude; activations that small, far below any a normalized
/// layer produces, may round.)
#[inline(always)]
fn field_scale<const BITS: u32>(f: usize) -> f32 {
    let top = (32 / BITS) as usize - 1;
    match f < top {
        true => f32::from_bits((127 - BITS * f as u32) << 23),
        false => 1.0,
    }
}

#[inline(always)]
fn field_mask<const BITS: u32>() -> i32 {
    (1i32 << BITS) - 1
}

#[inline(always)]
fn field<const BITS: u32>(word: i32, shift: u32) -> i32 {
    (word >> shift) & field_mask::<BITS>()
}

/// `out[r] += scales[g] · (sums[r] − zeros[g] · Σx)` (the zero point is the midpoint
/// 2^(b−1) for symmetric weights), or with float offsets
/// `scales[g] · (sums[r] − 2^(b−1) · Σx) + offsets[g] · Σx`.
#[inline(always)]
fn scale_group<const R: usize>(weight: &IntWeightSlices, group: usize, cols: &Range<usize>, sums: &[[f32; COLS]; R], x_sums: &[f32; R], out: &mut [f32]) {
    let width = cols.len();
    let at = group * weight.n + cols.start;
    let scales = &weight.scales[at..at + width];
    let midpoint = (1i32 << (weight.bits - 1)) as f32;
    for r in 0..R {
        let (sums, x_sum, out) = (&sums[r][..width], x_sums[r], &mut out[r * width..(r + 1) * width]);
        match weight.centring {
            Centring::Midpoint => {
                for ((o, &s), &sum) in out.iter_mut().zip(scales).zip(sums) {
                    *o += s * (sum - midpoint * x_sum);
                }
            }
            Centring::Integer(zeros) => {
                for (((o, &s), &sum), &z) in out.iter_mut().zip(scales).zip(sums).zip(&zeros[at..at + width]) {
                    *o += s * (sum - z as f32 * x_sum);
                }
            }
            Centring::Float(offsets) => {
                for (((o, &s), &sum), &offset) in out.iter_mut().zip(scales).zip(sums).zip(&offsets[at..at + width]) {
                    *o += s * (sum - midpoint * x_sum) + offset * x_sum;
                }
            }
        }
    }
}
