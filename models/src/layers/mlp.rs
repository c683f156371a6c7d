//! The SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.

use burn::tensor::{activation::silu, Tensor};
use ember_quant::{LayerKind, QLinear};

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
    pub fn load(w: &Weights, names: MlpNames, hidden: usize, intermediate: usize, bias: bool, kind: LayerKind) -> Result<Self, ModelError> {
        Ok(Self {
            gate_proj: w.linear(names.gate, hidden, intermediate, bias, kind)?,
            up_proj: w.linear(names.up, hidden, intermediate, bias, kind)?,
            down_proj: w.linear(names.down, intermediate, hidden, bias, kind)?,
        })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}
