//! The loop the register kernels ([`super::byte_rows`], [`super::int8_rows`], the 16-bit
//! float one of [`super::half_gemm`]) share: a task's output channels times its rows,
//! in blocks of rows and of channels whose running sums a kernel keeps in registers, and
//! over a slice of K at a time so that a block's activations stay in the core's L1 data
//! cache while every channel of the task passes (read anew from L2 for each channel, they
//! would cost more than the weights at a few rows). A block of channels lets each
//! activation a kernel loads serve several channels' products: with one channel a step,
//! the loads of activations kept pace with the multiply-adds, and bounded them.

use std::ops::{AddAssign, Range};

/// Bytes of a row block's activations a slice holds: a third of the 48 KiB L1 data cache
/// of recent x86 cores, beside the weights streaming through.
const SLICE_BYTES: usize = 16 * 1024;

/// One register kernel: a block of `R` rows times a block of `C` channels over some
/// columns.
pub(super) trait RowKernel {
    /// An activation.
    type Input;
    /// A weight's element, as stored.
    type Weight;
    /// A running sum: f32, or i32 where products must sum exactly across slices.
    type Sum: Copy + Default + AddAssign;
    /// The most rows a block holds.
    const ROW_BLOCK: usize;
    /// The channels a block holds: 1, 2 or 4 (a task's channels past its last whole
    /// block go one at a time).
    const CHANNEL_BLOCK: usize;

    /// The weight `[N, K]`, row-major.
    fn weight(&self) -> (&[Self::Weight], usize);

    /// Columns a slice spans for `rows` rows: a multiple of what the kernel steps by
    /// (and of its weight's scale chunk, where sums are scaled per chunk).
    fn slice_columns(&self, rows: usize) -> usize;

    /// The `R` rows of `x` (`[R, K]`) times channels `n..n + C` over the columns `ks`,
    /// as `[R][C]` sums, prefetching `ahead[c]` (what is read next in channel `c`'s
    /// place, as long as `ks`, or empty) alongside.
    ///
    /// # Safety
    /// Only from a function compiled for the kernel's vector set, on a CPU that has it.
    unsafe fn block<const R: usize, const C: usize>(&self, n: usize, ks: Range<usize>, x: &[Self::Input], ahead: [&[Self::Weight]; C]) -> [[Self::Sum; C]; R];
}

/// `sums [m, channels] = x [m, K] · W[channels]ᵀ` by `kernel`.
///
/// # Safety
/// As [`RowKernel::block`]; `#[inline(always)]` so that it is compiled into the caller's
/// vector set.
#[inline(always)]
pub(super) unsafe fn channels<K: RowKernel>(kernel: &K, x: &[K::Input], m: usize, channels: Range<usize>, sums: &mut [K::Sum]) {
    const { assert!(K::ROW_BLOCK >= 1 && K::ROW_BLOCK <= 8, "blocks of one to eight rows") };
    const { assert!(matches!(K::CHANNEL_BLOCK, 1 | 2 | 4), "blocks of one, two or four channels") };
    let (values, k) = kernel.weight();
    let width = channels.len();
    assert!(x.len() >= m * k && sums.len() >= m * width && values.len() >= channels.end * k);
    sums[..m * width].fill(K::Sum::default());
    for first in (0..m).step_by(K::ROW_BLOCK) {
        let rows = (m - first).min(K::ROW_BLOCK);
        let pass = Pass { kernel, x: &x[first * k..(first + rows) * k], rows, reads_memory: first == 0, channels: channels.clone() };
        let slice = kernel.slice_columns(rows).max(1);
        // One row multiplies each weight once, and is bound by reading them: two
        // channels' streams at a time measured faster than four.
        let channel_block = if rows == 1 { K::CHANNEL_BLOCK.min(2) } else { K::CHANNEL_BLOCK };
        for ks in (0..k).step_by(slice).map(|start| start..(start + slice).min(k)) {
            let mut n = channels.start;
            while n < channels.end {
                let block = match channels.end - n >= channel_block {
                    true => channel_block,
                    false => 1,
                };
                let out = &mut sums[first * width + (n - channels.start)..];
                // SAFETY: passed on from the caller.
                unsafe {
                    match block {
                        4 => pass.block::<4>(n, ks.clone(), slice, out, width),
                        2 => pass.block::<2>(n, ks.clone(), slice, out, width),
                        _ => pass.block::<1>(n, ks.clone(), slice, out, width),
                    }
                }
                n += block;
            }
        }
    }
}

/// A block of rows' pass over the task's channels.
struct Pass<'a, K: RowKernel> {
    kernel: &'a K,
    /// The block's rows, `[rows, K]`.
    x: &'a [K::Input],
    rows: usize,
    /// Whether this pass is the first, which reads the weights from memory (the others
    /// find them in the cache).
    reads_memory: bool,
    channels: Range<usize>,
}

impl<K: RowKernel> Pass<'_, K> {
    /// Channels `n..n + C` over `ks`, added into `out` (row stride `width`, from the
    /// block's first row and channel `n`'s column).
    ///
    /// # Safety
    /// As [`RowKernel::block`].
    #[inline(always)]
    unsafe fn block<const C: usize>(&self, n: usize, ks: Range<usize>, slice: usize, out: &mut [K::Sum], width: usize) {
        let (kernel, x) = (self.kernel, self.x);
        let ahead: [&[K::Weight]; C] = std::array::from_fn(|c| self.ahead(n + C + c, &ks, slice));
        // SAFETY: passed on from the caller.
        unsafe {
            match self.rows {
                8 => add(&kernel.block::<8, C>(n, ks, x, ahead), out, width),
                7 => add(&kernel.block::<7, C>(n, ks, x, ahead), out, width),
                6 => add(&kernel.block::<6, C>(n, ks, x, ahead), out, width),
                5 => add(&kernel.block::<5, C>(n, ks, x, ahead), out, width),
                4 => add(&kernel.block::<4, C>(n, ks, x, ahead), out, width),
                3 => add(&kernel.block::<3, C>(n, ks, x, ahead), out, width),
                2 => add(&kernel.block::<2, C>(n, ks, x, ahead), out, width),
                _ => add(&kernel.block::<1, C>(n, ks, x, ahead), out, width),
            }
        }
    }

    /// What the first pass prefetches in the place of channel `target` (past the task's
    /// channels, it wraps onto the first ones' next slice); nothing in the other passes.
    #[inline(always)]
    fn ahead(&self, target: usize, ks: &Range<usize>, slice: usize) -> &[K::Weight] {
        let (values, k) = self.kernel.weight();
        if !self.reads_memory {
            return &[];
        }
        let (channel, columns) = match target < self.channels.end {
            true => (target, ks.clone()),
            false => (self.channels.start + (target - self.channels.end), ks.end..(ks.end + slice).min(k)),
        };
        match channel < self.channels.end {
            true => values.get(channel * k + columns.start..channel * k + columns.end).unwrap_or(&[]),
            false => &[],
        }
    }
}

/// `out[r · width + c] += block[r][c]`.
#[inline(always)]
fn add<S: Copy + AddAssign, const R: usize, const C: usize>(block: &[[S; C]; R], out: &mut [S], width: usize) {
    for (r, sums) in block.iter().enumerate() {
        for (o, &sum) in out[r * width..r * width + C].iter_mut().zip(sums) {
            *o += sum;
        }
    }
}

/// Columns a slice spans when each row's activation takes `bytes` bytes: whole `unit`s.
pub(super) fn slice_columns(rows: usize, bytes: usize, unit: usize) -> usize {
    let unit = unit.max(1);
    (SLICE_BYTES / (bytes * rows.max(1))).max(unit) / unit * unit
}
