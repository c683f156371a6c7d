//! `x · Wᵀ` for 8-bit weights `[N, K]` (four bytes per i32 word along K, so each output
//! channel's bytes are contiguous), read in place from host memory:
//!
//! - int8 (W8A8): activations quantized to int8 here, code for code as the reference
//!   does, and each product summed exactly in i32 before the two scales (on AMX's tile
//!   unit where the CPU has one: [`super::amx`]);
//! - e4m3 (FP8): activations as the reference leaves them (rounded to e4m3 and scaled
//!   back, or float), each channel's bytes decoded once for every row (in registers
//!   where the CPU has AVX2: [`super::byte_rows`], as are int8 weights with float
//!   activations).
//!
//! The activation quantization mirrors `crate::repr::quantize_activations`: the scale is
//! `max(absmax / half_range, f32::MIN_POSITIVE)`, values are divided by it, clamped, and
//! rounded half to even (int8) or to the nearest e4m3 value.

use std::ops::Range;

use rayon::prelude::*;

use super::dot;
use crate::repr::activation::E4M3_MAX;
use crate::repr::ActivationGrid;

/// Output channels per task.
const CHANNELS: usize = 16;

/// K columns decoded at a time when the weight's scales do not change along K.
const PIECE: usize = 512;

/// Where each activation's scale comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RowScales {
    /// One per row, from its absolute maximum.
    PerRow,
    /// One for every value, from the absolute maximum of them all.
    PerTensor,
    /// One per `group` consecutive columns of each row.
    PerGroup(usize),
    /// A calibrated scale.
    Static(f32),
}

/// Activations on a grid: values `[m, k]` divided by their scales and rounded (as f32),
/// and the scales, one per (row, group of `group` columns) in row-major order.
pub struct GridActivations {
    pub values: Vec<f32>,
    pub scales: Vec<f32>,
    pub k: usize,
    /// Columns per scale.
    pub group: usize,
}

impl GridActivations {
    /// `[m, k]` values, each multiplied back by its scale.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.values.len());
        let groups = self.values.chunks(self.k.max(1)).flat_map(|row| row.chunks(self.group));
        for (values, &scale) in groups.zip(&self.scales) {
            out.extend(values.iter().map(|&v| v * scale));
        }
        out
    }
}

/// `x` `[m, k]` quantized onto `grid` with `scales`, rows in parallel.
pub fn quantize(x: &[f32], m: usize, k: usize, scales: RowScales, grid: ActivationGrid) -> GridActivations {
    let from_absmax = |values: &[f32]| (absmax(values) / grid.half_range()).max(f32::MIN_POSITIVE);
    let row_len = k.max(1);
    let (scales, group) = match scales {
        RowScales::Static(scale) => (vec![scale; m], k),
        RowScales::PerTensor => (vec![from_absmax(x); m], k),
        RowScales::PerRow => (x.par_chunks(row_len).map(from_absmax).collect(), k),
        RowScales::PerGroup(group) => {
            let groups = |row: &[f32]| row.chunks(group.max(1)).map(from_absmax).collect::<Vec<_>>();
            (x.par_chunks(row_len).flat_map_iter(groups).collect(), group)
        }
    };
    let group = group.max(1);
    let groups_per_row = k.div_ceil(group);
    let mut values = vec![0f32; x.len()];
    values.par_chunks_mut(row_len).zip(x.par_chunks(row_len)).enumerate().for_each(|(row, (out, part))| {
        for (index, (out, part)) in out.chunks_mut(group).zip(part.chunks(group)).enumerate() {
            round_onto_grid(part, scales.get(row * groups_per_row + index).copied().unwrap_or(1.0), grid, out);
        }
    });
    GridActivations { values, scales, k, group }
}

/// The largest `|v|` of `values` (NaN skipped, as `f32::max` does), in sixteen running
/// maxima the compiler vectorizes.
fn absmax(values: &[f32]) -> f32 {
    let larger = |a: f32, v: f32| if v.abs() > a { v.abs() } else { a };
    let (chunks, rest) = values.as_chunks::<16>();
    let mut lanes = [0f32; 16];
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = larger(*lane, v);
        }
    }
    rest.iter().chain(&lanes).fold(0f32, |a, &v| larger(a, v))
}

/// `out[i]` = `part[i] / scale` rounded onto `grid`, compiled for AVX2 where the CPU has
/// it: x86-64's baseline has no rounding instruction, so each value would call `rintf`.
fn round_onto_grid(part: &[f32], scale: f32, grid: ActivationGrid, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::avx2() {
        // SAFETY: the CPU was just checked to have the features the function is compiled for.
        return unsafe { round_onto_grid_avx2(part, scale, grid, out) };
    }
    round_values(part, scale, grid, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn round_onto_grid_avx2(part: &[f32], scale: f32, grid: ActivationGrid, out: &mut [f32]) {
    round_values(part, scale, grid, out)
}

/// [`round_onto_grid`]'s loops, one per grid, with no closure in them: a closure would be
/// compiled apart, without the caller's target features.
#[inline(always)]
fn round_values(part: &[f32], scale: f32, grid: ActivationGrid, out: &mut [f32]) {
    match grid {
        ActivationGrid::Int8 => {
            for (o, &v) in out.iter_mut().zip(part) {
                *o = (v / scale).clamp(-128.0, 127.0).round_ties_even();
            }
        }
        ActivationGrid::E4M3 => {
            for (o, &v) in out.iter_mut().zip(part) {
                *o = round_to_e4m3((v / scale).clamp(-E4M3_MAX, E4M3_MAX));
            }
        }
    }
}

/// The nearest e4m3 value (ties to even) for |v| ≤ 448: values are spaced 2^(e−3) in the
/// binade [2^e, 2^(e+1)) and 2^−9 below 2^−6, so dividing by the spacing is exact.
#[inline(always)]
pub fn round_to_e4m3(v: f32) -> f32 {
    let magnitude = v.abs();
    let exponent = if magnitude < 2f32.powi(-6) { -6 } else { (((magnitude.to_bits() >> 23) as i32) - 127).min(8) };
    let step = f32::from_bits(((exponent - 3 + 127) as u32) << 23);
    (v / step).round_ties_even() * step
}

/// The value of an e4m3fn byte, by bit operations the compiler vectorizes: a normal
/// value's exponent rebiased from 7 to 127 with its mantissa above f32's, a subnormal one
/// (exponent field 0) as `mantissa · 2^−9`, and 0x7F as NaN. (Shifting all seven bits into
/// an f32 and multiplying by 2^120 would be shorter, but subnormal f32 arithmetic takes a
/// slow microcode path on x86.)
#[inline(always)]
pub fn e4m3_to_f32(byte: u8) -> f32 {
    let (exponent, mantissa) = ((byte as u32 >> 3) & 0x0F, byte as u32 & 0x07);
    let normal = f32::from_bits(((exponent + 120) << 23) | (mantissa << 20));
    let subnormal = mantissa as f32 * (1.0 / 512.0);
    let magnitude = match (exponent, mantissa) {
        (0x0F, 0x07) => f32::NAN,
        (0, _) => subnormal,
        _ => normal,
    };
    f32::from_bits(magnitude.to_bits() | ((byte as u32 & 0x80) << 24))
}

/// `out[i] = e4m3(bytes[i]) · scale`, sixteen bytes at a time where the CPU converts
/// f16: an e4m3 byte's exponent and mantissa, shifted into an f16's, are the value times
/// 2^−8 (the biases are 7 and 15), subnormals included, so the conversion instruction
/// does the decoding and the 2^8 joins the scale (exact: a power of two).
#[inline(always)]
pub fn decode_e4m3(bytes: &[u8], scale: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::avx2() {
        // SAFETY: the CPU was just checked to have the features the function is compiled for.
        return unsafe { decode_e4m3_f16c(bytes, scale, out) };
    }
    out.iter_mut().zip(bytes).for_each(|(o, &b)| *o = e4m3_to_f32(b) * scale);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn decode_e4m3_f16c(bytes: &[u8], scale: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let len = bytes.len().min(out.len());
    let (bytes, out) = (&bytes[..len], &mut out[..len]);
    let scale_up = _mm256_set1_ps(scale * 256.0);
    let sixteens = len - len % 16;
    for (bytes, out) in bytes[..sixteens].chunks_exact(16).zip(out.chunks_exact_mut(16)) {
        // SAFETY: `bytes` holds sixteen bytes, the load's width.
        let [low, high] = e4m3_lanes16(unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) });
        // SAFETY: `out` holds sixteen f32, the two stores' width.
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), _mm256_mul_ps(low, scale_up));
            _mm256_storeu_ps(out.as_mut_ptr().add(8), _mm256_mul_ps(high, scale_up));
        }
    }
    let tail = len - len % 8;
    if tail > sixteens {
        // SAFETY: bytes and values sixteens..sixteens + 8 lie before `tail` ≤ len.
        unsafe {
            let values = _mm256_mul_ps(e4m3_lanes(_mm_loadl_epi64(bytes.as_ptr().add(sixteens).cast())), scale_up);
            _mm256_storeu_ps(out.as_mut_ptr().add(sixteens), values);
        }
    }
    out[tail..].iter_mut().zip(&bytes[tail..]).for_each(|(o, &b)| *o = e4m3_to_f32(b) * scale);
}

/// The e4m3 bytes in the low eight bytes of `bytes` as f32 values times 2^−8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn e4m3_lanes(bytes: std::arch::x86_64::__m128i) -> std::arch::x86_64::__m256 {
    // The upper half's conversion is dead code here and goes.
    e4m3_lanes16(bytes)[0]
}

/// Sixteen e4m3 bytes as f32 values times 2^−8, bytes 0..8 and 8..16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn e4m3_lanes16(bytes: std::arch::x86_64::__m128i) -> [std::arch::x86_64::__m256; 2] {
    use std::arch::x86_64::*;
    // Sign-extended to 16 bits and shifted left by 7, a byte's exponent and mantissa sit
    // on an f16's (the biases 7 and 15 differ by 8, hence the 2^−8) and its sign on bits
    // 14 and 15: clearing bit 14 leaves the f16, subnormals included.
    let shifted = _mm256_slli_epi16::<7>(_mm256_cvtepi8_epi16(bytes));
    let half = _mm256_and_si256(shifted, _mm256_set1_epi16(0xBFFFu16 as i16));
    // Magnitude 0x7F (NaN in e4m3fn) lands on 0x3F80, a finite f16: bit 14 makes it NaN.
    let magnitude = _mm256_and_si256(shifted, _mm256_set1_epi16(0x3F80));
    let nan = _mm256_and_si256(_mm256_cmpeq_epi16(magnitude, _mm256_set1_epi16(0x3F80)), _mm256_set1_epi16(0x4000));
    let halves = _mm256_or_si256(half, nan);
    [_mm256_cvtph_ps(_mm256_castsi256_si128(halves)), _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(halves))]
}

/// What an 8-bit weight decodes to.
#[derive(Clone, Copy)]
pub(super) enum ByteValues {
    /// e4m3 values times their scales.
    E4m3,
    /// int8 values times their scales.
    Int8,
    /// int8 codes, unscaled (for the tiles' exact integer sums).
    Int8Codes,
}

/// An 8-bit weight's buffers: `bytes` `[N, K]` and its scales.
#[derive(Debug, Clone, Copy)]
pub struct ByteWeightSlices<'a> {
    pub k: usize,
    pub n: usize,
    pub bytes: &'a [u8],
    pub scales: &'a [f32],
    pub scale_layout: WeightScales,
}

/// How an 8-bit weight's scales are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightScales {
    /// `[1, 1]`.
    PerTensor,
    /// `[N, 1]`.
    PerChannel,
    /// `[⌈N/bn⌉, ⌈K/bk⌉]`.
    Block { bn: usize, bk: usize },
}

impl ByteWeightSlices<'_> {
    /// Columns per scale along K.
    pub(super) fn chunk(&self) -> usize {
        match self.scale_layout {
            WeightScales::Block { bk, .. } => bk.max(1),
            _ => PIECE,
        }
    }

    /// The scale of channel `n` at column `k`.
    pub(super) fn scale(&self, n: usize, k: usize) -> f32 {
        match self.scale_layout {
            WeightScales::PerTensor => self.scales[0],
            WeightScales::PerChannel => self.scales[n],
            WeightScales::Block { bn, bk } => self.scales[(n / bn.max(1)) * self.k.div_ceil(bk.max(1)) + k / bk.max(1)],
        }
    }
}

/// What a block of output channels multiplies.
#[derive(Clone, Copy)]
enum Operands<'a> {
    /// e4m3 weights, float activations.
    E4m3 { x: &'a [f32] },
    /// int8 weights, int8 activation codes with one scale per row.
    Int8 { codes: Int8Codes<'a>, a_scales: &'a [f32] },
    /// int8 weights, float activations.
    Int8WeightOnly { x: &'a [f32] },
}

/// int8 activation codes as a kernel reads them.
#[derive(Clone, Copy)]
enum Int8Codes<'a> {
    /// As i16, the i16 multiply-add's operand.
    Wide(&'a [i16]),
    /// Plus [`CODE_BIAS`], as bytes: the VNNI dot product's unsigned operand (made only
    /// where the CPU has it).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Biased(&'a [u8]),
}

/// What the VNNI kernel adds to an int8 code to make it an unsigned byte.
pub(super) const CODE_BIAS: i16 = 128;

/// `[m, K] · dequant(W)ᵀ` for e4m3 weights and float activations `x` (already rounded
/// and scaled back where the scheme quantizes them).
pub fn e4m3_gemm(weight: &ByteWeightSlices, x: &[f32], m: usize) -> Vec<f32> {
    gemm(weight, Operands::E4m3 { x }, m)
}

/// `[m, K] · Wᵀ` for e4m3 weights and activation codes on the e4m3 grid (`codes`), on
/// AMX's tile unit: each scale chunk's sum of exact products times its two scales.
///
/// # Safety
/// Only where [`super::vector_isa`] reported [`super::VectorIsa::Amx`]; the scale chunks
/// (the weight's blocks or the activations' groups, equal where both are) must be
/// whole multiples of 32 columns, unless one chunk spans K.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn e4m3_codes_gemm(weight: &ByteWeightSlices, codes: &GridActivations, m: usize) -> Vec<f32> {
    use super::amx::{self, ActivationScales};
    let per_row = codes.k.div_ceil(codes.group).max(1);
    let columns = match (per_row, weight.scale_layout) {
        (1, WeightScales::Block { bk, .. }) => bk,
        (1, _) => weight.k,
        _ => codes.group,
    };
    let activation_scales = ActivationScales { values: &codes.scales, per_row, columns: columns.max(1) };
    // SAFETY: passed on from the caller.
    let tiles = unsafe { amx::byte_weights::codes(&codes.values, m, weight.k) };
    // SAFETY: as above, and `tiles` holds the m rows' codes.
    super::by_column_blocks(m, weight.n, amx::CHANNELS, |channels, out| unsafe { amx::byte_weights::channels(weight, &tiles, activation_scales, m, channels, out) })
}

/// `[m, K] · Wᵀ` for int8 weights and int8 activation codes (integers in −128..=127, as
/// f32) with one scale per row (`a_scales`, `[m]`): each product summed in i32, then
/// times both scales in the reference's order. From [`super::amx::int8::MIN_ROWS`] rows
/// on AMX's tile unit where the CPU has it, otherwise in the register kernels.
pub fn int8_gemm(weight: &ByteWeightSlices, codes: &[f32], a_scales: &[f32], m: usize) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if m >= super::amx::int8::MIN_ROWS && super::vector_isa() == super::VectorIsa::Amx {
        use super::amx;
        // SAFETY: `vector_isa` reports AMX only where the tile unit was found usable.
        let tiles = unsafe { amx::int8::codes(codes, m, weight.k) };
        // SAFETY: as above, and `tiles` holds the m rows' codes.
        return super::by_column_blocks(m, weight.n, amx::CHANNELS, |channels, out| unsafe { amx::int8::channels(weight, &tiles, a_scales, m, channels, out) });
    }
    #[cfg(target_arch = "x86_64")]
    if super::vnni() {
        let biased: Vec<u8> = codes.iter().map(|&code| (code as i16 + CODE_BIAS) as u8).collect();
        return gemm(weight, Operands::Int8 { codes: Int8Codes::Biased(&biased), a_scales }, m);
    }
    let wide: Vec<i16> = codes.iter().map(|&code| code as i16).collect();
    gemm(weight, Operands::Int8 { codes: Int8Codes::Wide(&wide), a_scales }, m)
}

/// `[m, K] · Wᵀ` for int8 weights and float activations (weight-only), channel scales.
pub fn int8_weight_only_gemm(weight: &ByteWeightSlices, x: &[f32], m: usize) -> Vec<f32> {
    gemm(weight, Operands::Int8WeightOnly { x }, m)
}

fn gemm(weight: &ByteWeightSlices, operands: Operands, m: usize) -> Vec<f32> {
    super::by_column_blocks(m, weight.n, CHANNELS, |channels, out| dispatch(weight, operands, m, channels, out))
}

/// The register kernels ([`super::byte_rows`], [`super::int8_rows`]) where the CPU has
/// AVX2 or AVX-512 (with VNNI for int8 codes), [`channel_block`] elsewhere.
fn dispatch(weight: &ByteWeightSlices, operands: Operands, m: usize, channels: Range<usize>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::VectorIsa;
        let isa = super::vector_isa();
        // SAFETY (every call): `vector_isa` reports only sets the CPU was checked to have,
        // and AVX2's is part of AVX-512's.
        match (operands, isa) {
            (Operands::E4m3 { x }, VectorIsa::Amx | VectorIsa::Avx512) => return unsafe { super::byte_rows::byte_channels_avx512::<true>(weight, x, m, channels, out) },
            (Operands::E4m3 { x }, VectorIsa::Avx2) => return unsafe { super::byte_rows::byte_channels_avx2::<true>(weight, x, m, channels, out) },
            (Operands::Int8WeightOnly { x }, VectorIsa::Amx | VectorIsa::Avx512) => return unsafe { super::byte_rows::byte_channels_avx512::<false>(weight, x, m, channels, out) },
            (Operands::Int8WeightOnly { x }, VectorIsa::Avx2) => return unsafe { super::byte_rows::byte_channels_avx2::<false>(weight, x, m, channels, out) },
            // Biased codes were made for this kernel, on a CPU with its set (whatever the
            // cap says by now).
            (Operands::Int8 { codes: Int8Codes::Biased(biased), a_scales }, _) if super::cpu_has_vnni() => {
                return unsafe { super::int8_rows::int8_channels_vnni(weight, biased, a_scales, m, channels, out) };
            }
            (Operands::Int8 { codes: Int8Codes::Wide(a), a_scales }, VectorIsa::Avx2 | VectorIsa::Amx | VectorIsa::Avx512) => {
                return unsafe { super::int8_rows::int8_channels_avx2(weight, a, a_scales, m, channels, out) };
            }
            _ => {}
        }
    }
    channel_block(weight, operands, m, channels, out)
}

/// Every row times the output channels `channels`, into `out` `[m, channels]`: each
/// channel decoded into a buffer, then one dot product per row.
fn channel_block(weight: &ByteWeightSlices, operands: Operands, m: usize, channels: Range<usize>, out: &mut [f32]) {
    let (k, width) = (weight.k, channels.len());
    match operands {
        Operands::E4m3 { x } => {
            let chunk = weight.chunk();
            let mut decoded = vec![0f32; chunk];
            for (c, n) in channels.enumerate() {
                let bytes = &weight.bytes[n * k..(n + 1) * k];
                for start in (0..k).step_by(chunk) {
                    let end = (start + chunk).min(k);
                    let decoded = &mut decoded[..end - start];
                    decode_e4m3(&bytes[start..end], 1.0, decoded);
                    let scale = weight.scale(n, start);
                    for row in 0..m {
                        out[row * width + c] += dot(&x[row * k + start..row * k + end], decoded) * scale;
                    }
                }
            }
        }
        Operands::Int8 { codes, a_scales } => {
            // Widened to i16 once per channel (the codes once per call), the products
            // pair up into the CPU's i16 multiply-add.
            let weights = as_i8(weight.bytes);
            let mut widened = vec![0i16; k];
            for (c, n) in channels.clone().enumerate() {
                let next = super::next_channel(weights, k, n, &channels);
                for (line, (widened, weights)) in widened.chunks_mut(64).zip(weights[n * k..(n + 1) * k].chunks(64)).enumerate() {
                    super::prefetch_line(next, line * 64);
                    widened.iter_mut().zip(weights).for_each(|(v, &w)| *v = w as i16);
                }
                let w_scale = weight.scale(n, 0);
                for row in 0..m {
                    let sum = match codes {
                        Int8Codes::Wide(a) => dot_i16(&a[row * k..(row + 1) * k], &widened),
                        Int8Codes::Biased(biased) => biased[row * k..(row + 1) * k].iter().zip(&widened).map(|(&b, &w)| (b as i32 - CODE_BIAS as i32) * w as i32).sum(),
                    };
                    out[row * width + c] = sum as f32 * a_scales[row] * w_scale;
                }
            }
        }
        Operands::Int8WeightOnly { x } => {
            let weights = as_i8(weight.bytes);
            let mut values = vec![0f32; k];
            for (c, n) in channels.clone().enumerate() {
                let next = super::next_channel(weights, k, n, &channels);
                for (line, (values, weights)) in values.chunks_mut(64).zip(weights[n * k..(n + 1) * k].chunks(64)).enumerate() {
                    super::prefetch_line(next, line * 64);
                    values.iter_mut().zip(weights).for_each(|(v, &w)| *v = w as f32);
                }
                let w_scale = weight.scale(n, 0);
                for row in 0..m {
                    out[row * width + c] = dot(&x[row * k..(row + 1) * k], &values) * w_scale;
                }
            }
        }
    }
}

/// `Σ a·b` of int8 values (widened to i16), exactly, in i32.
#[inline(always)]
fn dot_i16(a: &[i16], b: &[i16]) -> i32 {
    a.iter().zip(b).map(|(&a, &b)| a as i32 * b as i32).sum()
}

/// Columns `ks` of channel `n` decoded as `values` into `out`, one scale at a time.
#[inline(always)]
pub(super) fn decode_channel(weight: &ByteWeightSlices, values: ByteValues, n: usize, ks: Range<usize>, out: &mut [f32]) {
    let bytes = &weight.bytes[n * weight.k..(n + 1) * weight.k];
    let chunk = weight.chunk();
    let mut k = ks.start;
    while k < ks.end {
        // To the next scale boundary.
        let end = ((k / chunk + 1) * chunk).min(ks.end);
        let (out, bytes, scale) = (&mut out[k - ks.start..end - ks.start], &bytes[k..end], weight.scale(n, k));
        match values {
            ByteValues::E4m3 => decode_e4m3(bytes, scale, out),
            ByteValues::Int8 => out.iter_mut().zip(bytes).for_each(|(o, &b)| *o = b as i8 as f32 * scale),
            ByteValues::Int8Codes => out.iter_mut().zip(bytes).for_each(|(o, &b)| *o = b as i8 as f32),
        }
        k = end;
    }
}

/// Reinterprets bytes as two's-complement int8.
fn as_i8(bytes: &[u8]) -> &[i8] {
    // SAFETY: u8 and i8 have the same size and alignment, and every bit pattern is valid for both.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<i8>(), bytes.len()) }
}
