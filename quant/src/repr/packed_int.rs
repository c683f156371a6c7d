//! `Int4` / `Int8` weight-only: unsigned b-bit values packed along K in i32 words
//! `[K·b/32, N]`, f32 group scales `[G, N]`, optional unsigned zero points `[G, N]`
//! (absent = the symmetric midpoint 2^(b-1)), and each input row's group. Every format
//! with integer weights and float activations (GPTQ, AWQ, compressed-tensors W4A16/W8A16,
//! torchao int4/int8 weight-only) lands here:
//!
//! `W[k, n] = scales[group[k], n] · (q[k, n] − zeros[group[k], n])`
//!
//! The reference forward dequantizes with Burn ops and multiplies; the W4A16 kernels
//! replace it on devices that have them.

use burn::tensor::{DType, Int, Tensor};

use crate::packing::{int_tensor, unpack};

#[derive(Debug, Clone)]
pub struct PackedIntWeight {
    pub bits: u32,
    pub in_features: usize,
    pub out_features: usize,
    pub group_size: usize,
    pub packed: Tensor<2, Int>,
    pub scales: Tensor<2>,
    pub zeros: Option<Tensor<2, Int>>,
    /// Group of each input row, `[K]`.
    pub group_index: Tensor<1, Int>,
    /// Whether `group_index` is a non-monotonic act-order map (GPTQ `desc_act`).
    pub act_order: bool,
}

impl PackedIntWeight {
    /// Contiguous groups: row `k` belongs to group `k / group_size`.
    pub fn contiguous_groups(in_features: usize, group_size: usize, device: &burn::tensor::Device) -> Tensor<1, Int> {
        let values = (0..in_features).map(|k| (k / group_size) as i32).collect();
        int_tensor(values, [in_features], device)
    }

    /// `[K, N]` float32 weight (the transpose of nn.Linear's `[N, K]`).
    pub fn dequantize(&self) -> Tensor<2> {
        let q = unpack(self.packed.clone(), self.bits, 0);
        let zeros = match &self.zeros {
            Some(z) => z.clone().select(0, self.group_index.clone()),
            None => q.zeros_like().add_scalar(1i64 << (self.bits - 1)),
        };
        let scales = self.scales.clone().select(0, self.group_index.clone());
        (q - zeros).float().cast(DType::F32) * scales
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let dtype = x.dtype();
        x.matmul(self.dequantize().cast(dtype))
    }
}
