//! `x · dequant(W)` for batches of rows: each task owns a block of output channels and
//! walks K one tile at a time, decoding the tile's weights to f32 in a cache-sized buffer
//! and multiplying it with the `gemm` crate (Flex's own matmul), whose register-blocked
//! micro-kernels keep many rows and channels in flight where the fused kernels compute
//! one dot product, or one word row, at a time. Nothing as large as the weight is
//! written: each tile is decoded once per call and read by every row.

use std::ops::Range;
use std::sync::Mutex;

use super::byte_gemm::{ByteValues, ByteWeightSlices};
use super::int_gemm::{self, IntWeightSlices};

/// Output channels per task.
pub(super) const CHANNELS: usize = 64;

/// K columns per tile: 128 KiB of f32 per tile of 64 channels, in the L2 cache. A sum of
/// at most 1024 int8 products (each at most 2^14 in magnitude) stays within 2^24, so its
/// f32 sum is exact whatever the order (see [`Summation::Integers`]).
pub(super) const DEPTH: usize = 512;

/// A weight decodable one tile at a time.
pub(super) trait TileSource: Sync {
    fn k(&self) -> usize;
    fn n(&self) -> usize;
    /// Whether [`TileSource::decode`] writes `[cols, ks]` (each channel's run contiguous)
    /// rather than `[ks, cols]`: the `gemm` crate packs K-major tiles fastest, but a
    /// weight whose values need no arithmetic to decode is faster to copy run by run
    /// than to store down the tile's columns.
    const CHANNEL_MAJOR: bool = false;

    /// Writes the values of columns `ks` of channels `cols` into `tile` `[ks, cols]`
    /// (K-major; `[cols, ks]` if [`TileSource::CHANNEL_MAJOR`]). `ks` starts at a
    /// multiple of [`DEPTH`].
    fn decode(&self, ks: Range<usize>, cols: Range<usize>, tile: &mut [f32]);
}

/// How a tile's products are summed.
#[derive(Clone, Copy)]
pub(super) enum Summation<'a> {
    /// Accumulated in f32 straight into the output.
    Floats,
    /// The tiles hold integer codes and `x` integer activation codes: each tile's sum is
    /// exact in f32 (at most [`DEPTH`] products of magnitude ≤ 2^14) and is added to an
    /// i32 total, which is finally multiplied by the row's scale, then the channel's
    /// (`channel_scales`, one per output channel), in the reference's order.
    Integers { row_scales: &'a [f32], channel_scales: &'a [f32] },
}

/// One worker's buffers.
struct Scratch {
    tile: Vec<f32>,
    /// A tile's integer products, `[m, width]`.
    tile_sums: Vec<f32>,
    /// Running integer totals, `[m, width]`.
    totals: Vec<i32>,
}

impl Scratch {
    /// Buffers for tiles of `depth × width` and `m` rows.
    fn new(depth: usize, width: usize, m: usize, summation: Summation) -> Self {
        let rows = match summation {
            Summation::Floats => 0,
            Summation::Integers { .. } => m,
        };
        Self { tile: vec![0.0; depth * width], tile_sums: vec![0.0; rows * width], totals: vec![0; rows * width] }
    }
}

/// `[m, K] · dequant(W)` → `[m, N]`, f32, row-major.
pub(super) fn tiled_gemm(source: &impl TileSource, x: &[f32], m: usize, summation: Summation) -> Vec<f32> {
    let k = source.k();
    // One buffer set per worker, allocated here so that the workers allocate nothing (a
    // task outside the pool, or finding its worker's set taken, brings its own), sized to
    // the largest tile this weight has.
    let (tile_depth, tile_width) = (DEPTH.min(k), CHANNELS.min(source.n()));
    let new_scratch = || Scratch::new(tile_depth, tile_width, m, summation);
    let scratch: Vec<Mutex<Scratch>> = (0..rayon::current_num_threads()).map(|_| Mutex::new(new_scratch())).collect();
    super::by_column_blocks(m, source.n(), CHANNELS, |cols, out| {
        let mut guard = rayon::current_thread_index().and_then(|index| scratch.get(index)).and_then(|slot| slot.try_lock().ok());
        let mut own = None;
        let scratch = match guard.as_deref_mut() {
            Some(scratch) => scratch,
            None => own.insert(new_scratch()),
        };
        channel_block(source, x, m, k, cols, out, summation, scratch);
    })
}

/// Every row times the channels `cols`, into `out` `[m, cols]`.
#[allow(clippy::too_many_arguments)]
fn channel_block(source: &impl TileSource, x: &[f32], m: usize, k: usize, cols: Range<usize>, out: &mut [f32], summation: Summation, scratch: &mut Scratch) {
    let width = cols.len();
    let totals = &mut scratch.totals[..];
    if let Summation::Integers { .. } = summation {
        totals[..m * width].fill(0);
    }
    for start in (0..k).step_by(DEPTH) {
        let ks = start..(start + DEPTH).min(k);
        let tile = &mut scratch.tile[..ks.len() * width];
        decode(source, ks.clone(), cols.clone(), tile);
        let layout = TileLayout::of(source, ks.len(), width);
        match summation {
            Summation::Floats => multiply(m, k, x, ks, tile, layout, out, start > 0),
            Summation::Integers { .. } => {
                let sums = &mut scratch.tile_sums[..m * width];
                multiply(m, k, x, ks, tile, layout, sums, false);
                // Whole numbers below 2^24 in magnitude: the conversion is exact.
                totals.iter_mut().zip(sums.iter()).for_each(|(total, &sum)| *total += sum as i32);
            }
        }
    }
    if let Summation::Integers { row_scales, channel_scales } = summation {
        for (row, (out, totals)) in out.chunks_mut(width).zip(totals.chunks(width)).take(m).enumerate() {
            for ((o, &total), &channel_scale) in out.iter_mut().zip(totals).zip(&channel_scales[cols.clone()]) {
                *o = total as f32 * row_scales[row] * channel_scale;
            }
        }
    }
}

/// A decoded tile's shape and strides.
#[derive(Clone, Copy)]
struct TileLayout {
    width: usize,
    /// Between consecutive K columns, and between consecutive channels.
    k_stride: usize,
    channel_stride: usize,
}

impl TileLayout {
    fn of<S: TileSource>(_: &S, depth: usize, width: usize) -> Self {
        match S::CHANNEL_MAJOR {
            true => Self { width, k_stride: 1, channel_stride: depth },
            false => Self { width, k_stride: width, channel_stride: 1 },
        }
    }
}

/// `dst [m, width] (+)= x[:, ks] · tile`, the tile `[ks, width]` as laid out.
#[allow(clippy::too_many_arguments)]
fn multiply(m: usize, k: usize, x: &[f32], ks: Range<usize>, tile: &[f32], layout: TileLayout, dst: &mut [f32], accumulate: bool) {
    let (depth, width) = (ks.len(), layout.width);
    assert!(x.len() >= m * k && ks.end <= k && tile.len() >= depth * width && dst.len() == m * width);
    // SAFETY: the assertion bounds every index the call reads or writes: `x`'s rows
    // `[0, m)` at columns `ks` (row stride K), the tile's `depth × width` values (either
    // layout's largest index is depth · width − 1), and `dst`'s `m × width`.
    unsafe { super::gemm_f32(m, width, depth, dst, width, accumulate, &x[ks.start..], k, tile, layout.k_stride, layout.channel_stride) }
}

/// [`TileSource::decode`], compiled for AVX2 with FMA when the CPU has them.
fn decode(source: &impl TileSource, ks: Range<usize>, cols: Range<usize>, tile: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::avx2() {
        // SAFETY: the CPU was just checked to have both features the function is compiled for.
        return unsafe { decode_avx2(source, ks, cols, tile) };
    }
    source.decode(ks, cols, tile)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn decode_avx2(source: &impl TileSource, ks: Range<usize>, cols: Range<usize>, tile: &mut [f32]) {
    source.decode(ks, cols, tile)
}

/// Packed integer words, dequantized with their groups' scales and zero points.
impl TileSource for IntWeightSlices<'_> {
    fn k(&self) -> usize {
        self.k
    }

    fn n(&self) -> usize {
        self.n
    }

    #[inline(always)]
    fn decode(&self, ks: Range<usize>, cols: Range<usize>, tile: &mut [f32]) {
        int_gemm::dequantize_rows(self, ks, cols, tile)
    }
}

/// An 8-bit weight `[N, K]` decoded as `values`.
pub(super) struct ByteTiles<'a> {
    pub weight: &'a ByteWeightSlices<'a>,
    pub values: ByteValues,
}

impl TileSource for ByteTiles<'_> {
    fn k(&self) -> usize {
        self.weight.k
    }

    fn n(&self) -> usize {
        self.weight.n
    }

    #[inline(always)]
    fn decode(&self, ks: Range<usize>, cols: Range<usize>, tile: &mut [f32]) {
        super::byte_tiles::decode_tile(self.weight, self.values, ks, cols, tile)
    }
}

/// A float weight kept in f16 or bf16: each channel's run converts straight into place.
impl TileSource for super::half_gemm::HalfWeightSlices<'_> {
    const CHANNEL_MAJOR: bool = true;

    fn k(&self) -> usize {
        self.k
    }

    fn n(&self) -> usize {
        self.n
    }

    #[inline(always)]
    fn decode(&self, ks: Range<usize>, cols: Range<usize>, tile: &mut [f32]) {
        self.decode_tile(ks, cols, tile)
    }
}
