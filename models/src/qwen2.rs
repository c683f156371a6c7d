//! Qwen2 (`Qwen2ForCausalLM`): the Llama decoder with biases on q/k/v (set by
//! [`ModelConfig`] for this architecture) and a dense SwiGLU MLP.

use crate::config::ModelConfig;
use crate::decoder::FfnPlan;
use crate::error::ModelError;
use crate::weights::Weights;

pub const ARCHITECTURES: [&str; 1] = ["Qwen2ForCausalLM"];

pub fn feed_forward(w: &Weights, c: &ModelConfig) -> Result<FfnPlan, ModelError> {
    Ok(FfnPlan::dense(w, c))
}
