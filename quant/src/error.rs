//! Errors for everything a checkpoint or a quantization config can get wrong.
//! Each names the culprit (file, tensor, field) and what was expected.

use std::path::PathBuf;

use crate::dtype::StoredDtype;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no checkpoint weights in {dir}: expected model.safetensors or model.safetensors.index.json")]
    NoWeights { dir: PathBuf },
    #[error("malformed safetensors header in {path}: {reason}")]
    MalformedHeader { path: PathBuf, reason: String },
    #[error("truncated safetensors file {path}: {reason}")]
    Truncated { path: PathBuf, reason: String },
    #[error("malformed shard index {path}: {reason}")]
    MalformedIndex { path: PathBuf, reason: String },
    #[error("shard `{shard}` listed in {index} does not exist")]
    MissingShard { index: PathBuf, shard: String },
    #[error("tensor `{name}` appears in both {first} and {second}")]
    DuplicateTensor { name: String, first: PathBuf, second: PathBuf },
    #[error("tensor `{name}` not found in {location}")]
    MissingTensor { name: String, location: String },
    #[error("tensor `{name}` has shape {found:?}, expected {expected}")]
    ShapeMismatch { name: String, expected: String, found: Vec<usize> },
    #[error("tensor `{name}` has dtype {found}, expected {expected}")]
    DtypeMismatch { name: String, expected: String, found: StoredDtype },
    #[error("tensor `{name}` in {path} has dtype {dtype}, which Ember does not read (supported: {supported})")]
    UnsupportedDtype { name: String, path: PathBuf, dtype: String, supported: String },
    #[error("tensor `{name}`: {reason}")]
    InvalidValues { name: String, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("unknown quantization method `{name}`; registered methods: {known}")]
    UnknownMethod { name: String, known: String },
    #[error("invalid `{method}` quantization config: {reason}")]
    InvalidConfig { method: String, reason: String },
    #[error("layer `{layer}`: {reason}")]
    UnsupportedLayer { layer: String, reason: String },
}

/// Either half of loading a layer can fail: reading tensors or making sense of them.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Quant(#[from] QuantError),
}
