//! Mixtral (`MixtralForCausalLM`): the Llama decoder with a sparse MoE feed-forward.
//!
//! Expert tensors come in three spellings, depending on the tool that saved them:
//! - `block_sparse_moe.experts.E.{w1,w3,w2}` with router `block_sparse_moe.gate`
//!   (the original release, transformers, AutoGPTQ/AutoAWQ);
//! - `block_sparse_moe.experts.E.{gate,up,down}_proj` (llm-compressor);
//! - `mlp.experts.E.{gate,up,down}_proj` with router `mlp.gate` (GPTQModel).
//!
//! w1 = gate_proj, w3 = up_proj, w2 = down_proj.

use crate::config::ModelConfig;
use crate::decoder::FfnPlan;
use crate::error::ModelError;
use crate::layers::{MlpNames, SparseMoe};
use crate::weights::Weights;

pub const ARCHITECTURES: [&str; 1] = ["MixtralForCausalLM"];

/// Block name and projection names of one expert layout.
const LAYOUTS: [(&str, MlpNames); 3] = [
    ("block_sparse_moe", MlpNames::MIXTRAL_CLASSIC),
    ("block_sparse_moe", MlpNames::HF),
    ("mlp", MlpNames::HF),
];

pub fn feed_forward(w: &Weights, c: &ModelConfig) -> Result<FfnPlan, ModelError> {
    let moe = c.moe.as_ref().ok_or_else(|| {
        ModelError::Unsupported("MixtralForCausalLM needs `num_local_experts` and `num_experts_per_tok` in config.json".into())
    })?;
    let (block, names) = detect_layout(w)?;
    let (router, experts) = SparseMoe::plan(&w.pp(block), names, c.hidden_size, c.intermediate_size, moe);
    Ok(FfnPlan::Moe { router, experts, top_k: moe.experts_per_token })
}

/// Finds which spelling this checkpoint uses by looking for expert 0's gate projection.
/// Dummy sources have every name, and get the original layout.
fn detect_layout(w: &Weights) -> Result<(&'static str, MlpNames), ModelError> {
    for (block, names) in LAYOUTS {
        match w.pp(block).pp("experts.0").has_module(names.gate) {
            None => return Ok(LAYOUTS[0]),
            Some(true) => return Ok((block, names)),
            Some(false) => {}
        }
    }
    Err(ModelError::Checkpoint(ember_quant::CheckpointError::MissingTensor {
        name: format!("{}.{{block_sparse_moe,mlp}}.experts.0.{{w1,gate_proj}}.*", w.prefix()),
        location: w.source().describe(),
    }))
}
