//! `Int4` / `Int8` weight-only: unsigned b-bit values packed along K in i32 words
//! `[K·b/32, N]`, f32 group scales `[G, N]`, optional unsigned zero points `[G, N]`
//! (absent = the symmetric midpoint 2^(b-1)), and each input row's group. Every format
//! with integer weights and float activations (GPTQ, AWQ, compressed-tensors W4A16/W8A16,
//! torchao int4/int8 weight-only) lands here:
//!
//! `W[k, n] = scales[group[k], n] · (q[k, n] − zeros[group[k], n])`, or with a float zero
//! point (torchao's int4): `W = scales · (q − 2^(b-1)) + offsets`.
//!
//! Act-order checkpoints (GPTQ `desc_act`) are sorted at load so that each group's rows
//! are adjacent, as the kernels want: row `i` of `packed` is input feature `order[i]`, and
//! the forward pass permutes the activation columns to match.
//!
//! The reference forward dequantizes with Burn ops and multiplies; the kernels in
//! `crate::kernels` replace it where the selector allows.

use burn::tensor::{DType, Device, Int, Tensor};

use crate::packing::{int_tensor, pack, unpack};

#[derive(Debug, Clone)]
pub struct PackedIntWeight {
    pub bits: u32,
    pub in_features: usize,
    pub out_features: usize,
    pub group_size: usize,
    pub packed: Tensor<2, Int>,
    pub scales: Tensor<2>,
    pub zeros: ZeroPoints,
    /// Group of each (stored) input row, `[K]`.
    pub group_index: Tensor<1, Int>,
    /// Whether stored row `k` is in group `k / group_size` (every format but act-order
    /// ones whose sorted groups are uneven).
    pub groups_contiguous: bool,
    /// For act-order weights, the input feature of each stored row and its inverse.
    pub input_order: Option<InputOrder>,
}

/// A permutation of the input features (act-order), with its inverse.
#[derive(Debug, Clone)]
pub struct InputOrder {
    /// `order[i]`: the input feature stored at row `i`.
    pub order: Tensor<1, Int>,
    /// `inverse[k]`: the stored row of input feature `k`.
    pub inverse: Tensor<1, Int>,
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
    /// A weight whose row `k` is in group `k / group_size`.
    pub fn new(bits: u32, packed: Tensor<2, Int>, scales: Tensor<2>, zeros: ZeroPoints, group_size: usize) -> Self {
        let [words, out_features] = packed.dims();
        let in_features = words * crate::packing::per_word(bits);
        let device = packed.device();
        Self {
            bits,
            in_features,
            out_features,
            group_size,
            packed: materialized(packed),
            scales: materialized(scales.cast(DType::F32)),
            zeros: match zeros {
                ZeroPoints::Integer(z) => ZeroPoints::Integer(materialized(z)),
                ZeroPoints::Float(z) => ZeroPoints::Float(materialized(z.cast(DType::F32))),
                ZeroPoints::Midpoint => ZeroPoints::Midpoint,
            },
            group_index: Self::contiguous_groups(in_features, group_size, &device),
            groups_contiguous: true,
            input_order: None,
        }
    }

    /// Applies an act-order map (`group_of[k]`, already range-checked): rows are sorted by
    /// group, stably, and the permutation is kept for the activations.
    pub fn with_act_order(self, group_of: &[i32]) -> Self {
        let device = self.packed.device();
        let k = self.in_features;
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by_key(|&row| group_of[row]);
        let mut inverse = vec![0i32; k];
        for (stored, &feature) in order.iter().enumerate() {
            inverse[feature] = stored as i32;
        }
        let sorted_groups: Vec<i32> = order.iter().map(|&row| group_of[row]).collect();
        let groups_contiguous = sorted_groups.iter().enumerate().all(|(row, &g)| g as usize == row / self.group_size);
        let order = int_tensor(order.iter().map(|&r| r as i32).collect(), [k], &device);
        let rows = unpack(self.packed, self.bits, 0).select(0, order.clone());
        Self {
            packed: pack(rows, self.bits, 0),
            group_index: int_tensor(sorted_groups, [k], &device),
            groups_contiguous,
            input_order: Some(InputOrder { order, inverse: int_tensor(inverse, [k], &device) }),
            ..self
        }
    }

    /// Contiguous groups: row `k` belongs to group `k / group_size`.
    pub fn contiguous_groups(in_features: usize, group_size: usize, device: &Device) -> Tensor<1, Int> {
        let values = (0..in_features).map(|k| (k / group_size) as i32).collect();
        int_tensor(values, [in_features], device)
    }

    /// `[K, N]` float32 weight in stored row order.
    fn dequantize_stored(&self) -> Tensor<2> {
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

    /// `[K, N]` float32 weight (the transpose of nn.Linear's `[N, K]`), in input-feature order.
    pub fn dequantize(&self) -> Tensor<2> {
        let stored = self.dequantize_stored();
        match &self.input_order {
            Some(order) => stored.select(0, order.inverse.clone()),
            None => stored,
        }
    }

    /// Activations in stored row order: act-order weights permute the columns of `x`.
    pub fn ordered_input(&self, x: Tensor<2>) -> Tensor<2> {
        match &self.input_order {
            Some(order) => x.select(1, order.order.clone()),
            None => x,
        }
    }

    /// The Burn-ops reference: dequantize, then one dense matmul in `x`'s dtype.
    pub fn forward_reference(&self, x: Tensor<2>) -> Tensor<2> {
        let dtype = x.dtype();
        self.ordered_input(x).matmul(self.dequantize_stored().cast(dtype))
    }
}

/// The same values laid out contiguously (a strided view, such as a transpose, is copied),
/// as the kernels read row-major buffers.
fn materialized<const D: usize, K: burn::tensor::kind::Basic>(t: Tensor<D, K>) -> Tensor<D, K> {
    let dims = t.dims();
    let len = dims.iter().product::<usize>();
    t.reshape([len]).reshape(dims)
}
