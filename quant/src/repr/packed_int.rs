//! `Int4` / `Int8` weight-only: unsigned b-bit values packed along K in i32 words
//! `[K·b/32, N]`, f32 group scales `[G, N]`, optional unsigned zero points `[G, N]`
//! (absent = the symmetric midpoint 2^(b-1)), and each input row's group. Every format
//! with integer weights and float activations (GPTQ, AWQ, compressed-tensors W4A16/W8A16,
//! torchao int4/int8 weight-only) lands here:
//!
//! `W[k, n] = scales[group[k], n] · (q[k, n] − zeros[group[k], n])`, or with a float zero
//! point (torchao's int4): `W = scales · (q − 2^(b-1)) + offsets`.
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
    pub zeros: ZeroPoints,
    /// Group of each input row, `[K]`.
    pub group_index: Tensor<1, Int>,
    /// Whether `group_index` is a non-monotonic act-order map (GPTQ `desc_act`).
    pub act_order: bool,
}

/// How a group's values are centred.
#[derive(Debug, Clone)]
pub enum ZeroPoints {
    /// Symmetric: every zero point is the midpoint 2^(b-1).
    Midpoint,
    /// Unsigned integer zero points `[G, N]`, subtracted before scaling.
    Integer(Tensor<2, Int>),
    /// Float offsets `[G, N]` (f32), added after scaling the signed values.
    Float(Tensor<2>),
}

impl From<Option<Tensor<2, Int>>> for ZeroPoints {
    fn from(zeros: Option<Tensor<2, Int>>) -> Self {
        zeros.map_or(Self::Midpoint, Self::Integer)
    }
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
        let midpoint = 1i64 << (self.bits - 1);
        let per_row = |t: &Tensor<2>| t.clone().select(0, self.group_index.clone());
        let scales = per_row(&self.scales);
        match &self.zeros {
            ZeroPoints::Midpoint => q.sub_scalar(midpoint).float().cast(DType::F32) * scales,
            ZeroPoints::Integer(z) => (q - z.clone().select(0, self.group_index.clone())).float().cast(DType::F32) * scales,
            ZeroPoints::Float(offsets) => q.sub_scalar(midpoint).float().cast(DType::F32) * scales + per_row(offsets),
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let dtype = x.dtype();
        x.matmul(self.dequantize().cast(dtype))
    }
}
