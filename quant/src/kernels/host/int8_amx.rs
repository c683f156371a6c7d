//! W8A8 products on AMX, the matrix unit of x86 server cores since Sapphire Rapids:
//! eight tile registers of sixteen 64-byte lines, and one instruction that multiplies a
//! 16 × 64 int8 tile by a 64 × 16 one into 16 × 16 i32 sums (16 384 products, where
//! AVX-512 VNNI's dot product makes 64), each product summed exactly as the reference's.
//!
//! The weight `[N, K]` is the left operand as it lies in memory: sixteen channels' lines
//! of 64 columns make a tile. The right operand must hold each of its sixteen columns'
//! values four at a time along a line, so the activation codes, made anew on every call,
//! are written in that order ([`TiledCodes`]). A tile of sums is then sixteen channels
//! by sixteen rows, turned back into the output's `[rows, channels]` as it is scaled.
//!
//! A task covers two weight tiles (32 channels) and walks the rows two code tiles at a
//! time, four tiles of sums resident while K passes: each weight tile loaded serves two
//! products, each code tile two. The instructions are not yet in Rust's stable
//! intrinsics, hence the inline assembly.

use std::arch::asm;
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

/// Rows from which a product runs here rather than in AVX-512 VNNI's register kernel.
/// Below, both stream the weight from memory and VNNI's channel-by-channel reads keep
/// up better than tile loads that step a channel at a time (BENCHMARKS.md, "W8A8 on
/// AMX": at 4096², 0.41 ms against 0.56 at one row, even at four, 1.05 against 0.64 at
/// eight).
pub(super) const MIN_ROWS: usize = 8;

/// Whether the CPU has AMX's tiles and int8 products and the OS lets this process use
/// them (Linux enables the tiles' 8 KiB of register state per process, on request).
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| cpu_has_amx_int8() && request_tile_state())
}

/// CPUID leaf 7's AMX-TILE (EDX bit 24) and AMX-INT8 (bit 25).
fn cpu_has_amx_int8() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is read only where leaf 0 lists it.
    let edx = unsafe {
        if __cpuid(0).eax < 7 {
            return false;
        }
        __cpuid_count(7, 0).edx
    };
    edx & (1 << 24) != 0 && edx & (1 << 25) != 0
}

#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    /// `arch_prctl`'s request for an extended state component, and the tile data's number.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: the request only widens the register state the kernel saves for this process.
    let granted = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } == 0;
    if !granted {
        tracing::debug!("the kernel refused AMX's tile state; W8A8 products use AVX-512 VNNI");
    }
    granted
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// int8 activation codes `[m, K]` as right-operand tiles: for each block of sixteen rows
/// and each step of 64 columns, one tile whose line `q` holds columns `4q..4q + 4` of
/// each of the sixteen rows in turn. Rows past `m` and columns past `K` are zeros.
pub(super) struct TiledCodes {
    bytes: Vec<i8>,
    steps: usize,
}

impl TiledCodes {
    /// `codes` holds integers in −128..=127, as f32, `[m, k]`.
    ///
    /// # Safety
    /// Only where [`available`] reported the tile unit usable (its CPUs have AVX-512).
    pub(super) unsafe fn new(codes: &[f32], m: usize, k: usize) -> Self {
        let steps = k.div_ceil(LINE);
        let mut bytes = vec![0i8; m.div_ceil(LINES) * steps * TILE_BYTES];
        let block_bytes = (steps * TILE_BYTES).max(1);
        bytes.par_chunks_mut(block_bytes).zip(codes.par_chunks((LINES * k).max(1))).for_each(|(tiles, rows)| {
            for (lane, row) in rows.chunks(k.max(1)).enumerate() {
                // SAFETY: passed on from the caller.
                unsafe { place_row(row, lane, tiles) };
            }
        });
        Self { bytes, steps }
    }

    /// The tile of row block `block` at step `step`.
    fn tile(&self, block: usize, step: usize) -> &[i8] {
        &self.bytes[(block * self.steps + step) * TILE_BYTES..][..TILE_BYTES]
    }
}

/// Row `lane` of a block's codes into the block's tiles `tiles` (`[steps, 16, 64]`):
/// column `c` to step `c / 64`, line `c % 64 / 4`, byte `4 · lane + c % 4`. Sixty-four
/// codes at a time become bytes and scatter as sixteen groups of four, one to a line.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
fn place_row(row: &[f32], lane: usize, tiles: &mut [i8]) {
    use std::arch::x86_64::*;
    let whole = row.len() / LINE;
    assert!(lane < LINES && tiles.len() >= row.len().div_ceil(LINE) * TILE_BYTES);
    let lines = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(LINE as i32)), _mm512_set1_epi32(4 * lane as i32));
    for (step, codes) in row.chunks_exact(LINE).enumerate() {
        // SAFETY: `codes` holds 64 f32, the four loads' width; the scatter writes four
        // bytes at 64 · q + 4 · lane < 1024 past the step's tile, which lies in `tiles`.
        unsafe {
            let bytes = |part: usize| _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_loadu_ps(codes.as_ptr().add(16 * part))));
            let low = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(bytes(0)), bytes(1));
            let high = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(bytes(2)), bytes(3));
            let quads = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), high);
            _mm512_i32scatter_epi32::<1>(tiles.as_mut_ptr().add(step * TILE_BYTES).cast(), lines, quads);
        }
    }
    for (column, &code) in row.iter().enumerate().skip(whole * LINE) {
        tiles[column / LINE * TILE_BYTES + column % LINE / 4 * LINE + 4 * lane + column % 4] = code as i8;
    }
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

/// A tile's bytes, aligned to its lines.
#[repr(C, align(64))]
struct TileBuffer<T: Copy, const N: usize>([T; N]);

/// `out [m, channels] = (codes · W[channels]ᵀ) · a_scales[row] · the channel's scale`,
/// the products summed in i32 and scaled in the reference's order; `channels` spans at
/// most [`CHANNELS`].
///
/// # Safety
/// Only where [`available`] reported the tile unit usable.
pub(super) unsafe fn int8_channels(weight: &ByteWeightSlices, codes: &TiledCodes, a_scales: &[f32], m: usize, channels: Range<usize>, out: &mut [f32]) {
    let width = channels.len();
    assert!(width <= CHANNELS && channels.end <= weight.n && weight.bytes.len() >= weight.n * weight.k && out.len() >= m * width);
    let weight_tiles = width.div_ceil(LINES);
    let blocks = m.div_ceil(LINES);
    let mut padded = [TileBuffer([0u8; TILE_BYTES]), TileBuffer([0u8; TILE_BYTES])];
    let mut sums = TileBuffer([0i32; LINES * LINES]);
    // SAFETY: the caller checked the CPU has the tile unit and the process may use it.
    unsafe { load_config(&TileConfig::full()) };
    for first in (0..blocks).step_by(2) {
        let pair = blocks - first >= 2;
        // SAFETY (every tile instruction): the configuration is loaded; each load reads
        // sixteen lines of 64 bytes from a pointer and stride `weight_tile` or `tile`
        // vouches for, and the store writes the 1 KiB of `sums`.
        unsafe {
            zero::<0>();
            zero::<1>();
            zero::<2>();
            zero::<3>();
            for step in 0..codes.steps {
                let (w0, stride) = weight_tile(weight, channels.start, channels.end, step, &mut padded[0]);
                load::<4>(w0, stride);
                load::<6>(codes.tile(first, step).as_ptr().cast(), LINE);
                product::<0, 4, 6>();
                if pair {
                    load::<7>(codes.tile(first + 1, step).as_ptr().cast(), LINE);
                    product::<1, 4, 7>();
                }
                if weight_tiles == 2 {
                    let (w1, stride) = weight_tile(weight, channels.start + LINES, channels.end, step, &mut padded[1]);
                    load::<5>(w1, stride);
                    product::<2, 5, 6>();
                    if pair {
                        product::<3, 5, 7>();
                    }
                }
            }
            for (tile, (w, r)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                if w >= weight_tiles || (r == 1 && !pair) {
                    continue;
                }
                match tile {
                    0 => store::<0>(&mut sums.0),
                    1 => store::<1>(&mut sums.0),
                    2 => store::<2>(&mut sums.0),
                    _ => store::<3>(&mut sums.0),
                }
                let rows = (first + r) * LINES..((first + r + 1) * LINES).min(m);
                let first_channel = w * LINES;
                scale_sums(weight, &sums.0, a_scales, rows, channels.start + first_channel..(channels.start + first_channel + LINES).min(channels.end), first_channel, width, out);
            }
        }
    }
    // SAFETY: as the configuration's load.
    unsafe { release() };
}

/// The weight tile of channels `first..first + 16` (those before `end`) at step `step`:
/// a pointer and line stride into the weight itself, or, where the tile reaches past the
/// last channel or column, into `padded`, which receives its bytes and zeros beyond.
fn weight_tile(weight: &ByteWeightSlices, first: usize, end: usize, step: usize, padded: &mut TileBuffer<u8, TILE_BYTES>) -> (*const u8, usize) {
    let (k, column) = (weight.k, step * LINE);
    let (channels, columns) = ((end - first).min(LINES), (k - column).min(LINE));
    if channels == LINES && columns == LINE {
        return (weight.bytes[first * k + column..].as_ptr(), k);
    }
    padded.0.fill(0);
    for (line, n) in padded.0.chunks_mut(LINE).zip(first..first + channels) {
        line[..columns].copy_from_slice(&weight.bytes[n * k + column..n * k + column + columns]);
    }
    (padded.0.as_ptr(), LINE)
}

/// `out[row, offset + c]` = `sums[c, row]` · `a_scales[row]` · channel `c`'s scale, for
/// the tile's rows `rows` and channels `channels` (the first at `offset` in `out`'s rows
/// of `width`).
#[allow(clippy::too_many_arguments)]
fn scale_sums(weight: &ByteWeightSlices, sums: &[i32], a_scales: &[f32], rows: Range<usize>, channels: Range<usize>, offset: usize, width: usize, out: &mut [f32]) {
    for (c, n) in channels.enumerate() {
        let scale = weight.scale(n, 0);
        for (lane, row) in rows.clone().enumerate() {
            out[row * width + offset + c] = sums[c * LINES + lane] as f32 * a_scales[row] * scale;
        }
    }
}

/// # Safety
/// `config` must be a valid palette; the tile state stays until [`release`].
#[inline(always)]
unsafe fn load_config(config: &TileConfig) {
    unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly, preserves_flags)) };
}

#[inline(always)]
unsafe fn release() {
    unsafe { asm!("tilerelease", options(nostack, nomem, preserves_flags)) };
}

#[inline(always)]
unsafe fn zero<const TILE: u8>() {
    unsafe { asm!("tilezero tmm{t}", t = const TILE, options(nostack, nomem, preserves_flags)) };
}

/// Tile `TILE` ← sixteen lines of 64 bytes, `stride` bytes apart from `base`.
#[inline(always)]
unsafe fn load<const TILE: u8>(base: *const u8, stride: usize) {
    unsafe { asm!("tileloadd tmm{t}, [{base} + {stride}*1]", t = const TILE, base = in(reg) base, stride = in(reg) stride, options(nostack, readonly, preserves_flags)) };
}

/// Tile `SUMS` += tile `LEFT` (signed bytes, 16 × 64) · tile `RIGHT` (signed bytes, the
/// 64 × 16 operand in lines of four-byte groups).
#[inline(always)]
unsafe fn product<const SUMS: u8, const LEFT: u8, const RIGHT: u8>() {
    unsafe { asm!("tdpbssd tmm{s}, tmm{l}, tmm{r}", s = const SUMS, l = const LEFT, r = const RIGHT, options(nostack, nomem, preserves_flags)) };
}

#[inline(always)]
unsafe fn store<const TILE: u8>(sums: &mut [i32; LINES * LINES]) {
    unsafe { asm!("tilestored [{base} + {stride}*1], tmm{t}", t = const TILE, base = in(reg) sums.as_mut_ptr(), stride = in(reg) LINE, options(nostack, preserves_flags)) };
}
