//! torchao (`quant_method: torchao`), as transformers' `TorchAoConfig` saves it with
//! safetensors serialization.
//!
//! `quant_type` is `{"default": {"_type": <Config>, "_data": {...}}}`, or a
//! `ModuleFqnToConfig` whose `module_fqn_to_config` maps module names (and `_default`)
//! to configs (`null` = leave float). Each quantized weight is flattened into
//! `<module>._weight_qdata`, `<module>._weight_scale`, `<module>._weight_zero_point`:
//! - `Int8WeightOnlyConfig`: qdata I8 `[N, K]`, scale `[N, 1]`, zero point I8 `[N, 1]`;
//! - `IntxWeightOnlyConfig` with int4 (`UNPACKED_TO_INT8`): qdata I8 `[N, K]` holding
//!   -8..7 one per byte, scale `[N, K/g]`, zero point I8 `[N, K/g]`;
//!   `W = (q − zero_point) · scale`;
//! - `Int4WeightOnlyConfig` (version 2, plain packing): see [`Int4PlainScheme`]; its zero
//!   point is a float offset.
//!
//! lm_head and the router stay float unless a per-module entry names them.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::rules::{check_packable, group_size_for, skipped_by_substring, unsupported, ConfigFields};
use super::schemes::{ActivationPlan, ScaleLayout, SignedIntScheme, TensorNames};
use burn::tensor::{Int, Tensor};

use crate::dtype::{DtypeRule, StoredDtype};
use crate::error::{LoadError, QuantError};
use crate::linear::{LinearRepr, QLinear};
use crate::method::{LayerInfo, LayerKind, LinearScheme, LoadContext, QuantMethod, QuantMethodFactory};
use crate::online::Recipe;
use crate::packing::{pack, unpack};
use crate::repr::{PackedIntWeight, ZeroPoints};
use crate::source::WeightSpec;
use crate::tensors::LayerTensors;
use crate::unquantized::DenseScheme;

const NAMES: TensorNames =
    TensorNames { weight: "_weight_qdata", scale: "_weight_scale", zero_point: Some("_weight_zero_point"), input_scale: None };

#[derive(Debug, Clone, Copy, Default)]
pub struct TorchaoFactory;

impl QuantMethodFactory for TorchaoFactory {
    fn name(&self) -> &str {
        "torchao"
    }

    fn create(&self, config: &Value) -> Result<Arc<dyn QuantMethod>, QuantError> {
        Ok(Arc::new(Torchao::from_config(config)?))
    }
}

/// One torchao config class and the settings Ember reads from it.
#[derive(Debug, Clone, PartialEq)]
enum AoConfig {
    Int8WeightOnly,
    /// Int4 values unpacked one per byte, grouped along K (group size from the scales).
    Int4UnpackedWeightOnly { group_size: Option<usize> },
    /// `Int4WeightOnlyConfig` version 2, plain packing (`Int4Tensor`).
    Int4Plain { group_size: usize },
}

#[derive(Debug, Clone)]
pub struct Torchao {
    default: Option<AoConfig>,
    per_module: HashMap<String, Option<AoConfig>>,
    modules_to_not_convert: Vec<String>,
}

impl Torchao {
    pub fn from_config(config: &Value) -> Result<Self, QuantError> {
        let f = ConfigFields::new("torchao", config);
        let quant_type = config.get("quant_type").ok_or_else(|| f.invalid("missing `quant_type`"))?;
        let modules_to_not_convert = f.strings(&["modules_to_not_convert"])?;
        let entry = quant_type.get("default").unwrap_or(quant_type);
        if entry.get("_type").and_then(Value::as_str) == Some("ModuleFqnToConfig") {
            let map = entry
                .pointer("/_data/module_fqn_to_config")
                .and_then(Value::as_object)
                .ok_or_else(|| f.invalid("ModuleFqnToConfig without `module_fqn_to_config`"))?;
            let mut per_module = HashMap::new();
            let mut default = None;
            for (module, config) in map {
                let parsed = parse_config(&f, config)?;
                match module.as_str() {
                    "_default" => default = parsed,
                    _ => {
                        per_module.insert(module.clone(), parsed);
                    }
                }
            }
            return Ok(Self { default, per_module, modules_to_not_convert });
        }
        Ok(Self { default: parse_config(&f, entry)?, per_module: HashMap::new(), modules_to_not_convert })
    }
}

fn parse_config(f: &ConfigFields, entry: &Value) -> Result<Option<AoConfig>, QuantError> {
    if entry.is_null() {
        return Ok(None);
    }
    let kind = entry.get("_type").and_then(Value::as_str).ok_or_else(|| f.invalid("a quant_type entry has no `_type`"))?;
    let data = entry.get("_data").cloned().unwrap_or(Value::Null);
    match kind {
        "Int8WeightOnlyConfig" => Ok(Some(AoConfig::Int8WeightOnly)),
        "IntxWeightOnlyConfig" => {
            let dtype = data.pointer("/weight_dtype").map(|v| v.to_string()).unwrap_or_default();
            if !dtype.contains("int4") {
                return Err(f.invalid(format!("IntxWeightOnlyConfig with weight_dtype {dtype} is not supported (supported: torch.int4)")));
            }
            let group_size = data.pointer("/granularity/_data/group_size").and_then(Value::as_u64).map(|g| g as usize);
            Ok(Some(AoConfig::Int4UnpackedWeightOnly { group_size }))
        }
        "Int4WeightOnlyConfig" => {
            let packing = data.pointer("/int4_packing_format/_data").or_else(|| data.get("int4_packing_format")).and_then(Value::as_str).unwrap_or("PLAIN");
            if !packing.eq_ignore_ascii_case("plain") {
                return Err(f.invalid(format!("Int4WeightOnlyConfig with int4_packing_format {packing} is not supported (supported: PLAIN)")));
            }
            let group_size = data.get("group_size").and_then(Value::as_u64).unwrap_or(128) as usize;
            Ok(Some(AoConfig::Int4Plain { group_size }))
        }
        other => Err(f.invalid(format!(
            "torchao config `{other}` is not supported (supported: Int8WeightOnlyConfig, IntxWeightOnlyConfig, Int4WeightOnlyConfig)"
        ))),
    }
}

impl Torchao {
    fn config_for(&self, layer: &LayerInfo) -> Option<AoConfig> {
        match self.per_module.get(&layer.prefix) {
            Some(explicit) => explicit.clone(),
            None if matches!(layer.kind, LayerKind::Router | LayerKind::LmHead) => None,
            None if skipped_by_substring(&self.modules_to_not_convert, &layer.prefix) => None,
            None => self.default.clone(),
        }
    }
}

impl QuantMethod for Torchao {
    fn name(&self) -> &str {
        "torchao"
    }

    fn linear(&self, layer: &LayerInfo) -> Result<Box<dyn LinearScheme>, QuantError> {
        match self.config_for(layer) {
            None => Ok(Box::new(DenseScheme::new(layer))),
            Some(AoConfig::Int8WeightOnly) => {
                Ok(Box::new(SignedIntScheme::new(layer, NAMES, 8, ScaleLayout::Channel, ActivationPlan::None, "torchao")?))
            }
            Some(AoConfig::Int4Plain { group_size }) => {
                let group_size = group_size_for(layer, Some(group_size as i64))?;
                check_packable(layer, 4, layer.in_features, "in_features")?;
                Ok(Box::new(Int4PlainScheme { layer: layer.clone(), group_size }))
            }
            Some(AoConfig::Int4UnpackedWeightOnly { group_size }) => {
                let group = group_size.ok_or_else(|| unsupported(layer, "IntxWeightOnlyConfig without a PerGroup group_size"))?;
                Ok(Box::new(SignedIntScheme::new(layer, NAMES, 4, ScaleLayout::Group(group), ActivationPlan::None, "torchao")?))
            }
        }
    }

    /// transformers quantizes float checkpoints with a `TorchAoConfig` at load; Ember does
    /// the same with its round-to-nearest at the config's bits and group size (integer
    /// zero points where torchao's int4 keeps float ones).
    fn online(&self, layer: &LayerInfo) -> Option<Recipe> {
        Some(match self.config_for(layer)? {
            AoConfig::Int8WeightOnly => Recipe::Int { bits: 8, group_size: None, symmetric: true },
            AoConfig::Int4UnpackedWeightOnly { group_size } => Recipe::Int { bits: 4, group_size, symmetric: true },
            AoConfig::Int4Plain { group_size } => Recipe::Int { bits: 4, group_size: Some(group_size), symmetric: false },
        })
    }
}

/// `Int4Tensor` (plain packing): `_weight_qdata` I8 `[N, K/2]` holding two's-complement
/// int4 pairs along K (even k in the low nibble), `_weight_scale` and
/// `_weight_zero_point` `[K/g, N]` in the model dtype, and a float zero point:
/// `W[n, k] = q · scale[k/g, n] + zero_point[k/g, n]`.
struct Int4PlainScheme {
    layer: LayerInfo,
    group_size: usize,
}

impl LinearScheme for Int4PlainScheme {
    fn weights(&self) -> Vec<WeightSpec> {
        let (n, k, g) = (self.layer.out_features, self.layer.in_features, self.layer.in_features / self.group_size);
        let name = |leaf: &str| format!("{}.{leaf}", self.layer.prefix);
        vec![
            WeightSpec::new(name("_weight_qdata"), [n, k / 2], DtypeRule::Exactly(StoredDtype::I8)),
            WeightSpec::float(name("_weight_scale"), [g, n]),
            WeightSpec::float(name("_weight_zero_point"), [g, n]),
        ]
    }

    fn finish(self: Box<Self>, mut tensors: LayerTensors<'_>, ctx: &LoadContext) -> Result<QLinear, LoadError> {
        let device = &ctx.device;
        let (n, k) = (self.layer.out_features, self.layer.in_features);
        let bytes = unpack(tensors.take("_weight_qdata")?.bytes_as_words(device)?, 8, 1);
        // Signed nibble v ↔ offset value v + 8 = nibble ^ 8.
        let nibble = |t: Tensor<2, Int>| t.bitwise_and_scalar(0xF).bitwise_xor_scalar(8);
        let low = nibble(bytes.clone());
        let high = nibble(bytes.bitwise_right_shift_scalar(4));
        let values: Tensor<2, Int> = Tensor::stack::<3>(vec![low, high], 2).reshape([n, k]);
        let scales = tensors.take("_weight_scale")?.to_f32_tensor::<2>(device)?;
        let offsets = ZeroPoints::Float(tensors.take("_weight_zero_point")?.to_f32_tensor::<2>(device)?);
        let weight = PackedIntWeight::new(4, pack(values.transpose(), 4, 0), scales, offsets, self.group_size);
        Ok(QLinear::new(k, n, LinearRepr::Int4(weight), None))
    }

    fn describe(&self) -> String {
        format!("int4 g{} float zero point (torchao)", self.group_size)
    }
}
