//! Online quantization: float checkpoints quantized layer by layer while they load
//! (`--quantization int4|int8|w8a8|fp8`, or a torchao `quant_type` over float weights),
//! into the same reprs pre-quantized formats land in, so the same kernels serve both.
//!
//! Numerics are round-to-nearest as compressed-tensors computes them ([`rtn`]); a layer
//! quantized here is bit-identical to the same layer exported by `ember quantize` and
//! loaded back.

pub mod recipe;
pub mod reload;
pub mod rtn;

use std::sync::Arc;

use serde_json::Value;

pub use recipe::{Fp8Tile, Quantized, Recipe};
pub use reload::Requantize;

use crate::error::{LoadError, QuantError};
use crate::formats::rules::ConfigFields;
use crate::linear::QLinear;
use crate::method::{LayerInfo, LayerKind, LinearScheme, LoadContext, QuantMethod, QuantMethodFactory};
use crate::repr::ActivationQuant;
use crate::source::WeightSpec;
use crate::tensors::LayerTensors;
use crate::unquantized::DenseScheme;

/// Quantizes every decoder linear with one recipe; the router and lm_head stay float, as
/// vLLM leaves them.
#[derive(Debug, Clone)]
pub struct OnlineMethod {
    name: String,
    recipe: Recipe,
}

impl OnlineMethod {
    pub fn new(name: impl Into<String>, recipe: Recipe) -> Self {
        Self { name: name.into(), recipe }
    }

    pub fn recipe(&self) -> &Recipe {
        &self.recipe
    }

    /// The recipe a layer gets, `None` for layers left in float.
    pub fn recipe_for(&self, layer: &LayerInfo) -> Option<&Recipe> {
        matches!(layer.kind, LayerKind::Linear | LayerKind::Expert { .. }).then_some(&self.recipe)
    }
}

impl QuantMethod for OnlineMethod {
    fn name(&self) -> &str {
        &self.name
    }

    fn linear(&self, layer: &LayerInfo) -> Result<Box<dyn LinearScheme>, QuantError> {
        match self.recipe_for(layer) {
            Some(recipe) => Ok(Box::new(OnlineScheme::new(layer, recipe.clone())?)),
            None => Ok(Box::new(DenseScheme::new(layer))),
        }
    }
}

/// Reads a layer's float weight and quantizes it with a recipe.
pub struct OnlineScheme {
    layer: LayerInfo,
    recipe: Recipe,
}

impl OnlineScheme {
    pub fn new(layer: &LayerInfo, recipe: Recipe) -> Result<Self, QuantError> {
        recipe.check(layer)?;
        Ok(Self { layer: layer.clone(), recipe })
    }
}

impl LinearScheme for OnlineScheme {
    fn weights(&self) -> Vec<WeightSpec> {
        vec![WeightSpec::float(format!("{}.weight", self.layer.prefix), [self.layer.out_features, self.layer.in_features])]
    }

    fn finish(self: Box<Self>, mut tensors: LayerTensors<'_>, ctx: &LoadContext) -> Result<QLinear, LoadError> {
        let repr = self.recipe.apply(&tensors.take("weight")?, ctx)?;
        Ok(QLinear::new(self.layer.in_features, self.layer.out_features, repr, None))
    }

    fn describe(&self) -> String {
        format!("{} (online)", self.recipe.describe())
    }
}

/// Command-line settings for an online method; unset fields take the method's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnlineSettings {
    /// Inputs per scale; -1 for one scale per output channel.
    pub group_size: Option<i64>,
    pub symmetric: Option<bool>,
}

impl OnlineSettings {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The config object the online factories read.
    pub fn to_config(&self) -> Value {
        let mut config = serde_json::Map::new();
        if let Some(g) = self.group_size {
            config.insert("group_size".into(), g.into());
        }
        if let Some(s) = self.symmetric {
            config.insert("symmetric".into(), s.into());
        }
        Value::Object(config)
    }
}

/// `--quantization int4|int8|w8a8`: a recipe from the command line's settings
/// (`group_size`, `symmetric`) or the defaults.
#[derive(Debug, Clone, Copy)]
pub struct OnlineFactory {
    name: &'static str,
}

impl OnlineFactory {
    pub const INT4: Self = Self { name: "int4" };
    pub const INT8: Self = Self { name: "int8" };
    pub const W8A8: Self = Self { name: "w8a8" };
}

impl QuantMethodFactory for OnlineFactory {
    fn name(&self) -> &str {
        self.name
    }

    fn create(&self, config: &Value) -> Result<Arc<dyn QuantMethod>, QuantError> {
        Ok(Arc::new(OnlineMethod::new(self.name, self.recipe(config)?)))
    }
}

impl OnlineFactory {
    /// The recipe `config` (`group_size`, `symmetric`, both optional) asks for.
    pub fn recipe(&self, config: &Value) -> Result<Recipe, QuantError> {
        let f = ConfigFields::new(self.name, config);
        let group_size = match f.int(&["group_size"])? {
            Some(g) if g > 0 => Some(g as usize),
            Some(-1) => None,
            Some(g) => return Err(f.invalid(format!("group_size {g} is not positive (or -1 for per-channel)"))),
            None if self.name == "int4" => Some(128),
            None => None,
        };
        let symmetric = f.bool(&["symmetric"])?.unwrap_or(true);
        Ok(match self.name {
            "int4" => Recipe::Int { bits: 4, group_size, symmetric },
            "int8" => Recipe::Int { bits: 8, group_size, symmetric },
            _ => {
                if !symmetric || group_size.is_some() {
                    return Err(f.invalid("w8a8 weights are symmetric with one scale per channel"));
                }
                Recipe::W8A8 { activations: ActivationQuant::DynamicPerToken }
            }
        })
    }
}

/// vLLM's `--quantization fp8` on a float checkpoint: e4m3 weights with per-channel
/// scales, activations quantized per token at run time (compressed-tensors FP8_DYNAMIC).
pub fn online_fp8() -> OnlineMethod {
    OnlineMethod::new("fp8", fp8_recipe())
}

/// Per-channel e4m3 weights, dynamic per-token e4m3 activations.
pub fn fp8_recipe() -> Recipe {
    Recipe::Fp8 { tile: Fp8Tile::Channel, activations: ActivationQuant::DynamicPerToken }
}
