//! Llama/Mistral, Mixtral and Qwen2 written once over Burn: the backend is picked at run
//! time by the `Device`, and every linear is built through the checkpoint's quant method.

pub mod config;
pub mod decoder;
pub mod error;
pub mod layers;
pub mod llama;
pub mod mixtral;
pub mod qwen2;
pub mod weights;

pub use config::{ModelConfig, MoeConfig, RopeScaling};
pub use decoder::{DecoderModel, FeedForward, FfnPlan};
pub use error::{ConfigError, ModelError};
pub use layers::{KvCache, PagedKvCache, SequenceChunk};
pub use weights::Weights;

use decoder::FfnPlanner;
use ember_quant::LayerInfo;

/// Architecture name (`config.architectures[0]`) → how it plans its feed-forward blocks.
fn feed_forward_for(architecture: &str) -> Option<FfnPlanner> {
    if llama::ARCHITECTURES.contains(&architecture) {
        Some(llama::feed_forward)
    } else if qwen2::ARCHITECTURES.contains(&architecture) {
        Some(qwen2::feed_forward)
    } else if mixtral::ARCHITECTURES.contains(&architecture) {
        Some(mixtral::feed_forward)
    } else {
        None
    }
}

/// Every architecture Ember can build.
pub fn supported_architectures() -> Vec<&'static str> {
    llama::ARCHITECTURES.iter().chain(&qwen2::ARCHITECTURES).chain(&mixtral::ARCHITECTURES).copied().collect()
}

/// Builds the model `config` describes from `weights`.
pub fn build_model(weights: &Weights, config: ModelConfig, on_layer: &mut dyn FnMut(usize, usize)) -> Result<DecoderModel, ModelError> {
    let ffn = feed_forward_for(&config.architecture).ok_or_else(|| ModelError::UnknownArchitecture {
        name: config.architecture.clone(),
        supported: supported_architectures().join(", "),
    })?;
    DecoderModel::load(weights, config, ffn, on_layer)
}

/// Every linear layer of the model `config` describes, without reading weights.
pub fn plan_linears(weights: &Weights, config: &ModelConfig) -> Result<Vec<LayerInfo>, ModelError> {
    let ffn = feed_forward_for(&config.architecture).ok_or_else(|| ModelError::UnknownArchitecture {
        name: config.architecture.clone(),
        supported: supported_architectures().join(", "),
    })?;
    DecoderModel::plan(weights, config, ffn)
}

/// Fails early, before any weight is read, for an architecture Ember cannot build.
pub fn check_architecture(config: &ModelConfig) -> Result<(), ModelError> {
    feed_forward_for(&config.architecture).map(|_| ()).ok_or_else(|| ModelError::UnknownArchitecture {
        name: config.architecture.clone(),
        supported: supported_architectures().join(", "),
    })
}
