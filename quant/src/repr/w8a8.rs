//! `W8A8` int8: signed int8 weights `[N, K]` (bytes packed four per i32 word along K) with
//! a per-output-channel f32 scale, and int8 activations quantized per token at run time.
//! The product of the two int8 operands is integer-valued; computed in f32 it is exact
//! while K · 128 · 127 < 2^24 (K ≤ 1032), and within f32 rounding beyond.

use burn::tensor::{DType, Int, Tensor};

use super::activation::{quantize_activations, ActivationGrid, ActivationQuant};
use crate::packing::unpack;

#[derive(Debug, Clone)]
pub struct W8A8Weight {
    pub in_features: usize,
    pub out_features: usize,
    /// Two's-complement int8 bytes, `[N, K/4]`.
    pub codes: Tensor<2, Int>,
    /// `[1, N]`.
    pub scales: Tensor<2>,
    pub activations: ActivationQuant,
}

impl W8A8Weight {
    /// Signed int8 values as f32, `[N, K]`.
    fn weight_values(&self) -> Tensor<2> {
        let bytes = unpack(self.codes.clone(), 8, 1);
        // Bytes ≥ 128 are negative: subtract 256 where the sign bit is set.
        let signed = bytes.clone() - bytes.bitwise_right_shift_scalar(7).mul_scalar(256);
        signed.float().cast(DType::F32)
    }

    /// `[N, K]` float32 weight.
    pub fn dequantize(&self) -> Tensor<2> {
        self.weight_values() * self.scales.clone().transpose()
    }

    pub fn forward_reference(&self, x: Tensor<2>) -> Tensor<2> {
        let dtype = x.dtype();
        let weight_t = self.weight_values().transpose();
        let y = match quantize_activations(x.clone(), &self.activations, ActivationGrid::Int8) {
            Some(q) => q.values.matmul(weight_t) * q.scales * self.scales.clone(),
            None => x.cast(DType::F32).matmul(weight_t * self.scales.clone()),
        };
        y.cast(dtype)
    }
}
