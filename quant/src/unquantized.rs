//! The float method: weights as stored (F32/F16/BF16), converted to the compute dtype.

use std::sync::Arc;

use crate::error::{LoadError, QuantError};
use crate::host::HostTensor;
use crate::linear::QLinear;
use crate::method::{LayerInfo, LinearScheme, LoadContext, QuantMethod, QuantMethodFactory};
use crate::source::WeightSpec;

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

/// Loads `<prefix>.weight` `[out, in]` (and `<prefix>.bias` `[out]`) as a dense layer.
/// Other methods use it for the layers they leave in float.
#[derive(Debug, Clone)]
pub struct DenseScheme {
    prefix: String,
    in_features: usize,
    out_features: usize,
    bias: bool,
}

impl DenseScheme {
    pub fn new(layer: &LayerInfo) -> Self {
        Self {
            prefix: layer.prefix.clone(),
            in_features: layer.in_features,
            out_features: layer.out_features,
            bias: layer.bias,
        }
    }
}

impl LinearScheme for DenseScheme {
    fn weights(&self) -> Vec<WeightSpec> {
        let mut specs = vec![WeightSpec::float(
            format!("{}.weight", self.prefix),
            [self.out_features, self.in_features],
        )];
        if self.bias {
            specs.push(WeightSpec::float(format!("{}.bias", self.prefix), [self.out_features]));
        }
        specs
    }

    fn finish(self: Box<Self>, tensors: Vec<HostTensor<'_>>, ctx: &LoadContext) -> Result<QLinear, LoadError> {
        let mut tensors = tensors.into_iter();
        let missing = |what: &str| crate::error::CheckpointError::MissingTensor {
            name: format!("{}.{what}", self.prefix),
            location: "the tensors passed to the dense scheme".into(),
        };
        let weight = tensors.next().ok_or_else(|| missing("weight"))?.to_float_tensor::<2>(&ctx.device, ctx.dtype)?;
        let bias = match self.bias {
            true => Some(tensors.next().ok_or_else(|| missing("bias"))?.to_float_tensor::<1>(&ctx.device, ctx.dtype)?),
            false => None,
        };
        Ok(QLinear::dense(weight, bias))
    }
}
