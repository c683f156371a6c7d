//! Products on AMX, the matrix unit of x86 server cores since Sapphire Rapids: eight
//! tile registers of sixteen 64-byte lines, and instructions that multiply a 16-line
//! tile by another into a tile of 16 × 16 sums: int8 (64 products to a sum, in i32,
//! [`int8`]) or bf16 pairs (32, in f32: [`byte_weights`] for e4m3 and int8 weights,
//! exact in bf16, times e4m3 activation codes or float activations, each split into bf16
//! terms that add up to it exactly ([`terms`]); [`packed`] for Int4 / Int8 weights with
//! the same terms; [`half`] for float weights kept in bf16 or f16; float activations go
//! through [`left_weights`]' loop but for packed weights). One such
//! instruction makes 16 384 int8 products where AVX-512 VNNI's dot product makes 64.
//!
//! For 8-bit and bf16 weights the left operand is a weight tile, sixteen channels' lines ([`packed`]
//! swaps the roles, as its K-packed words lie in the right operand's order). The right operand must
//! hold each of its sixteen columns' values four bytes at a time along a line, so the
//! activations, made anew on every call, are written in that order ([`RightTiles`]). A
//! tile of sums is then sixteen channels by sixteen rows, turned back into the output's
//! `[rows, channels]` as it is scaled.
//!
//! A task of quantized activations ([`run`]) covers two weight tiles (32 channels) and
//! walks the rows two activation tiles at a time, four tiles of sums resident while a
//! scale chunk of K passes: each tile loaded serves two products. Float activations'
//! terms take several times the bytes, so [`left_weights`] and [`packed`] also walk K in
//! spans and the rows in passes that their cache keeps. The instructions are not in Rust's
//! stable intrinsics, hence the inline assembly; [`emulated`] computes them in software
//! where the CPU lacks the unit, so the kernels are checked on any AVX-512 CPU.

pub(super) mod byte_weights;
pub(super) mod emulated;
pub(super) mod half;
pub(super) mod int8;
pub(super) mod left_weights;
pub(super) mod packed;
pub(super) mod terms;

use std::arch::asm;
use std::arch::x86_64::*;
use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::byte_gemm::ByteWeightSlices;

/// Bytes of a tile line, and lines of a tile: palette 1's largest tile.
const LINE: usize = 64;
const LINES: usize = 16;
const TILE_BYTES: usize = LINE * LINES;

/// Output channels a task covers: two weight tiles.
pub(super) const CHANNELS: usize = 2 * LINES;

/// Whether the CPU has AMX's tiles with int8 and bf16 products and the OS lets this
/// process use them (Linux enables the tiles' 8 KiB of register state per process, on
/// request).
/// Or, once [`emulated::enable`]d, whether its instructions run in software instead.
pub(super) fn available() -> bool {
    on_the_cpu() || emulated::enabled()
}

/// Whether the CPU's own tile unit is usable.
pub(super) fn on_the_cpu() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| cpu_has_amx() && request_tile_state())
}

/// CPUID leaf 7's AMX-BF16 (EDX bit 22), AMX-TILE (24) and AMX-INT8 (25).
fn cpu_has_amx() -> bool {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is read only where leaf 0 lists it.
    let edx = unsafe {
        if __cpuid(0).eax < 7 {
            return false;
        }
        __cpuid_count(7, 0).edx
    };
    [22, 24, 25].iter().all(|bit| edx & (1 << bit) != 0)
}

#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    /// `arch_prctl`'s request for an extended state component, and the tile data's number.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: the request only widens the register state the kernel saves for this process.
    let granted = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } == 0;
    if !granted {
        tracing::debug!("the kernel refused AMX's tile state; products use AVX-512");
    }
    granted
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// Activations `[m, K]` as right-operand tiles: each row encoded into bytes, and for
/// each block of sixteen rows and each 64 bytes of a row (a step), one tile whose line
/// `q` holds bytes `4q..4q + 4` of each of the sixteen rows in turn. Rows past `m` and
/// bytes past a row's end are zeros.
pub(super) struct RightTiles {
    bytes: Vec<u8>,
    steps: usize,
}

impl RightTiles {
    /// `m` rows of `row_bytes` bytes, row `r` written by `encode(r, bytes)`.
    ///
    /// # Safety
    /// Only where [`available`] reported the tile unit usable (its CPUs have AVX-512).
    pub(super) unsafe fn new(m: usize, row_bytes: usize, encode: impl Fn(usize, &mut [u8]) + Sync) -> Self {
        let steps = row_bytes.div_ceil(LINE);
        let mut bytes = vec![0u8; m.div_ceil(LINES) * steps * TILE_BYTES];
        bytes.par_chunks_mut((steps * TILE_BYTES).max(1)).enumerate().for_each(|(block, tiles)| {
            let mut row = vec![0u8; row_bytes];
            for lane in 0..LINES.min(m - block * LINES) {
                encode(block * LINES + lane, &mut row);
                // SAFETY: passed on from the caller.
                unsafe { place_row(&row, lane, tiles) };
            }
        });
        Self { bytes, steps }
    }

    /// The tile of row block `block` at step `step`.
    fn tile(&self, block: usize, step: usize) -> *const u8 {
        self.bytes[(block * self.steps + step) * TILE_BYTES..][..TILE_BYTES].as_ptr()
    }
}

/// Row `lane`'s bytes into its block's tiles `tiles` (`[steps, 16, 64]`): byte `b` to
/// step `b / 64`, line `b % 64 / 4`, byte `4 · lane + b % 4` of the line, sixty-four at
/// a time scattered as sixteen groups of four, one to a line.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
fn place_row(row: &[u8], lane: usize, tiles: &mut [u8]) {
    assert!(lane < LINES && tiles.len() >= row.len().div_ceil(LINE) * TILE_BYTES);
    let lines = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(LINE as i32)), _mm512_set1_epi32(4 * lane as i32));
    let whole = row.len() / LINE;
    for (step, bytes) in row.chunks_exact(LINE).enumerate() {
        // SAFETY: `bytes` holds 64 bytes, the load's width; the scatter writes four bytes
        // at 64 · q + 4 · lane < 1024 past the step's tile, which lies in `tiles`.
        unsafe { _mm512_i32scatter_epi32::<1>(tiles.as_mut_ptr().add(step * TILE_BYTES).cast(), lines, _mm512_loadu_si512(bytes.as_ptr().cast())) };
    }
    for (index, &byte) in row.iter().enumerate().skip(whole * LINE) {
        tiles[index / LINE * TILE_BYTES + index % LINE / 4 * LINE + 4 * lane + index % 4] = byte;
    }
}

/// A tile product's instruction, and the sums it leaves (four bytes each).
pub(super) trait TileProduct {
    type Sum: Copy + Default;
    /// Tile `SUMS` += tile `LEFT` · tile `RIGHT`.
    ///
    /// # Safety
    /// The tile configuration is loaded on this thread.
    unsafe fn product<const SUMS: u8, const LEFT: u8, const RIGHT: u8>();
    /// A sum as f32.
    fn value(sum: Self::Sum) -> f32;
}

/// bf16 pairs multiplied into f32 sums.
pub(super) struct Bf16Tiles;

impl TileProduct for Bf16Tiles {
    type Sum = f32;

    #[inline(always)]
    unsafe fn product<const SUMS: u8, const LEFT: u8, const RIGHT: u8>() {
        unsafe { dpbf16ps::<SUMS, LEFT, RIGHT>() };
    }

    fn value(sum: f32) -> f32 {
        sum
    }
}

/// One task of a product: its weight tiles, and where their sums go.
pub(super) trait Task<'a> {
    type Product: TileProduct;
    /// Weight tile `tile` (0 or 1) at step `step`: a pointer and line stride from which
    /// sixteen lines of 64 bytes may be read.
    fn weight_tile(&mut self, tile: usize, step: usize) -> (*const u8, usize);
    fn output(&mut self) -> &mut ScaledOutput<'a>;
}

/// A task's output `out [m, channels]`: the sums of each chunk of K, times the row's
/// scale and the channel's (in that order, the reference's), added up.
pub(super) struct ScaledOutput<'a> {
    pub(super) weight: &'a ByteWeightSlices<'a>,
    pub(super) activation_scales: ActivationScales<'a>,
    pub(super) m: usize,
    pub(super) channels: Range<usize>,
    pub(super) out: &'a mut [f32],
}

/// Activation scales `[m, per_row]`, each row's `i`-th covering columns
/// `i · columns..(i + 1) · columns`: the chunks of K whose sums a product scales apart
/// (one chunk for per-row scales, or the weight's scale blocks).
#[derive(Clone, Copy)]
pub(crate) struct ActivationScales<'a> {
    pub(crate) values: &'a [f32],
    pub(crate) per_row: usize,
    pub(crate) columns: usize,
}

impl ScaledOutput<'_> {
    /// Checks the shapes the tile loops rely on: at most [`CHANNELS`] channels of the
    /// weight, `m` rows of scales and output.
    fn check(&self) {
        let (weight, width, scales) = (self.weight, self.channels.len(), self.activation_scales);
        assert!(width <= CHANNELS && self.channels.end <= weight.n && weight.bytes.len() >= weight.n * weight.k);
        assert!(self.out.len() >= self.m * width && scales.per_row >= 1 && scales.values.len() >= self.m * scales.per_row);
    }

    fn weight_tiles(&self) -> usize {
        self.channels.len().div_ceil(LINES)
    }

    /// The sums of weight tile `tile` by row block `block` over K chunk `chunk`,
    /// `sums[channel · 16 + row]`, scaled into `partial` (written for the first chunk,
    /// added for the others, in the sums' order so the compiler vectorizes it), and
    /// from there into `out` after the `last`.
    #[allow(clippy::too_many_arguments)]
    fn write<S: Copy>(&mut self, partial: &mut [f32; LINES * LINES], tile: usize, block: usize, chunk: usize, last: bool, sums: &[S; LINES * LINES], value: impl Fn(S) -> f32) {
        let (width, offset, scales) = (self.channels.len(), tile * LINES, self.activation_scales);
        let channels = self.channels.start + offset..(self.channels.start + offset + LINES).min(self.channels.end);
        let rows = block * LINES..((block + 1) * LINES).min(self.m);
        let group = chunk.min(scales.per_row - 1);
        let mut row_scales = [0f32; LINES];
        for (scale, row) in row_scales.iter_mut().zip(rows.clone()) {
            *scale = scales.values[row * scales.per_row + group];
        }
        for (c, n) in channels.clone().enumerate() {
            let channel_scale = self.weight.scale(n, chunk * scales.columns);
            let (sums, partial) = (&sums[c * LINES..(c + 1) * LINES], &mut partial[c * LINES..(c + 1) * LINES]);
            for ((partial, &sum), &row_scale) in partial.iter_mut().zip(sums).zip(&row_scales) {
                let product = value(sum) * row_scale * channel_scale;
                *partial = if chunk == 0 { product } else { *partial + product };
            }
        }
        if last {
            for c in 0..channels.len() {
                for (lane, row) in rows.clone().enumerate() {
                    self.out[row * width + offset + c] = partial[c * LINES + lane];
                }
            }
        }
    }
}

/// A tile of sums, aligned to its lines.
#[repr(C, align(64))]
struct Sums<S>([S; LINES * LINES]);

/// Every row block of `right` times `task`'s weight tiles, each chunk of K (the
/// activation scales' `columns`, `step_columns` to a step) into its own tiles of sums,
/// written to the task's output.
///
/// # Safety
/// Only where [`available`] reported the tile unit usable; `right` must hold the
/// output's rows, each as long as the weight tiles' steps.
pub(super) unsafe fn run<'a, T: Task<'a>>(task: &mut T, right: &RightTiles, step_columns: usize) {
    const { assert!(size_of::<<T::Product as TileProduct>::Sum>() == 4, "a tile of sums is 16 lines of 16 four-byte sums") };
    task.output().check();
    let blocks = task.output().m.div_ceil(LINES);
    assert!(right.bytes.len() >= blocks * right.steps * TILE_BYTES);
    let (columns, k) = (task.output().activation_scales.columns, task.output().weight.k);
    assert!(columns.is_multiple_of(step_columns) || columns >= k, "chunks of whole steps");
    let chunk_steps = match columns >= k {
        true => right.steps.max(1),
        false => (columns / step_columns).max(1),
    };
    let two_tiles = task.output().weight_tiles() == 2;
    let value = <T::Product as TileProduct>::value;
    let mut sums = Sums([<T::Product as TileProduct>::Sum::default(); LINES * LINES]);
    let mut partials = [[0f32; LINES * LINES]; 4];
    let chunks = right.steps.div_ceil(chunk_steps);
    // SAFETY: the caller checked the CPU has the tile unit and the process may use it.
    unsafe { load_config(&TileConfig::full()) };
    for first in (0..blocks).step_by(2) {
        let pair = blocks - first >= 2;
        for (chunk, start) in (0..right.steps).step_by(chunk_steps).enumerate() {
            // SAFETY (every tile instruction): the configuration is loaded; each load
            // reads sixteen lines of 64 bytes from a pointer and stride that
            // `weight_tile` or `tile` vouches for, and each store writes the 1 KiB of
            // `sums`.
            unsafe {
                zero::<0>();
                zero::<1>();
                zero::<2>();
                zero::<3>();
                for step in start..(start + chunk_steps).min(right.steps) {
                    let (w0, stride) = task.weight_tile(0, step);
                    load::<4>(w0, stride);
                    load::<6>(right.tile(first, step), LINE);
                    T::Product::product::<0, 4, 6>();
                    if pair {
                        load::<7>(right.tile(first + 1, step), LINE);
                        T::Product::product::<1, 4, 7>();
                    }
                    if two_tiles {
                        let (w1, stride) = task.weight_tile(1, step);
                        load::<5>(w1, stride);
                        T::Product::product::<2, 5, 6>();
                        if pair {
                            T::Product::product::<3, 5, 7>();
                        }
                    }
                }
                let last = chunk + 1 == chunks;
                let [partial_0, partial_1, partial_2, partial_3] = &mut partials;
                store::<0>(&mut sums);
                task.output().write(partial_0, 0, first, chunk, last, &sums.0, value);
                if pair {
                    store::<1>(&mut sums);
                    task.output().write(partial_1, 0, first + 1, chunk, last, &sums.0, value);
                }
                if two_tiles {
                    store::<2>(&mut sums);
                    task.output().write(partial_2, 1, first, chunk, last, &sums.0, value);
                    if pair {
                        store::<3>(&mut sums);
                        task.output().write(partial_3, 1, first + 1, chunk, last, &sums.0, value);
                    }
                }
            }
        }
    }
    // SAFETY: as the configuration's load.
    unsafe { release() };
}

/// Palette 1 with all eight tiles 16 lines of 64 bytes (the layout `ldtilecfg` reads).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn full() -> Self {
        let mut bytes = [0u8; 64];
        bytes[0] = 1;
        for tile in 0..8 {
            bytes[16 + 2 * tile..18 + 2 * tile].copy_from_slice(&(LINE as u16).to_le_bytes());
            bytes[48 + tile] = LINES as u8;
        }
        Self(bytes)
    }
}

/// A tile's worth of bytes, aligned to its lines.
#[repr(C, align(64))]
pub(super) struct TileBuffer(pub(super) [u8; TILE_BYTES]);

/// # Safety
/// `config` must be a valid palette; the tile state stays until [`release`].
#[inline(always)]
unsafe fn load_config(config: &TileConfig) {
    if !emulated::enabled() {
        unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly, preserves_flags)) };
    }
}

#[inline(always)]
unsafe fn release() {
    if !emulated::enabled() {
        unsafe { asm!("tilerelease", options(nostack, nomem, preserves_flags)) };
    }
}

#[inline(always)]
unsafe fn zero<const TILE: u8>() {
    match emulated::enabled() {
        true => emulated::zero(TILE),
        false => unsafe { asm!("tilezero tmm{t}", t = const TILE, options(nostack, nomem, preserves_flags)) },
    }
}

/// Tile `TILE` ← sixteen lines of 64 bytes, `stride` bytes apart from `base`.
#[inline(always)]
unsafe fn load<const TILE: u8>(base: *const u8, stride: usize) {
    match emulated::enabled() {
        true => unsafe { emulated::load(TILE, base, stride) },
        false => unsafe { asm!("tileloadd tmm{t}, [{base} + {stride}*1]", t = const TILE, base = in(reg) base, stride = in(reg) stride, options(nostack, readonly, preserves_flags)) },
    }
}

#[inline(always)]
unsafe fn store<const TILE: u8>(sums: &mut Sums<impl Copy>) {
    assert!(size_of_val(&sums.0) == TILE_BYTES, "a tile of sums is 16 lines of 16 four-byte sums");
    match emulated::enabled() {
        // SAFETY: `sums` holds 1 KiB, checked above.
        true => emulated::store(TILE, unsafe { &mut *sums.0.as_mut_ptr().cast::<[u8; TILE_BYTES]>() }),
        false => unsafe { asm!("tilestored [{base} + {stride}*1], tmm{t}", t = const TILE, base = in(reg) sums.0.as_mut_ptr(), stride = in(reg) LINE, options(nostack, preserves_flags)) },
    }
}

/// Tile `SUMS` += tile `LEFT` · tile `RIGHT`, int8 by int8 into i32.
#[inline(always)]
unsafe fn dpbssd<const SUMS: u8, const LEFT: u8, const RIGHT: u8>() {
    match emulated::enabled() {
        true => emulated::dpbssd(SUMS, LEFT, RIGHT),
        false => unsafe { asm!("tdpbssd tmm{s}, tmm{l}, tmm{r}", s = const SUMS, l = const LEFT, r = const RIGHT, options(nostack, nomem, preserves_flags)) },
    }
}

/// Tile `SUMS` += tile `LEFT` · tile `RIGHT`, bf16 pairs into f32.
#[inline(always)]
unsafe fn dpbf16ps<const SUMS: u8, const LEFT: u8, const RIGHT: u8>() {
    match emulated::enabled() {
        true => emulated::dpbf16ps(SUMS, LEFT, RIGHT),
        false => unsafe { asm!("tdpbf16ps tmm{s}, tmm{l}, tmm{r}", s = const SUMS, l = const LEFT, r = const RIGHT, options(nostack, nomem, preserves_flags)) },
    }
}
