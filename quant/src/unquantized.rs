//! The float method: weights as stored (F32/F16/BF16), converted to the compute dtype.

use std::sync::Arc;

use crate::error::{LoadError, QuantError};
use crate::linear::QLinear;
use crate::method::{LayerInfo, LinearScheme, LoadContext, QuantMethod, QuantMethodFactory};
use crate::source::WeightSpec;
use crate::tensors::LayerTensors;

#[derive(Debug, Clone, Copy, Default)]
pub struct UnquantizedFactory;

impl UnquantizedFactory {
    pub const NAME: &'static str = "unquantized";
}

impl QuantMethodFactory for UnquantizedFactory {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn create(&self, _config: &serde_json::Value) -> Result<Arc<dyn QuantMethod>, QuantError> {
        Ok(Arc::new(Unquantized))
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Unquantized;

impl QuantMethod for Unquantized {
    fn name(&self) -> &str {
        UnquantizedFactory::NAME
    }

    fn linear(&self, layer: &LayerInfo) -> Result<Box<dyn LinearScheme>, QuantError> {
        Ok(Box::new(DenseScheme::new(layer)))
    }
}

/// Loads `<prefix>.weight` `[out, in]` as a dense layer. Other methods use it for the
/// layers they leave in float.
#[derive(Debug, Clone)]
pub struct DenseScheme {
    prefix: String,
    in_features: usize,
    out_features: usize,
}

impl DenseScheme {
    pub fn new(layer: &LayerInfo) -> Self {
        Self { prefix: layer.prefix.clone(), in_features: layer.in_features, out_features: layer.out_features }
    }
}

impl LinearScheme for DenseScheme {
    fn weights(&self) -> Vec<WeightSpec> {
        vec![WeightSpec::float(format!("{}.weight", self.prefix), [self.out_features, self.in_features])]
    }

    fn finish(self: Box<Self>, mut tensors: LayerTensors<'_>, ctx: &LoadContext) -> Result<QLinear, LoadError> {
        let weight = tensors.take("weight")?;
        let weight = weight.to_float_tensor::<2>(&ctx.device, ctx.float_weight_dtype(weight.dtype))?;
        Ok(QLinear::dense(weight, None))
    }

    fn describe(&self) -> String {
        "float".into()
    }
}
