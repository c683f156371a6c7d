//! vLLM's `fp8` method (`quant_method: fp8`), including DeepSeek-style block checkpoints.
//!
//! Per quantized linear `[N, K]`:
//! - `weight` F8_E4M3 `[N, K]`;
//! - per-tensor: `weight_scale` `[1]`, and with `activation_scheme: static` an
//!   `input_scale` `[1]`; dynamic activations get one scale per input tensor;
//! - `weight_block_size: [bn, bk]`: `weight_scale_inv` `[⌈N/bn⌉, ⌈K/bk⌉]` — a
//!   **multiplier** despite its name (`W = code · weight_scale_inv`); activations are
//!   quantized per token and group of `bk` inputs.
//!
//! `ignored_layers` / `modules_to_not_convert` (substrings), the MoE router and lm_head stay float.

use std::sync::Arc;

use serde_json::Value;

use super::rules::{skipped_by_substring, ConfigFields};
use super::schemes::{ActivationPlan, Fp8Scheme, ScaleLayout, TensorNames};
use crate::error::QuantError;
use crate::method::{LayerInfo, LayerKind, LinearScheme, QuantMethod, QuantMethodFactory};
use crate::unquantized::DenseScheme;

#[derive(Debug, Clone, Copy, Default)]
pub struct Fp8Factory;

impl QuantMethodFactory for Fp8Factory {
    fn name(&self) -> &str {
        "fp8"
    }

    /// A null config means `--quantization fp8` on a float checkpoint: quantize at load.
    fn create(&self, config: &Value) -> Result<Arc<dyn QuantMethod>, QuantError> {
        match config {
            Value::Null => Ok(Arc::new(crate::online::online_fp8())),
            _ => Ok(Arc::new(Fp8::from_config(config)?)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Fp8 {
    block: Option<[usize; 2]>,
    static_activations: bool,
    ignored: Vec<String>,
}

impl Fp8 {
    pub fn from_config(config: &Value) -> Result<Self, QuantError> {
        let f = ConfigFields::new("fp8", config);
        if let Some(fmt) = f.str(&["fmt"])? {
            if fmt != "e4m3" {
                return Err(f.invalid(format!("fmt `{fmt}` is not supported (supported: e4m3)")));
            }
        }
        let static_activations = match f.str(&["activation_scheme"])?.unwrap_or("dynamic") {
            "dynamic" => false,
            "static" => true,
            other => return Err(f.invalid(format!("activation_scheme `{other}` is not supported (supported: dynamic, static)"))),
        };
        let block = match config.get("weight_block_size") {
            None | Some(Value::Null) => None,
            Some(Value::Array(dims)) if dims.len() == 2 => {
                let dim = |v: &Value| v.as_u64().filter(|&d| d > 0).map(|d| d as usize).ok_or_else(|| f.invalid("`weight_block_size` must hold two positive integers"));
                Some([dim(&dims[0])?, dim(&dims[1])?])
            }
            Some(other) => return Err(f.invalid(format!("`weight_block_size` must be [rows, cols], got {other}"))),
        };
        if block.is_some() && static_activations {
            return Err(f.invalid("block-wise FP8 needs dynamic activations"));
        }
        let mut ignored = f.strings(&["ignored_layers"])?;
        ignored.extend(f.strings(&["modules_to_not_convert"])?);
        Ok(Self { block, static_activations, ignored })
    }
}

impl QuantMethod for Fp8 {
    fn name(&self) -> &str {
        "fp8"
    }

    fn linear(&self, layer: &LayerInfo) -> Result<Box<dyn LinearScheme>, QuantError> {
        if matches!(layer.kind, LayerKind::Router | LayerKind::LmHead) || skipped_by_substring(&self.ignored, &layer.prefix) {
            return Ok(Box::new(DenseScheme::new(layer)));
        }
        let (scale, layout, activations) = match (self.block, self.static_activations) {
            (Some(block), _) => ("weight_scale_inv", ScaleLayout::Block(block), ActivationPlan::DynamicPerGroup(block[1])),
            (None, true) => ("weight_scale", ScaleLayout::Tensor, ActivationPlan::Static),
            (None, false) => ("weight_scale", ScaleLayout::Tensor, ActivationPlan::DynamicPerTensor),
        };
        let names = TensorNames { weight: "weight", scale, zero_point: None, input_scale: Some("input_scale") };
        Ok(Box::new(Fp8Scheme::new(layer, names, layout, activations, "fp8")?))
    }
}
