//! RMSNorm, computed in f32 whatever the model dtype (as transformers does).

use burn::tensor::Tensor;
use ember_quant::kernels;

use crate::error::ModelError;
use crate::weights::Weights;

#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor<1>,
    eps: f64,
}

impl RmsNorm {
    pub fn load(weights: &Weights, size: usize, eps: f64) -> Result<Self, ModelError> {
        Ok(Self { weight: weights.float("weight", [size])?, eps })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        kernels::rms_norm(x, &self.weight, self.eps)
    }
}
