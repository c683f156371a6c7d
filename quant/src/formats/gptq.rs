//! GPTQ (`quant_method: gptq`), as AutoGPTQ and GPTQModel write it.
//!
//! Per quantized linear with K inputs, N outputs, b bits, group size g, G = K / g:
//! - `qweight` I32 `[K·b/32, N]`: packed along K, word `[r, n]` holds rows `r·32/b + i`
//!   in bits `[b·i, b·i + b)`;
//! - `qzeros` I32 `[G, N·b/32]`: packed along N the same way. `checkpoint_format: gptq`
//!   (v1) stores zero − 1 (add one per field, unmasked); `gptq_v2` stores the zero;
//! - `scales` `[G, N]`, float16 even in bf16 models (read in f32, exactly);
//! - `g_idx` I32 `[K]`: the group of each input row; a non-monotonic act-order map when
//!   `desc_act: true`, trivial (k / g) otherwise.
//!
//! `W[n, k] = scales[g_idx[k], n] · (q[k, n] − zero[g_idx[k], n])`.
//! The MoE router and lm_head stay float unless `lm_head: true`; GPTQModel's `dynamic`
//! map (`"-:regex"` skips matching modules, `"+:regex"` or a bare regex overrides
//! `bits`/`group_size`/`desc_act`/`sym`) is applied per module.

use std::sync::Arc;

use serde_json::Value;

use super::rules::{check_int_bits, check_packable, group_size_for, ConfigFields, ModulePattern};
use crate::dtype::{DtypeRule, StoredDtype};
use crate::error::{CheckpointError, LoadError, QuantError};
use crate::linear::{LinearRepr, QLinear};
use crate::method::{LayerInfo, LayerKind, LinearScheme, LoadContext, QuantMethod, QuantMethodFactory};
use crate::packing::unpack;
use crate::repr::{PackedIntWeight, ZeroPoints};
use crate::source::WeightSpec;
use crate::tensors::LayerTensors;
use crate::unquantized::DenseScheme;

#[derive(Debug, Clone, Copy, Default)]
pub struct GptqFactory;

impl QuantMethodFactory for GptqFactory {
    fn name(&self) -> &str {
        "gptq"
    }

    fn create(&self, config: &Value) -> Result<Arc<dyn QuantMethod>, QuantError> {
        Ok(Arc::new(Gptq::from_config(config)?))
    }
}

/// Settings that GPTQModel's `dynamic` map may override per module.
#[derive(Debug, Clone, Copy, PartialEq)]
struct GptqSettings {
    bits: u32,
    group_size: Option<i64>,
    desc_act: bool,
    sym: bool,
}

#[derive(Debug, Clone)]
enum DynamicRule {
    Skip(ModulePattern),
    Override(ModulePattern, Value),
}

#[derive(Debug, Clone)]
pub struct Gptq {
    settings: GptqSettings,
    /// v1 checkpoints store zero − 1.
    zeros_minus_one: bool,
    quantize_lm_head: bool,
    dynamic: Vec<DynamicRule>,
}

impl Gptq {
    pub fn from_config(config: &Value) -> Result<Self, QuantError> {
        let f = ConfigFields::new("gptq", config);
        let settings = parse_settings(&f, None)?;
        let format = f.str(&["checkpoint_format", "format"])?.unwrap_or("gptq");
        let zeros_minus_one = match format {
            "gptq" => true,
            "gptq_v2" => false,
            other => return Err(f.invalid(format!("checkpoint_format `{other}` is not supported (supported: gptq, gptq_v2)"))),
        };
        let mut dynamic = Vec::new();
        if let Some(map) = config.get("dynamic").and_then(Value::as_object) {
            for (key, overrides) in map {
                let (skip, pattern) = match key.split_once(':') {
                    Some(("-", p)) => (true, p),
                    Some(("+", p)) => (false, p),
                    _ => (false, key.as_str()),
                };
                let pattern = ModulePattern::parse(&format!("re:{pattern}")).map_err(|e| f.invalid(e))?;
                dynamic.push(match skip {
                    true => DynamicRule::Skip(pattern),
                    false => DynamicRule::Override(pattern, overrides.clone()),
                });
            }
        }
        Ok(Self { settings, zeros_minus_one, quantize_lm_head: f.bool(&["lm_head"])?.unwrap_or(false), dynamic })
    }

    /// The settings for one module, or `None` when it stays float.
    fn settings_for(&self, layer: &LayerInfo) -> Result<Option<GptqSettings>, QuantError> {
        match layer.kind {
            LayerKind::Router => return Ok(None),
            LayerKind::LmHead if !self.quantize_lm_head => return Ok(None),
            _ => {}
        }
        for rule in &self.dynamic {
            match rule {
                DynamicRule::Skip(p) if p.matches(&layer.prefix) => return Ok(None),
                DynamicRule::Override(p, overrides) if p.matches(&layer.prefix) => {
                    return parse_settings(&ConfigFields::new("gptq", overrides), Some(self.settings)).map(Some);
                }
                _ => {}
            }
        }
        Ok(Some(self.settings))
    }
}

fn parse_settings(f: &ConfigFields, base: Option<GptqSettings>) -> Result<GptqSettings, QuantError> {
    let bits = match (f.int(&["bits", "w_bit"])?, base) {
        (Some(b), _) => check_int_bits(f, b)?,
        (None, Some(base)) => base.bits,
        (None, None) => return Err(f.invalid("missing `bits`")),
    };
    Ok(GptqSettings {
        bits,
        group_size: f.int(&["group_size"])?.or(base.and_then(|b| b.group_size)),
        desc_act: f.bool(&["desc_act"])?.or(base.map(|b| b.desc_act)).unwrap_or(false),
        sym: f.bool(&["sym"])?.or(base.map(|b| b.sym)).unwrap_or(true),
    })
}

impl QuantMethod for Gptq {
    fn name(&self) -> &str {
        "gptq"
    }

    fn linear(&self, layer: &LayerInfo) -> Result<Box<dyn LinearScheme>, QuantError> {
        let Some(settings) = self.settings_for(layer)? else {
            return Ok(Box::new(DenseScheme::new(layer)));
        };
        let group_size = group_size_for(layer, settings.group_size)?;
        check_packable(layer, settings.bits, layer.in_features, "in_features")?;
        check_packable(layer, settings.bits, layer.out_features, "out_features")?;
        Ok(Box::new(GptqScheme { layer: layer.clone(), settings, group_size, zeros_minus_one: self.zeros_minus_one }))
    }
}

struct GptqScheme {
    layer: LayerInfo,
    settings: GptqSettings,
    group_size: usize,
    zeros_minus_one: bool,
}

impl GptqScheme {
    fn groups(&self) -> usize {
        self.layer.in_features / self.group_size
    }
}

impl LinearScheme for GptqScheme {
    fn weights(&self) -> Vec<WeightSpec> {
        let (k, n, b, g) = (self.layer.in_features, self.layer.out_features, self.settings.bits as usize, self.groups());
        let name = |leaf: &str| format!("{}.{leaf}", self.layer.prefix);
        let int32 = DtypeRule::Exactly(StoredDtype::I32);
        let g_idx = WeightSpec::new(name("g_idx"), [k], int32);
        vec![
            WeightSpec::new(name("qweight"), [k * b / 32, n], int32),
            WeightSpec::new(name("qzeros"), [g, n * b / 32], int32),
            WeightSpec::float(name("scales"), [g, n]),
            if self.settings.desc_act { g_idx } else { g_idx.optional() },
        ]
    }

    fn finish(self: Box<Self>, mut tensors: LayerTensors<'_>, ctx: &LoadContext) -> Result<QLinear, LoadError> {
        let device = &ctx.device;
        let (k, n, bits, groups) = (self.layer.in_features, self.layer.out_features, self.settings.bits, self.groups());
        let packed = tensors.take("qweight")?.to_i32_tensor::<2>(device)?;
        let qzeros = tensors.take("qzeros")?;
        // Symmetric checkpoints store the midpoint in every zero point; like vLLM's
        // kernels, rely on it instead of reading them.
        let zeros = match self.settings.sym {
            true => ZeroPoints::Midpoint,
            false => {
                let zeros = unpack(qzeros.to_i32_tensor::<2>(device)?, bits, 1);
                ZeroPoints::Integer(if self.zeros_minus_one { zeros.add_scalar(1) } else { zeros })
            }
        };
        let scales = tensors.take("scales")?.to_f32_tensor::<2>(device)?;
        let g_idx = tensors.take_optional("g_idx");
        let weight = PackedIntWeight::new(bits, packed, scales, zeros, self.group_size);
        let weight = match (self.settings.desc_act, g_idx) {
            (true, Some(g_idx)) => weight.with_act_order(&checked_group_index(&g_idx, groups)?),
            (true, None) => return Err(missing(&tensors, "g_idx").into()),
            (false, _) => weight,
        };
        let repr = if bits == 4 { LinearRepr::Int4(weight) } else { LinearRepr::Int8(weight) };
        Ok(QLinear::new(k, n, repr, None))
    }

    fn describe(&self) -> String {
        let s = &self.settings;
        format!(
            "int{} g{}{}{} (gptq{})",
            s.bits,
            self.group_size,
            if s.sym { " sym" } else { " asym" },
            if s.desc_act { " act-order" } else { "" },
            if self.zeros_minus_one { "" } else { " v2" }
        )
    }
}

fn missing(tensors: &LayerTensors, leaf: &str) -> CheckpointError {
    CheckpointError::MissingTensor { name: tensors.name(leaf), location: "the checkpoint (required by desc_act)".into() }
}

/// Reads an act-order map and checks every entry names an existing group.
pub(crate) fn checked_group_index(g_idx: &crate::host::HostTensor, groups: usize) -> Result<Vec<i32>, CheckpointError> {
    let values = g_idx.to_i64_vec()?;
    if let Some(bad) = values.iter().find(|&&g| g < 0 || g as usize >= groups) {
        return Err(CheckpointError::InvalidValues {
            name: g_idx.name.clone(),
            reason: format!("group {bad} is out of range (the layer has {groups} groups)"),
        });
    }
    Ok(values.into_iter().map(|g| g as i32).collect())
}
