//! Round-to-nearest quantization of one float weight `[N, K]` on the host, with
//! compressed-tensors' numerics (what llm-compressor's `QuantizationModifier` computes):
//!
//! - ranges always include 0; symmetric scale = absmax / ((q_max − q_min) / 2), so int4
//!   divides by 7.5 and int8 by 127.5; asymmetric scale = (max − min) / (q_max − q_min)
//!   with zero point = round(q_min − min / scale), clamped to the range;
//! - scales are computed and kept in the weight's own dtype (f16 weights get f16 scales)
//!   and a zero scale becomes that dtype's epsilon;
//! - `x / scale` is rounded to the weight's dtype before quantizing, then clamped to the
//!   range and rounded half to even (ints) or cast to e4m3 (FP8, range ±448).
//!
//! Everything is deterministic and device-independent, so quantizing at load and
//! exporting with `ember quantize` give the same bits.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::dtype::StoredDtype;
use crate::kernels::host::byte_gemm::round_to_e4m3;
use crate::repr::activation::E4M3_MAX;

/// Rounds `x` to the precision of a float dtype (identity for F32), ties to even.
pub fn round_to(dtype: StoredDtype, x: f32) -> f32 {
    match dtype {
        StoredDtype::F16 => nearest_f16(x),
        StoredDtype::BF16 => nearest_bf16(x),
        _ => x,
    }
}

/// `torch.finfo(dtype).eps`: what a zero scale is replaced with.
fn epsilon(dtype: StoredDtype) -> f32 {
    match dtype {
        StoredDtype::F16 => f16::EPSILON.to_f32(),
        StoredDtype::BF16 => bf16::EPSILON.to_f32(),
        _ => f32::EPSILON,
    }
}

/// The e4m3fn byte nearest to `x` (ties to even), saturating at ±448; NaN is 0x7F.
/// Branch-free, so loops over it vectorize.
#[inline(always)]
pub fn e4m3_encode(x: f32) -> u8 {
    let code = e4m3_code(round_to_e4m3(x.clamp(-E4M3_MAX, E4M3_MAX)));
    if x.is_nan() { 0x7F } else { code }
}

/// [`round_to`] for F16 by arithmetic the compiler vectorizes: f16 values are spaced
/// 2^(e−10) in the binade [2^e, 2^(e+1)) and 2^−24 below 2^−14, so dividing by the
/// spacing is exact and one rounding instruction does the rest; past 65504 is infinity.
#[inline(always)]
pub fn nearest_f16(x: f32) -> f32 {
    let exponent = (((x.abs().to_bits() >> 23) as i32) - 127).max(-14);
    let step = f32::from_bits(((exponent - 10 + 127) as u32) << 23);
    let rounded = (x / step).round_ties_even() * step;
    if rounded.abs() > 65504.0 { f32::INFINITY.copysign(x) } else { rounded }
}

/// [`round_to`] for BF16 of a value that is not NaN: round off f32's low sixteen bits,
/// ties to even (a carry into the exponent is the next binade, or infinity).
#[inline(always)]
pub fn nearest_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    f32::from_bits(bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) & 0xFFFF_0000)
}

/// The e4m3fn byte of `v`, a value on the e4m3 grid with |v| ≤ 448: a normal value's f32
/// exponent rebiased from 127 to 7 above its top three mantissa bits, a subnormal one
/// its count of 2^−9 steps.
#[inline(always)]
fn e4m3_code(v: f32) -> u8 {
    let bits = v.to_bits();
    let magnitude = v.abs();
    let code = if magnitude < E4M3_SMALLEST_NORMAL { (magnitude * 512.0) as u32 } else { ((bits >> 20) & 0x7FF) - (120 << 3) };
    (code | ((bits >> 24) & 0x80)) as u8
}

const E4M3_SMALLEST_NORMAL: f32 = 1.0 / 64.0;

/// Which float a weight's scaled values are rounded to, as a const parameter so that
/// each element loop is compiled for one.
const TO_F32: u8 = 0;
const TO_F16: u8 = 1;
const TO_BF16: u8 = 2;

const fn rounding(dtype: StoredDtype) -> u8 {
    match dtype {
        StoredDtype::F16 => TO_F16,
        StoredDtype::BF16 => TO_BF16,
        _ => TO_F32,
    }
}

#[inline(always)]
fn round_in<const TO: u8>(x: f32) -> f32 {
    match TO {
        TO_F16 => nearest_f16(x),
        TO_BF16 => nearest_bf16(x),
        _ => x,
    }
}

/// One group's integer codes: `x / scale` rounded to the weight's dtype, offset by the
/// zero point, clamped and rounded half to even. Compiled for AVX2 where the CPU has it:
/// x86-64's baseline has no rounding instruction, so each value would call `rintf`.
fn int_codes(block: &[f32], scale: f32, zero: f32, [q_min, q_max]: [f32; 2], dtype: StoredDtype, out: &mut [i8]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::host::avx2() {
        // SAFETY: the CPU was just checked to have the features the function is compiled for.
        return unsafe { int_codes_avx2(block, scale, zero, [q_min, q_max], dtype, out) };
    }
    int_codes_for(block, scale, zero, [q_min, q_max], dtype, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn int_codes_avx2(block: &[f32], scale: f32, zero: f32, range: [f32; 2], dtype: StoredDtype, out: &mut [i8]) {
    int_codes_for(block, scale, zero, range, dtype, out)
}

#[inline(always)]
fn int_codes_for(block: &[f32], scale: f32, zero: f32, range: [f32; 2], dtype: StoredDtype, out: &mut [i8]) {
    match rounding(dtype) {
        TO_F16 => int_code_loop::<TO_F16>(block, scale, zero, range, out),
        TO_BF16 => int_code_loop::<TO_BF16>(block, scale, zero, range, out),
        _ => int_code_loop::<TO_F32>(block, scale, zero, range, out),
    }
}

#[inline(always)]
fn int_code_loop<const TO: u8>(block: &[f32], scale: f32, zero: f32, [q_min, q_max]: [f32; 2], out: &mut [i8]) {
    for (code, &x) in out.iter_mut().zip(block) {
        *code = (round_in::<TO>(x / scale) + zero).clamp(q_min, q_max).round_ties_even() as i8;
    }
}

/// One run of e4m3 codes sharing `scale`: `x / scale` rounded to the weight's dtype, then
/// to e4m3. compressed-tensors adds the (zero) zero point first, which turns −0.0 into
/// +0.0. Compiled for AVX2 where the CPU has it, as [`int_codes`].
fn fp8_codes(values: &[f32], scale: f32, dtype: StoredDtype, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::host::avx2() {
        // SAFETY: the CPU was just checked to have the features the function is compiled for.
        return unsafe { fp8_codes_avx2(values, scale, dtype, out) };
    }
    fp8_codes_for(values, scale, dtype, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn fp8_codes_avx2(values: &[f32], scale: f32, dtype: StoredDtype, out: &mut [u8]) {
    fp8_codes_for(values, scale, dtype, out)
}

#[inline(always)]
fn fp8_codes_for(values: &[f32], scale: f32, dtype: StoredDtype, out: &mut [u8]) {
    match rounding(dtype) {
        TO_F16 => fp8_code_loop::<TO_F16>(values, scale, out),
        TO_BF16 => fp8_code_loop::<TO_BF16>(values, scale, out),
        _ => fp8_code_loop::<TO_F32>(values, scale, out),
    }
}

#[inline(always)]
fn fp8_code_loop<const TO: u8>(values: &[f32], scale: f32, out: &mut [u8]) {
    for (code, &x) in out.iter_mut().zip(values) {
        *code = e4m3_encode(round_in::<TO>(x / scale) + 0.0);
    }
}

/// Integer weights: signed values `[N, K]`, scales and optional zero points `[N, G]`.
#[derive(Debug, Clone, PartialEq)]
pub struct IntQuantized {
    pub bits: u32,
    pub out_features: usize,
    pub in_features: usize,
    pub group_size: usize,
    pub values: Vec<i8>,
    /// Already rounded to `scale_dtype`.
    pub scales: Vec<f32>,
    pub zero_points: Option<Vec<i8>>,
    pub scale_dtype: StoredDtype,
}

impl IntQuantized {
    pub fn groups(&self) -> usize {
        self.in_features / self.group_size
    }
}

/// Quantizes `weight` (`[n, k]`, row-major f32 values of a `dtype` tensor) to signed
/// `bits`-bit integers with one scale per row and `group_size` inputs.
pub fn quantize_int(weight: &[f32], [n, k]: [usize; 2], dtype: StoredDtype, bits: u32, group_size: usize, symmetric: bool) -> IntQuantized {
    let groups = k / group_size;
    let q_min = -(1i32 << (bits - 1));
    let q_max = (1i32 << (bits - 1)) - 1;
    let range = (q_max - q_min) as f32;
    let mut values = vec![0i8; n * k];
    let mut scales = vec![0f32; n * groups];
    let mut zeros = vec![0i8; n * groups];
    values
        .par_chunks_mut(k)
        .zip(scales.par_chunks_mut(groups))
        .zip(zeros.par_chunks_mut(groups))
        .enumerate()
        .for_each(|(row, ((row_values, row_scales), row_zeros))| {
            for g in 0..groups {
                let span = row * k + g * group_size..row * k + (g + 1) * group_size;
                let block = &weight[span.clone()];
                let (lo, hi) = block.iter().fold((0f32, 0f32), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                let (scale, zero) = match symmetric {
                    true => (round_to(dtype, lo.abs().max(hi) / (range / 2.0)), 0),
                    false => {
                        let scale = round_to(dtype, round_to(dtype, hi - lo) / range);
                        let zero = if scale > 0.0 { (q_min as f32 - lo / scale).round_ties_even() as i32 } else { 0 };
                        (scale, zero.clamp(q_min, q_max))
                    }
                };
                let scale = if scale == 0.0 { epsilon(dtype) } else { scale };
                row_scales[g] = scale;
                row_zeros[g] = zero as i8;
                let codes = &mut row_values[g * group_size..(g + 1) * group_size];
                int_codes(block, scale, zero as f32, [q_min as f32, q_max as f32], dtype, codes);
            }
        });
    IntQuantized {
        bits,
        out_features: n,
        in_features: k,
        group_size,
        values,
        scales,
        zero_points: (!symmetric).then_some(zeros),
        scale_dtype: dtype,
    }
}

/// FP8 weights: e4m3 bytes `[N, K]` and multiplier scales `[rows, cols]` (`[1, 1]` per
/// tensor, `[N, 1]` per channel, `[⌈N/bn⌉, ⌈K/bk⌉]` per block).
#[derive(Debug, Clone, PartialEq)]
pub struct Fp8Quantized {
    pub out_features: usize,
    pub in_features: usize,
    pub codes: Vec<u8>,
    pub scales: Vec<f32>,
    pub scale_shape: [usize; 2],
    pub scale_dtype: StoredDtype,
}

/// Quantizes `weight` to e4m3 with one scale per `[bn, bk]` tile (`[n, k]` for per
/// tensor, `[1, k]` per channel).
pub fn quantize_fp8(weight: &[f32], [n, k]: [usize; 2], dtype: StoredDtype, [bn, bk]: [usize; 2]) -> Fp8Quantized {
    let (rows, cols) = (n.div_ceil(bn), k.div_ceil(bk));
    let mut scales = vec![0f32; rows * cols];
    scales.par_iter_mut().enumerate().for_each(|(at, scale)| {
        let (rb, cb) = (at / cols, at % cols);
        let mut absmax = 0f32;
        for row in rb * bn..((rb + 1) * bn).min(n) {
            for &x in &weight[row * k + cb * bk..row * k + ((cb + 1) * bk).min(k)] {
                absmax = absmax.max(x.abs());
            }
        }
        let s = round_to(dtype, absmax / E4M3_MAX);
        *scale = if s == 0.0 { epsilon(dtype) } else { s };
    });
    let mut codes = vec![0u8; n * k];
    codes.par_chunks_mut(k).enumerate().for_each(|(row, out)| {
        let row_values = &weight[row * k..(row + 1) * k];
        for (cb, (values, codes)) in row_values.chunks(bk).zip(out.chunks_mut(bk)).enumerate() {
            fp8_codes(values, scales[(row / bn) * cols + cb], dtype, codes);
        }
    });
    Fp8Quantized { out_features: n, in_features: k, codes, scales, scale_shape: [rows, cols], scale_dtype: dtype }
}
