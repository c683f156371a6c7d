//! torchao (`quant_method: torchao`), as transformers' `TorchAoConfig` saves it with
//! safetensors serialization.
//!
//! `quant_type` is `{"default": {"_type": <Config>, "_data": {...}}}`, or a
//! `ModuleFqnToConfig` whose `module_fqn_to_config` maps module names (and `_default`)
//! to configs (`null` = leave float). Each quantized weight is flattened into
//! `<module>._weight_qdata`, `<module>._weight_scale`, `<module>._weight_zero_point`:
//! - `Int8WeightOnlyConfig`: qdata I8 `[N, K]`, scale `[N, 1]`, zero point I8 `[N, 1]`;
//! - `IntxWeightOnlyConfig` with int4 (`UNPACKED_TO_INT8`): qdata I8 `[N, K]` holding
//!   -8..7 one per byte, scale `[N, K/g]`, zero point I8 `[N, K/g]`.
//!
//! `W = (q − zero_point) · scale`. lm_head and the router stay float unless a per-module
//! entry names them.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::rules::{skipped_by_substring, unsupported, ConfigFields};
use super::schemes::{ActivationPlan, ScaleLayout, SignedIntScheme, TensorNames};
use crate::error::QuantError;
use crate::method::{LayerInfo, LayerKind, LinearScheme, QuantMethod, QuantMethodFactory};
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
        other => Err(f.invalid(format!("torchao config `{other}` is not supported (supported: Int8WeightOnlyConfig, IntxWeightOnlyConfig)"))),
    }
}

impl QuantMethod for Torchao {
    fn name(&self) -> &str {
        "torchao"
    }

    fn linear(&self, layer: &LayerInfo) -> Result<Box<dyn LinearScheme>, QuantError> {
        let config = match self.per_module.get(&layer.prefix) {
            Some(explicit) => explicit.clone(),
            None if matches!(layer.kind, LayerKind::Router | LayerKind::LmHead) => None,
            None if skipped_by_substring(&self.modules_to_not_convert, &layer.prefix) => None,
            None => self.default.clone(),
        };
        match config {
            None => Ok(Box::new(DenseScheme::new(layer))),
            Some(AoConfig::Int8WeightOnly) => {
                Ok(Box::new(SignedIntScheme::new(layer, NAMES, 8, ScaleLayout::Channel, ActivationPlan::None, "torchao")?))
            }
            Some(AoConfig::Int4UnpackedWeightOnly { group_size }) => {
                let group = group_size.ok_or_else(|| unsupported(layer, "IntxWeightOnlyConfig without a PerGroup group_size"))?;
                Ok(Box::new(SignedIntScheme::new(layer, NAMES, 4, ScaleLayout::Group(group), ActivationPlan::None, "torchao")?))
            }
        }
    }
}
