//! A [`Recipe`] says how one float weight becomes one of the runtime reprs: the online
//! method quantizes with it at load, `reload_weights` recovers it from a loaded layer's
//! repr, and `ember quantize` writes its output in compressed-tensors layout.

use std::borrow::Cow;

use burn::tensor::{DType, Tensor, TensorData};

use super::rtn::{quantize_fp8, quantize_int, Fp8Quantized, IntQuantized};
use crate::error::{CheckpointError, QuantError};
use crate::formats::rules::unsupported;
use crate::host::HostTensor;
use crate::linear::LinearRepr;
use crate::method::{LayerInfo, LoadContext};
use crate::packing::{int_tensor, pack, per_word};
use crate::dtype::StoredDtype;
use crate::repr::{e4m3_table, ActivationQuant, Fp8Weight, PackedIntWeight, W8A8Weight, ZeroPoints};

/// Which weights share one FP8 scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp8Tile {
    Tensor,
    Channel,
    /// `[rows, cols]` of the weight per scale (DeepSeek and FP8_BLOCK use 128×128).
    Block([usize; 2]),
}

#[derive(Debug, Clone)]
pub enum Recipe {
    /// Weight-only integers (W4A16, W8A16): `group_size` inputs per scale (`None`: one
    /// scale per output channel), with integer zero points when asymmetric.
    Int { bits: u32, group_size: Option<usize>, symmetric: bool },
    /// Symmetric int8 weights with one scale per output channel, activations quantized to
    /// int8 at run time.
    W8A8 { activations: ActivationQuant },
    /// e4m3 weights, activations as given (dynamic per token for FP8_DYNAMIC).
    Fp8 { tile: Fp8Tile, activations: ActivationQuant },
}

/// One layer's quantized weight, on the host.
#[derive(Debug, Clone, PartialEq)]
pub enum Quantized {
    Int(IntQuantized),
    Fp8(Fp8Quantized),
}

impl Recipe {
    /// Rejects layers whose dims this recipe cannot pack.
    pub fn check(&self, layer: &LayerInfo) -> Result<(), QuantError> {
        let k = layer.in_features;
        let multiple = match self {
            Self::Int { bits, .. } => per_word(*bits).max(4),
            _ => 4,
        };
        if !k.is_multiple_of(multiple) {
            return Err(unsupported(layer, format!("in_features {k} must be a multiple of {multiple} to quantize it")));
        }
        if let Self::Int { group_size: Some(g), .. } = self {
            if *g == 0 || !k.is_multiple_of(*g) {
                return Err(unsupported(layer, format!("group size {g} does not divide in_features {k}")));
            }
        }
        Ok(())
    }

    /// The recipe that reproduces a loaded layer's representation from float weights, or
    /// `None` for float and custom layers. Act-order maps and torchao's float zero points
    /// are not reproduced: re-quantized groups are contiguous with integer zero points.
    pub fn of(repr: &LinearRepr) -> Option<Self> {
        Some(match repr {
            LinearRepr::Int4(w) | LinearRepr::Int8(w) => Self::Int {
                bits: w.bits,
                group_size: (w.group_size < w.in_features).then_some(w.group_size),
                symmetric: matches!(w.zeros, ZeroPoints::Midpoint),
            },
            LinearRepr::W8A8(w) => Self::W8A8 { activations: w.activations.clone() },
            LinearRepr::Fp8(w) => {
                let tile = match (w.block, w.scales.dims()) {
                    (Some(block), _) => Fp8Tile::Block(block),
                    (None, [1, 1]) => Fp8Tile::Tensor,
                    (None, _) => Fp8Tile::Channel,
                };
                Self::Fp8 { tile, activations: w.activations.clone() }
            }
            LinearRepr::Dense { .. } | LinearRepr::Custom(_) => return None,
        })
    }

    /// Quantizes a float weight `[out, in]` as stored (its dtype sets the scales' dtype).
    pub fn quantize(&self, weight: &HostTensor) -> Result<Quantized, CheckpointError> {
        let values = weight.to_f32_vec()?;
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(CheckpointError::InvalidValues { name: weight.name.clone(), reason: format!("holds {bad}; cannot quantize it") });
        }
        let [n, k]: [usize; 2] = weight.shape.as_slice().try_into().map_err(|_| CheckpointError::ShapeMismatch {
            name: weight.name.clone(),
            expected: "a rank-2 weight".into(),
            found: weight.shape.clone(),
        })?;
        Ok(match self {
            Self::Int { bits, group_size, symmetric } => Quantized::Int(quantize_int(&values, [n, k], weight.dtype, *bits, group_size.unwrap_or(k), *symmetric)),
            Self::W8A8 { .. } => Quantized::Int(quantize_int(&values, [n, k], weight.dtype, 8, k, true)),
            Self::Fp8 { tile, .. } => {
                let tile = match tile {
                    Fp8Tile::Tensor => [n, k],
                    Fp8Tile::Channel => [1, k],
                    Fp8Tile::Block(block) => *block,
                };
                Quantized::Fp8(quantize_fp8(&values, [n, k], weight.dtype, tile))
            }
        })
    }

    /// Uploads a quantized weight as this recipe's representation.
    pub fn build(&self, quantized: &Quantized, ctx: &LoadContext) -> Result<LinearRepr, CheckpointError> {
        let device = &ctx.device;
        let f32_tensor = |values: &[f32], shape: [usize; 2]| -> Tensor<2> { Tensor::from_data(TensorData::new(values.to_vec(), shape), (device, DType::F32)) };
        Ok(match (self, quantized) {
            (Self::W8A8 { activations }, Quantized::Int(q)) => {
                let activations = activations.clone();
                let bytes = q.values.iter().map(|&v| v as u8).collect();
                let codes = HostTensor::new("weight", StoredDtype::I8, vec![q.out_features, q.in_features], Cow::Owned(bytes)).bytes_as_words(device)?;
                let scales = f32_tensor(&q.scales, [1, q.out_features]);
                LinearRepr::W8A8(W8A8Weight { in_features: q.in_features, out_features: q.out_features, codes, scales, activations })
            }
            (_, Quantized::Int(q)) => {
                let (n, k, groups) = (q.out_features, q.in_features, q.groups());
                let offset = 1i32 << (q.bits - 1);
                let unsigned = |values: &[i8], shape: [usize; 2]| int_tensor(values.iter().map(|&v| v as i32 + offset).collect(), shape, device);
                let zeros = q.zero_points.as_ref().map(|z| unsigned(z, [n, groups]).transpose());
                let packed = pack(unsigned(&q.values, [n, k]).transpose(), q.bits, 0);
                let scales = f32_tensor(&q.scales, [n, groups]).transpose();
                let weight = PackedIntWeight::new(q.bits, packed, scales, zeros.into(), q.group_size);
                if q.bits == 4 { LinearRepr::Int4(weight) } else { LinearRepr::Int8(weight) }
            }
            (_, Quantized::Fp8(q)) => {
                let (block, activations) = match self {
                    Self::Fp8 { tile: Fp8Tile::Block(block), activations } => (Some(*block), activations.clone()),
                    Self::Fp8 { activations, .. } => (None, activations.clone()),
                    _ => (None, ActivationQuant::None),
                };
                let shape = vec![q.out_features, q.in_features];
                let codes = HostTensor::new("weight", StoredDtype::F8E4M3, shape, Cow::Borrowed(&q.codes)).bytes_as_words(device)?;
                let activations = if ctx.fp8_weight_only { ActivationQuant::None } else { activations };
                let scales = f32_tensor(&q.scales, q.scale_shape);
                LinearRepr::Fp8(Fp8Weight { in_features: q.in_features, out_features: q.out_features, codes, scales, block, activations, table: e4m3_table(device) })
            }
        })
    }

    /// Quantizes a stored float weight and uploads it.
    pub fn apply(&self, weight: &HostTensor, ctx: &LoadContext) -> Result<LinearRepr, CheckpointError> {
        self.build(&self.quantize(weight)?, ctx)
    }

    /// "int4 g128 sym", "w8a8-int8 per-channel", "fp8 per-channel dynamic per-token acts".
    pub fn describe(&self) -> String {
        match self {
            Self::Int { bits, group_size, symmetric } => {
                let groups = group_size.map_or("per-channel".to_string(), |g| format!("g{g}"));
                format!("int{bits} {groups} {}", if *symmetric { "sym" } else { "asym" })
            }
            Self::W8A8 { activations } => format!("w8a8-int8 per-channel, {}", describe_activations(activations)),
            Self::Fp8 { tile, activations } => {
                let tile = match tile {
                    Fp8Tile::Tensor => "per-tensor".to_string(),
                    Fp8Tile::Channel => "per-channel".into(),
                    Fp8Tile::Block([bn, bk]) => format!("block {bn}x{bk}"),
                };
                format!("fp8 {tile}, {}", describe_activations(activations))
            }
        }
    }
}

fn describe_activations(activations: &ActivationQuant) -> String {
    match activations {
        ActivationQuant::None => "weight-only".into(),
        ActivationQuant::DynamicPerToken => "dynamic per-token acts".into(),
        ActivationQuant::DynamicPerTensor => "dynamic per-tensor acts".into(),
        ActivationQuant::DynamicPerGroup(g) => format!("dynamic per-group-{g} acts"),
        ActivationQuant::Static(_) => "static acts".into(),
    }
}
