//! The SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.

use burn::tensor::Tensor;
use ember_quant::{kernels, LayerInfo, LayerKind, QLinear};

use crate::error::ModelError;
use crate::weights::Weights;

#[derive(Debug)]
pub struct Mlp {
    gate_proj: QLinear,
    up_proj: QLinear,
    down_proj: QLinear,
}

/// Tensor names of the three projections (`gate_proj/up_proj/down_proj` or Mixtral's
/// classic `w1/w3/w2`).
#[derive(Debug, Clone, Copy)]
pub struct MlpNames {
    pub gate: &'static str,
    pub up: &'static str,
    pub down: &'static str,
}

impl MlpNames {
    pub const HF: MlpNames = MlpNames { gate: "gate_proj", up: "up_proj", down: "down_proj" };
    pub const MIXTRAL_CLASSIC: MlpNames = MlpNames { gate: "w1", up: "w3", down: "w2" };
}

impl Mlp {
    pub fn plan(w: &Weights, names: MlpNames, hidden: usize, intermediate: usize, bias: bool, kind: LayerKind) -> [LayerInfo; 3] {
        [
            w.layer(names.gate, hidden, intermediate, bias, kind),
            w.layer(names.up, hidden, intermediate, bias, kind),
            w.layer(names.down, intermediate, hidden, bias, kind),
        ]
    }

    pub fn load(w: &Weights, plan: &[LayerInfo; 3]) -> Result<Self, ModelError> {
        let [gate, up, down] = plan;
        Ok(Self { gate_proj: w.linear(gate)?, up_proj: w.linear(up)?, down_proj: w.linear(down)? })
    }

    /// The three projections, for callers that restructure them (expert stacking).
    pub fn from_parts(gate_proj: QLinear, up_proj: QLinear, down_proj: QLinear) -> Self {
        Self { gate_proj, up_proj, down_proj }
    }

    pub fn into_parts(self) -> [QLinear; 3] {
        [self.gate_proj, self.up_proj, self.down_proj]
    }

    pub fn linears(&self) -> Vec<&QLinear> {
        vec![&self.gate_proj, &self.up_proj, &self.down_proj]
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let gate = self.gate_proj.forward(x.clone());
        self.down_proj.forward(kernels::silu_and_mul(gate, self.up_proj.forward(x)))
    }
}
