//! Errors from reading a model's config and building it from a checkpoint.

use std::path::PathBuf;

use ember_quant::{CheckpointError, LoadError, QuantError};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad JSON in {path} at line {line}, column {column}: {message}")]
    Json { path: PathBuf, line: usize, column: usize, message: String },
    #[error("invalid config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error("unknown architecture `{name}`; supported: {supported}")]
    UnknownArchitecture { name: String, supported: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("invalid batched step: {0}")]
    InvalidStep(String),
}

impl From<LoadError> for ModelError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Checkpoint(e) => Self::Checkpoint(e),
            LoadError::Quant(e) => Self::Quant(e),
        }
    }
}
