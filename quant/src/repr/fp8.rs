//! `Fp8`: float8 e4m3fn weights `[N, K]` (bytes packed four per i32 word along K) with
//! f32 scales per tensor `[1, 1]`, per output channel `[N, 1]`, or per block
//! `[⌈N/bn⌉, ⌈K/bk⌉]`; every scale is a multiplier (`W = code · scale`, including
//! DeepSeek's `weight_scale_inv`). Activations may be quantized to e4m3 at run time.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use super::activation::{quantize_activations, ActivationGrid, ActivationQuant};
use crate::packing::unpack;

#[derive(Debug, Clone)]
pub struct Fp8Weight {
    pub in_features: usize,
    pub out_features: usize,
    /// e4m3 bytes, `[N, K/4]`.
    pub codes: Tensor<2, Int>,
    pub scales: Tensor<2>,
    /// `[bn, bk]` when `scales` are per block.
    pub block: Option<[usize; 2]>,
    pub activations: ActivationQuant,
    /// The value of every e4m3 byte, `[256]` f32 ([`e4m3_table`]), uploaded once per layer.
    pub table: Tensor<1>,
}

/// Value of every e4m3fn byte (`S.EEEE.MMM`, bias 7, no infinities, 0x7F/0xFF are NaN).
pub fn e4m3_value(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let exponent = ((code >> 3) & 0x0F) as i32;
    let mantissa = (code & 0x07) as f32;
    if exponent == 0x0F && code & 0x07 == 0x07 {
        return f32::NAN;
    }
    sign * match exponent {
        0 => mantissa / 8.0 * 2f32.powi(-6),
        e => (1.0 + mantissa / 8.0) * 2f32.powi(e - 7),
    }
}

/// Every e4m3fn value by byte, on `device`: decoding is a gather from this table.
pub fn e4m3_table(device: &Device) -> Tensor<1> {
    let values: Vec<f32> = (0..=255u8).map(e4m3_value).collect();
    Tensor::from_data(TensorData::new(values, [256]), (device, DType::F32))
}

impl Fp8Weight {
    /// `[N, K]` float32 weight (nn.Linear layout).
    pub fn dequantize(&self) -> Tensor<2> {
        let (n, k) = (self.out_features, self.in_features);
        let codes = unpack(self.codes.clone(), 8, 1);
        let values = self.table.clone().select(0, codes.reshape([n * k])).reshape([n, k]);
        let scales = match self.block {
            None => self.scales.clone(),
            Some([bn, bk]) => {
                let [gn, gk] = self.scales.dims();
                let rows = self.scales.clone().unsqueeze_dim::<3>(1).repeat_dim(1, bn).reshape([gn * bn, gk]);
                rows.unsqueeze_dim::<3>(2).repeat_dim(2, bk).reshape([gn * bn, gk * bk]).narrow(0, 0, n).narrow(1, 0, k)
            }
        };
        values * scales
    }

    pub fn forward_reference(&self, x: Tensor<2>) -> Tensor<2> {
        let dtype = x.dtype();
        let x = match quantize_activations(x.clone(), &self.activations, ActivationGrid::E4M3) {
            Some(q) => q.dequantize().cast(dtype),
            None => x,
        };
        x.matmul(self.dequantize().transpose().cast(dtype))
    }
}
