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
use crate::repr::activation::E4M3_MAX;

/// Rounds `x` to the precision of a float dtype (identity for F32).
pub fn round_to(dtype: StoredDtype, x: f32) -> f32 {
    match dtype {
        StoredDtype::F16 => f16::from_f32(x).to_f32(),
        StoredDtype::BF16 => bf16::from_f32(x).to_f32(),
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

/// The e4m3fn byte nearest to `x` (ties to even), saturating at ±448.
pub fn e4m3_encode(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    let magnitude = x.abs().min(E4M3_MAX);
    let code = if magnitude < 2f32.powi(-6) {
        // Subnormals step by 2^-9; 8 steps is the smallest normal, code 0x08.
        (magnitude * 512.0).round_ties_even() as u8
    } else {
        let exponent = (magnitude.to_bits() >> 23) as i32 - 127;
        // Mantissa with its implicit bit, in eighths: 8..=16 (16 carries into the exponent).
        let eighths = (magnitude / 2f32.powi(exponent - 3)).round_ties_even() as i32;
        (((exponent + 7) << 3) + eighths - 8) as u8
    };
    sign | code
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
                for (out, &x) in row_values[g * group_size..(g + 1) * group_size].iter_mut().zip(block) {
                    let scaled = round_to(dtype, x / scale) + zero as f32;
                    *out = scaled.clamp(q_min as f32, q_max as f32).round_ties_even() as i8;
                }
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
        for (col, code) in out.iter_mut().enumerate() {
            let scale = scales[(row / bn) * cols + col / bk];
            // compressed-tensors adds the (zero) zero point, which turns -0.0 into +0.0.
            *code = e4m3_encode(round_to(dtype, weight[row * k + col] / scale) + 0.0);
        }
    });
    Fp8Quantized { out_features: n, in_features: k, codes, scales, scale_shape: [rows, cols], scale_dtype: dtype }
}
