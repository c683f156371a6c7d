//! Ember: run quantized LLM checkpoints on any Burn backend.
//!
//! The load path follows vLLM's: `config.json` → quant method (from the registry) →
//! per-layer weight specs → checkpoint tensors → layers finished on the device.
//! See `load_model` for the whole path and `engine::Engine` for batched generation.

pub mod check;
pub mod checkpoint;
pub mod device;
pub mod embedded;
pub mod engine;
pub mod error;
pub mod export;
pub mod generation_config;
pub mod hub;
pub mod model;
pub mod server;
pub mod tokenizer;

pub use device::{default_dtype, parse_device};
pub use error::Error;
pub use model::{load_model, LoadFormat, LoadOptions, LoadedModel};
pub use tokenizer::{ChatMessage, IncrementalDecoder, Tokenizer};

pub use ember_models as models;
pub use ember_quant as quant;
