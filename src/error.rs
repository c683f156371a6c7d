//! The errors a user of Ember can meet, each naming its culprit.

use std::path::PathBuf;

use ember_models::{ConfigError, ModelError};
use ember_quant::{CheckpointError, QuantError};

use crate::tokenizer::TokenizerError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("model `{spec}` not found: {reason}")]
    ModelNotFound { spec: String, reason: String },
    #[error("device `{spec}`: {reason}")]
    DeviceUnavailable { spec: String, reason: String },
    #[error("device error: {0}")]
    Device(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("the prompt has {tokens} tokens; this engine's context is {max_model_len} (model positions and KV cache), leaving no room for output")]
    PromptTooLong { tokens: usize, max_model_len: usize },
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<CheckpointError> for Error {
    fn from(e: CheckpointError) -> Self {
        Self::Model(e.into())
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Self::Model(e.into())
    }
}

impl From<QuantError> for Error {
    fn from(e: QuantError) -> Self {
        Self::Model(e.into())
    }
}

impl Error {
    /// The checkpoint error inside, if that is what went wrong.
    pub fn as_checkpoint(&self) -> Option<&CheckpointError> {
        match self {
            Self::Model(ModelError::Checkpoint(e)) => Some(e),
            _ => None,
        }
    }

    pub fn as_config(&self) -> Option<&ConfigError> {
        match self {
            Self::Model(ModelError::Config(e)) => Some(e),
            _ => None,
        }
    }
}
