//! Reloading high-precision weights into a model that is already quantized (RL weight
//! sync): each layer is quantized again with the recipe its current repr implies, so
//! shapes, dtypes and schemes stay as they were and only the values change.

use std::collections::HashMap;

use super::{OnlineScheme, Recipe};
use crate::error::QuantError;
use crate::formats::rules::unsupported;
use crate::linear::{LinearRepr, QLinear};
use crate::method::{LayerInfo, LinearScheme, QuantMethod};
use crate::unquantized::DenseScheme;

// One plan per layer, made once at load: the size of a `Recipe` costs nothing here.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Plan {
    Float,
    Quantize(Recipe),
    /// A custom repr: Ember cannot quantize into it.
    Unsupported(String),
}

/// A method answering, per layer, "quantize it as it is quantized now".
#[derive(Debug, Clone)]
pub struct Requantize {
    plans: HashMap<String, Plan>,
}

impl Requantize {
    /// Plans from a loaded model's linears (by module path).
    pub fn from_linears<'a>(linears: impl IntoIterator<Item = &'a QLinear>) -> Self {
        let plans = linears
            .into_iter()
            .map(|linear| {
                let plan = match (Recipe::of(linear.repr()), linear.repr()) {
                    (Some(recipe), _) => Plan::Quantize(recipe),
                    (None, LinearRepr::Dense { .. }) => Plan::Float,
                    (None, _) => Plan::Unsupported(linear.scheme().to_string()),
                };
                (linear.name().to_string(), plan)
            })
            .collect();
        Self { plans }
    }
}

impl QuantMethod for Requantize {
    fn name(&self) -> &str {
        "reload"
    }

    fn linear(&self, layer: &LayerInfo) -> Result<Box<dyn LinearScheme>, QuantError> {
        match self.plans.get(&layer.prefix) {
            Some(Plan::Quantize(recipe)) => Ok(Box::new(OnlineScheme::new(layer, recipe.clone())?)),
            Some(Plan::Unsupported(scheme)) => Err(unsupported(layer, format!("its representation ({scheme}) cannot be re-quantized from float weights"))),
            Some(Plan::Float) | None => Ok(Box::new(DenseScheme::new(layer))),
        }
    }
}
