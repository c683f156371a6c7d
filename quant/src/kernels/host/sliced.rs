//! The loop the register kernels ([`super::byte_rows`], [`super::int8_rows`], the 16-bit
//! float one of [`super::half_gemm`]) share: a task's output channels times its rows,
//! in blocks of rows whose running sums a kernel keeps in registers, and over a slice of
//! K at a time so that a block's activations stay in the core's L1 data cache while every
//! channel of the task passes (read anew from L2 for each channel, they would cost more
//! than the weights at a few rows).

use std::ops::{AddAssign, Range};

/// Bytes of a row block's activations a slice holds: a third of the 48 KiB L1 data cache
/// of recent x86 cores, beside the weights streaming through.
const SLICE_BYTES: usize = 16 * 1024;

/// One register kernel: a block of `R` rows times one channel over some columns.
pub(super) trait RowKernel {
    /// An activation.
    type Input;
    /// A weight's element, as stored.
    type Weight;
    /// A running sum: f32, or i32 where products must sum exactly across slices.
    type Sum: Copy + Default + AddAssign;
    /// The most rows a block holds.
    const ROW_BLOCK: usize;

    /// The weight `[N, K]`, row-major.
    fn weight(&self) -> (&[Self::Weight], usize);

    /// Columns a slice spans for `rows` rows: a multiple of what the kernel steps by
    /// (and of its weight's scale chunk, where sums are scaled per chunk).
    fn slice_columns(&self, rows: usize) -> usize;

    /// The `R` rows of `x` (`[R, K]`) times channel `n` over the columns `ks`, prefetching
    /// `ahead` (what is read next, as long as `ks`) alongside.
    ///
    /// # Safety
    /// Only from a function compiled for the kernel's vector set, on a CPU that has it.
    unsafe fn rows<const R: usize>(&self, n: usize, ks: Range<usize>, x: &[Self::Input], ahead: &[Self::Weight]) -> [Self::Sum; R];
}

/// `sums [m, channels] = x [m, K] · W[channels]ᵀ` by `kernel`.
///
/// # Safety
/// As [`RowKernel::rows`]; `#[inline(always)]` so that it is compiled into the caller's
/// vector set.
#[inline(always)]
pub(super) unsafe fn channels<K: RowKernel>(kernel: &K, x: &[K::Input], m: usize, channels: Range<usize>, sums: &mut [K::Sum]) {
    const { assert!(K::ROW_BLOCK >= 1 && K::ROW_BLOCK <= 8, "blocks of one to eight rows") };
    let (values, k) = kernel.weight();
    let width = channels.len();
    assert!(x.len() >= m * k && sums.len() >= m * width && values.len() >= channels.end * k);
    sums[..m * width].fill(K::Sum::default());
    for first in (0..m).step_by(K::ROW_BLOCK) {
        let rows = (m - first).min(K::ROW_BLOCK);
        let x = &x[first * k..(first + rows) * k];
        let slice = kernel.slice_columns(rows).max(1);
        for ks in (0..k).step_by(slice).map(|start| start..(start + slice).min(k)) {
            for (c, n) in channels.clone().enumerate() {
                // The first block's pass reads the weights from memory (the others find
                // them in the cache): it asks for what it reads next, the same columns
                // of the next channel or, after the last, the first channel's next ones.
                let ahead = match (first, n + 1 < channels.end) {
                    (0, true) => values.get((n + 1) * k + ks.start..(n + 1) * k + ks.end),
                    (0, false) => values.get(channels.start * k + ks.end..channels.start * k + (ks.end + slice).min(k)),
                    _ => None,
                };
                let ahead = ahead.unwrap_or(&[]);
                // SAFETY: passed on from the caller.
                let block: &[K::Sum] = unsafe {
                    match rows {
                        8 => &kernel.rows::<8>(n, ks.clone(), x, ahead),
                        7 => &kernel.rows::<7>(n, ks.clone(), x, ahead),
                        6 => &kernel.rows::<6>(n, ks.clone(), x, ahead),
                        5 => &kernel.rows::<5>(n, ks.clone(), x, ahead),
                        4 => &kernel.rows::<4>(n, ks.clone(), x, ahead),
                        3 => &kernel.rows::<3>(n, ks.clone(), x, ahead),
                        2 => &kernel.rows::<2>(n, ks.clone(), x, ahead),
                        _ => &kernel.rows::<1>(n, ks.clone(), x, ahead),
                    }
                };
                for (r, &sum) in block.iter().enumerate() {
                    sums[(first + r) * width + c] += sum;
                }
            }
        }
    }
}

/// Columns a slice spans when each row's activation takes `bytes` bytes: whole `unit`s.
pub(super) fn slice_columns(rows: usize, bytes: usize, unit: usize) -> usize {
    let unit = unit.max(1);
    (SLICE_BYTES / (bytes * rows.max(1))).max(unit) / unit * unit
}
