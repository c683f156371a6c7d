//! RMSNorm on the Flex device, a row at a time in one pass: Burn's ops take six over the
//! whole tensor (square, mean, add, square root, reciprocal, two products) and, for 16-bit
//! dtypes, two casts besides.
//!
//! As transformers computes it: the row in f32, `x / sqrt(mean(x²) + eps)` rounded to the
//! dtype, then times the weight (rounded again).

use burn::tensor::{DType, Tensor, TensorData};
use half::{bf16, f16};
use rayon::prelude::*;

use super::floats::{zeroed, Element, CHUNK};
use super::{dot, HostBuffer};

/// `x` normalized over its last dimension and scaled by `weight` (its size), for `x` and
/// `weight` of one dtype (f32, f16 or bf16) on the Flex device; `None` for anything else.
pub fn rms_norm<const D: usize>(x: &Tensor<D>, weight: &Tensor<1>, eps: f64) -> Option<Tensor<D>> {
    let (shape, dtype) = (x.shape(), x.dtype());
    let hidden = weight.dims()[0];
    if x.dims().last() != Some(&hidden) || hidden == 0 || weight.dtype() != dtype {
        return None;
    }
    let (values, weight_values) = (HostBuffer::of(x)?, HostBuffer::of(weight)?);
    let eps = eps as f32;
    let data = match dtype {
        DType::F32 => TensorData::new(normalized::<f32>(values.0.as_slice()?, weight_values.0.as_slice()?, eps), shape),
        DType::BF16 => TensorData::new(normalized::<bf16>(values.0.as_slice()?, weight_values.0.as_slice()?, eps), shape),
        DType::F16 => TensorData::new(normalized::<f16>(values.0.as_slice()?, weight_values.0.as_slice()?, eps), shape),
        _ => return None,
    };
    Some(Tensor::from_data(data, (&x.device(), dtype)))
}

fn normalized<E: Element>(x: &[E], weight: &[E], eps: f32) -> Vec<E> {
    let hidden = weight.len();
    let mut scale = vec![0f32; hidden];
    E::widen(weight, &mut scale);
    let task = (CHUNK / hidden).max(1) * hidden;
    let mut out = zeroed::<E>(x.len());
    out.par_chunks_mut(task).zip(x.par_chunks(task)).for_each(|(out, x)| {
        let (mut row, mut scratch) = (vec![0f32; hidden], vec![E::zeroed(); hidden]);
        for (out, x) in out.chunks_mut(hidden).zip(x.chunks(hidden)) {
            E::widen(x, &mut row);
            let inverse_rms = 1.0 / (dot(&row, &row) / hidden as f32 + eps).sqrt();
            row.iter_mut().for_each(|value| *value *= inverse_rms);
            E::round(&mut row, &mut scratch);
            row.iter_mut().zip(&scale).for_each(|(value, scale)| *value *= scale);
            E::narrow(&row, out);
        }
    });
    out
}
