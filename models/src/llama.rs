//! Llama 2/3 and Mistral (`LlamaForCausalLM`, `MistralForCausalLM`): the shared decoder
//! with a dense SwiGLU MLP. Mistral's sliding window comes from its config.

use crate::config::ModelConfig;
use crate::decoder::FfnPlan;
use crate::error::ModelError;
use crate::weights::Weights;

pub const ARCHITECTURES: [&str; 2] = ["LlamaForCausalLM", "MistralForCausalLM"];

pub fn feed_forward(w: &Weights, c: &ModelConfig) -> Result<FfnPlan, ModelError> {
    Ok(FfnPlan::dense(w, c))
}
