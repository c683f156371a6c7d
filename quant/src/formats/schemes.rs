//! Layer schemes shared by several formats: signed integer weights stored one per byte in
//! nn.Linear layout (compressed-tensors int-quantized, torchao), and float8 weights with
//! multiplier scales (compressed-tensors float-quantized, vLLM's fp8, DeepSeek blocks).

use burn::tensor::{Int, Tensor};

use crate::dtype::{DtypeRule, StoredDtype};
use crate::error::{LoadError, QuantError};
use crate::host::HostTensor;
use crate::linear::{LinearRepr, QLinear};
use crate::method::{LayerInfo, LinearScheme, LoadContext};
use crate::packing::{int_tensor, pack, unpack};
use crate::repr::{e4m3_table, ActivationQuant, Fp8Weight, PackedIntWeight, W8A8Weight};
use crate::source::WeightSpec;
use crate::tensors::LayerTensors;

/// How many scales a weight has: one, one per output row, per row and group of
/// `group` inputs, or per `[bn, bk]` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleLayout {
    Tensor,
    Channel,
    Group(usize),
    Block([usize; 2]),
}

impl ScaleLayout {
    /// Shape of the stored scale tensor for an `[n, k]` weight.
    pub fn shape(self, n: usize, k: usize) -> Vec<usize> {
        match self {
            Self::Tensor => vec![1],
            Self::Channel => vec![n, 1],
            Self::Group(g) => vec![n, k / g],
            Self::Block([bn, bk]) => vec![n.div_ceil(bn), k.div_ceil(bk)],
        }
    }

    /// Inputs per scale along K (a block's width; the last group may be partial).
    pub(crate) fn group_size(self, k: usize) -> usize {
        match self {
            Self::Group(g) => g,
            Self::Block([_, bk]) => bk,
            _ => k,
        }
    }

    pub(crate) fn describe(self) -> String {
        match self {
            Self::Tensor => "per-tensor".into(),
            Self::Channel => "per-channel".into(),
            Self::Group(g) => format!("g{g}"),
            Self::Block([bn, bk]) => format!("block {bn}x{bk}"),
        }
    }
}

/// The activation quantization a config asks for; becomes an [`ActivationQuant`] when the
/// layer loads (reading `input_scale` for static schemes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationPlan {
    None,
    DynamicPerToken,
    DynamicPerTensor,
    DynamicPerGroup(usize),
    Static,
}

/// Leaf names of a byte-per-value weight and its scales.
#[derive(Debug, Clone)]
pub struct TensorNames {
    pub weight: &'static str,
    pub scale: &'static str,
    pub zero_point: Option<&'static str>,
    pub input_scale: Option<&'static str>,
}

impl TensorNames {
    /// The `[1]` activation scale a static scheme reads, if this plan is static.
    fn static_input_scale(&self, prefix: &str, plan: ActivationPlan) -> Option<WeightSpec> {
        match (self.input_scale, plan) {
            (Some(leaf), ActivationPlan::Static) => Some(WeightSpec::float(format!("{prefix}.{leaf}"), [1])),
            _ => None,
        }
    }
}

/// Signed integer weights, one per I8 byte, `[N, K]`: weight-only (4- or 8-bit values)
/// or, with activation quantization, W8A8.
pub struct SignedIntScheme {
    pub layer: LayerInfo,
    pub names: TensorNames,
    pub bits: u32,
    pub scales: ScaleLayout,
    pub activations: ActivationPlan,
    pub source_format: &'static str,
}

impl SignedIntScheme {
    pub fn new(layer: &LayerInfo, names: TensorNames, bits: u32, scales: ScaleLayout, activations: ActivationPlan, source_format: &'static str) -> Result<Self, QuantError> {
        let per = 32 / bits as usize;
        if !layer.in_features.is_multiple_of(per) || !layer.in_features.is_multiple_of(4) {
            return Err(super::rules::unsupported(layer, format!("in_features {} must be a multiple of {}", layer.in_features, per.max(4))));
        }
        if let ScaleLayout::Group(g) = scales {
            if g == 0 || !layer.in_features.is_multiple_of(g) {
                return Err(super::rules::unsupported(layer, format!("group size {g} does not divide in_features {}", layer.in_features)));
            }
        }
        if matches!(scales, ScaleLayout::Block(_)) && (activations != ActivationPlan::None || names.zero_point.is_some()) {
            return Err(super::rules::unsupported(layer, "block scales are supported on symmetric weight-only int weights only"));
        }
        Ok(Self { layer: layer.clone(), names, bits, scales, activations, source_format })
    }

    fn w8a8(&self) -> bool {
        self.activations != ActivationPlan::None
    }
}

impl LinearScheme for SignedIntScheme {
    fn weights(&self) -> Vec<WeightSpec> {
        let (n, k) = (self.layer.out_features, self.layer.in_features);
        let name = |leaf: &str| format!("{}.{leaf}", self.layer.prefix);
        let mut specs = vec![
            WeightSpec::new(name(self.names.weight), [n, k], DtypeRule::Exactly(StoredDtype::I8)),
            WeightSpec::new(name(self.names.scale), self.scales.shape(n, k), DtypeRule::AnyFloat),
        ];
        if let Some(zp) = self.names.zero_point {
            specs.push(WeightSpec::new(name(zp), self.scales.shape(n, k), DtypeRule::Exactly(StoredDtype::I8)).optional());
        }
        specs.extend(self.names.static_input_scale(&self.layer.prefix, self.activations));
        specs
    }

    fn finish(self: Box<Self>, mut tensors: LayerTensors<'_>, ctx: &LoadContext) -> Result<QLinear, LoadError> {
        let device = &ctx.device;
        let (n, k) = (self.layer.out_features, self.layer.in_features);
        let weight = tensors.take(self.names.weight)?;
        let scales = scales_as_rows(&tensors.take(self.names.scale)?, self.scales, n, ctx)?;
        let zero_point = self.names.zero_point.and_then(|zp| tensors.take_optional(zp));
        if self.w8a8() {
            if let Some(zp) = zero_point {
                return Err(QuantError::UnsupportedLayer { layer: self.layer.prefix.clone(), reason: format!("`{}`: asymmetric W8A8 weights are not supported", zp.name) }.into());
            }
            let activations = activation_quant(self.activations, self.names.input_scale, &mut tensors, ctx)?;
            let repr = W8A8Weight { in_features: k, out_features: n, codes: weight.bytes_as_words(device)?, scales: scales.reshape([1, n]), activations };
            return Ok(QLinear::new(k, n, LinearRepr::W8A8(repr), None));
        }
        let offset = 1i64 << (self.bits - 1);
        let mask = (1i64 << self.bits) - 1;
        let unsigned = unpack(weight.bytes_as_words(device)?, 8, 1).add_scalar(offset).bitwise_and_scalar(mask);
        let zeros = match zero_point {
            Some(zp) => Some(signed_to_unsigned_rows(&zp, offset, ctx)?),
            None => None,
        };
        let group_size = self.scales.group_size(k);
        let repr = PackedIntWeight::new(self.bits, pack(unsigned.transpose(), self.bits, 0), scales, zeros.into(), group_size);
        Ok(QLinear::new(k, n, if self.bits == 4 { LinearRepr::Int4(repr) } else { LinearRepr::Int8(repr) }, None))
    }

    fn describe(&self) -> String {
        let kind = if self.w8a8() { "w8a8-int8".to_string() } else { format!("int{}", self.bits) };
        format!("{kind} {} ({})", self.scales.describe(), self.source_format)
    }
}

/// Scales `[N, G]` (or `[N, 1]`, `[1]`, or blocks `[⌈N/bn⌉, ⌈K/bk⌉]`) as f32 `[G, N]`,
/// the `PackedIntWeight` layout: a block's scale is repeated over its `bn` output rows.
pub(crate) fn scales_as_rows(t: &HostTensor, layout: ScaleLayout, n: usize, ctx: &LoadContext) -> Result<Tensor<2>, LoadError> {
    Ok(match layout {
        ScaleLayout::Tensor => t.to_f32_tensor::<1>(&ctx.device)?.reshape([1, 1]).repeat_dim(1, n),
        ScaleLayout::Block([bn, _]) => {
            let blocks = t.to_f32_tensor::<2>(&ctx.device)?.transpose();
            let [groups, row_blocks] = blocks.dims();
            blocks.unsqueeze_dim::<3>(2).repeat_dim(2, bn).reshape([groups, row_blocks * bn]).narrow(1, 0, n)
        }
        _ => t.to_f32_tensor::<2>(&ctx.device)?.transpose(),
    })
}

/// Signed zero points `[N, G]` (I8) → unsigned `[G, N]` on the same offset as the values.
fn signed_to_unsigned_rows(t: &HostTensor, offset: i64, ctx: &LoadContext) -> Result<Tensor<2, Int>, LoadError> {
    let shape = [t.shape[0], t.num_elements() / t.shape[0].max(1)];
    let values = t.to_i64_vec()?.into_iter().map(|z| (z + offset) as i32).collect();
    Ok(int_tensor(values, shape, &ctx.device).transpose())
}

/// Turns a plan into the run-time quantizer, reading a static scale from the checkpoint.
fn activation_quant(plan: ActivationPlan, input_scale: Option<&str>, tensors: &mut LayerTensors, ctx: &LoadContext) -> Result<ActivationQuant, LoadError> {
    Ok(match plan {
        ActivationPlan::None => ActivationQuant::None,
        ActivationPlan::DynamicPerToken => ActivationQuant::DynamicPerToken,
        ActivationPlan::DynamicPerTensor => ActivationQuant::DynamicPerTensor,
        ActivationPlan::DynamicPerGroup(group) => ActivationQuant::DynamicPerGroup(group),
        ActivationPlan::Static => {
            let leaf = input_scale.unwrap_or("input_scale");
            ActivationQuant::Static(tensors.take(leaf)?.to_f32_tensor::<1>(&ctx.device)?)
        }
    })
}

/// float8 e4m3 weights `[N, K]` with multiplier scales.
pub struct Fp8Scheme {
    pub layer: LayerInfo,
    pub names: TensorNames,
    pub scales: ScaleLayout,
    pub activations: ActivationPlan,
    pub source_format: &'static str,
}

impl Fp8Scheme {
    pub fn new(layer: &LayerInfo, names: TensorNames, scales: ScaleLayout, activations: ActivationPlan, source_format: &'static str) -> Result<Self, QuantError> {
        if !layer.in_features.is_multiple_of(4) {
            return Err(super::rules::unsupported(layer, format!("in_features {} must be a multiple of 4", layer.in_features)));
        }
        if matches!(scales, ScaleLayout::Group(_)) {
            return Err(super::rules::unsupported(layer, "group-wise FP8 weight scales are not supported (use channel, tensor or block)"));
        }
        Ok(Self { layer: layer.clone(), names, scales, activations, source_format })
    }
}

impl LinearScheme for Fp8Scheme {
    fn weights(&self) -> Vec<WeightSpec> {
        let (n, k) = (self.layer.out_features, self.layer.in_features);
        let name = |leaf: &str| format!("{}.{leaf}", self.layer.prefix);
        let mut specs = vec![
            WeightSpec::new(name(self.names.weight), [n, k], DtypeRule::Exactly(StoredDtype::F8E4M3)),
            WeightSpec::float(name(self.names.scale), self.scales.shape(n, k)),
        ];
        specs.extend(self.names.static_input_scale(&self.layer.prefix, self.activations));
        specs
    }

    fn finish(self: Box<Self>, mut tensors: LayerTensors<'_>, ctx: &LoadContext) -> Result<QLinear, LoadError> {
        let device = &ctx.device;
        let (n, k) = (self.layer.out_features, self.layer.in_features);
        let codes = tensors.take(self.names.weight)?.bytes_as_words(device)?;
        let scale = tensors.take(self.names.scale)?;
        let scales = match self.scales {
            ScaleLayout::Tensor => scale.to_f32_tensor::<1>(device)?.reshape([1, 1]),
            _ => scale.to_f32_tensor::<2>(device)?,
        };
        let block = match self.scales {
            ScaleLayout::Block(block) => Some(block),
            _ => None,
        };
        let activations = match ctx.fp8_weight_only {
            true => ActivationQuant::None,
            false => activation_quant(self.activations, self.names.input_scale, &mut tensors, ctx)?,
        };
        let repr = Fp8Weight { in_features: k, out_features: n, codes, scales, block, activations, table: e4m3_table(device) };
        Ok(QLinear::new(k, n, LinearRepr::Fp8(repr), None))
    }

    fn describe(&self) -> String {
        let acts = match self.activations {
            ActivationPlan::None => "weight-only".to_string(),
            ActivationPlan::DynamicPerToken => "dynamic per-token acts".into(),
            ActivationPlan::DynamicPerTensor => "dynamic per-tensor acts".into(),
            ActivationPlan::DynamicPerGroup(g) => format!("dynamic per-group-{g} acts"),
            ActivationPlan::Static => "static acts".into(),
        };
        format!("fp8 {} {acts} ({})", self.scales.describe(), self.source_format)
    }
}
