//! RMSNorm, computed in f32 whatever the model dtype (as transformers does).

use burn::tensor::{DType, Tensor};

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
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let inv_rms = x.clone().square().mean_dim(D - 1).add_scalar(self.eps).sqrt().recip();
        (x * inv_rms).cast(dtype) * self.weight.clone().unsqueeze::<D>()
    }
}
