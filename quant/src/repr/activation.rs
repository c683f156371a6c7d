//! Activation quantization as W8A8 and FP8 schemes do it at run time, in Burn ops: the
//! reference the fused kernels are tested against. Scales are computed in f32.

use burn::tensor::{DType, Tensor};

/// Largest finite float8 e4m3fn value.
pub const E4M3_MAX: f32 = 448.0;

/// How a scheme quantizes its input activations.
// One per quantized linear layer; boxing the static scale would only add an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ActivationQuant {
    /// Activations stay in the compute dtype (weight-only schemes).
    None,
    /// One scale per token (row), from its absolute maximum.
    DynamicPerToken,
    /// One scale for the whole input, from its absolute maximum.
    DynamicPerTensor,
    /// One scale per `group` consecutive input features of each token (FP8 block schemes).
    DynamicPerGroup(usize),
    /// A calibrated scale stored in the checkpoint (`input_scale`), `[1]`.
    Static(Tensor<1>),
}

impl ActivationQuant {
    /// A short description for logs (never reads a static scale back from the device).
    pub fn describe(&self) -> String {
        match self {
            Self::None => "float".into(),
            Self::DynamicPerToken => "dynamic per-token".into(),
            Self::DynamicPerTensor => "dynamic per-tensor".into(),
            Self::DynamicPerGroup(group) => format!("dynamic per-group {group}"),
            Self::Static(_) => "static".into(),
        }
    }
}

/// The grid activations are rounded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActivationGrid {
    Int8,
    E4M3,
}

impl ActivationGrid {
    /// Symmetric scales are absmax / (range / 2): 255 / 2 for int8's [-128, 127] (as
    /// compressed-tensors computes them), 448 for e4m3.
    pub fn half_range(self) -> f32 {
        match self {
            Self::Int8 => 127.5,
            Self::E4M3 => E4M3_MAX,
        }
    }

    /// Rounds values already divided by their scale onto the grid (still as floats).
    fn round(self, scaled: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Int8 => scaled.clamp(-128.0, 127.0).round(),
            Self::E4M3 => round_to_e4m3(scaled.clamp(-E4M3_MAX, E4M3_MAX)),
        }
    }
}

/// Quantized activations: grid values (as f32) and the scale to multiply back, broadcastable
/// against them (`[rows, 1]`, `[1, 1]` or `[rows, cols]`).
pub struct QuantizedActivations {
    pub values: Tensor<2>,
    pub scales: Tensor<2>,
}

impl QuantizedActivations {
    pub fn dequantize(self) -> Tensor<2> {
        self.values * self.scales
    }
}

/// Quantizes `x` (`[rows, cols]`) per `mode` onto `grid`; `None` when `mode` is `None`.
pub fn quantize_activations(x: Tensor<2>, mode: &ActivationQuant, grid: ActivationGrid) -> Option<QuantizedActivations> {
    let x = x.cast(DType::F32);
    let [rows, cols] = x.dims();
    let from_absmax = |absmax: Tensor<2>| scale_from_absmax(absmax, grid);
    let scales = match mode {
        ActivationQuant::None => return None,
        ActivationQuant::DynamicPerToken => from_absmax(x.clone().abs().max_dim(1)),
        ActivationQuant::DynamicPerTensor => from_absmax(x.clone().abs().max_dim(1).max_dim(0)),
        ActivationQuant::Static(scale) => scale.clone().cast(DType::F32).reshape([1, 1]),
        &ActivationQuant::DynamicPerGroup(group) => {
            let groups = cols.div_ceil(group);
            let padded = match groups * group - cols {
                0 => x.clone(),
                pad => Tensor::cat(vec![x.clone(), x.zeros_like().narrow(1, 0, pad)], 1),
            };
            let absmax: Tensor<2> = padded.abs().reshape([rows, groups, group]).max_dim(2).reshape([rows, groups]);
            let per_group = from_absmax(absmax);
            per_group.unsqueeze_dim::<3>(2).repeat_dim(2, group).reshape([rows, groups * group]).narrow(1, 0, cols)
        }
    };
    let values = grid.round(x / scales.clone());
    Some(QuantizedActivations { values, scales })
}

/// The symmetric scale of each absolute maximum, floored at the smallest normal f32 so
/// all-zero rows divide safely.
pub fn scale_from_absmax(absmax: Tensor<2>, grid: ActivationGrid) -> Tensor<2> {
    absmax.div_scalar(grid.half_range()).clamp_min(f32::MIN_POSITIVE)
}

/// Rounds to the nearest float8 e4m3fn value (ties to even), for |v| ≤ 448. The spacing
/// of e4m3 values is 2^(e-3) in the binade [2^e, 2^(e+1)), and 2^-9 below 2^-6
/// (subnormals); thresholds are compared one binade at a time so every constant is exact.
pub fn round_to_e4m3(v: Tensor<2>) -> Tensor<2> {
    let magnitude = v.clone().abs();
    let mut step = v.zeros_like().add_scalar(2f32.powi(-9));
    for e in -5..=8 {
        step = step.mask_fill(magnitude.clone().greater_equal_elem(2f32.powi(e)), 2f32.powi(e - 3));
    }
    (v / step.clone()).round() * step
}
