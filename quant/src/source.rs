//! Where weights come from. Models and quant schemes describe what they need as
//! [`WeightSpec`]s; a [`TensorSource`] (safetensors files, a sharded checkpoint, or dummy
//! weights for benchmarking) answers with host tensors that already match the spec.

use crate::dtype::{DtypeRule, StoredDtype};
use crate::error::CheckpointError;
use crate::host::HostTensor;

/// One tensor a layer needs: its full checkpoint name, shape and accepted dtypes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DtypeRule,
    /// Loaded when present, skipped when the checkpoint does not have it.
    pub optional: bool,
}

impl WeightSpec {
    pub fn new(name: impl Into<String>, shape: impl Into<Vec<usize>>, dtype: DtypeRule) -> Self {
        Self { name: name.into(), shape: shape.into(), dtype, optional: false }
    }

    pub fn optional(self) -> Self {
        Self { optional: true, ..self }
    }

    pub fn float(name: impl Into<String>, shape: impl Into<Vec<usize>>) -> Self {
        Self::new(name, shape, DtypeRule::AnyFloat)
    }

    /// Checks a tensor found under this spec's name against its shape and dtype.
    pub fn check(&self, found_dtype: StoredDtype, found_shape: &[usize]) -> Result<(), CheckpointError> {
        if found_shape != self.shape.as_slice() {
            return Err(CheckpointError::ShapeMismatch {
                name: self.name.clone(),
                expected: format!("{:?}", self.shape),
                found: found_shape.to_vec(),
            });
        }
        if !self.dtype.accepts(found_dtype) {
            return Err(CheckpointError::DtypeMismatch {
                name: self.name.clone(),
                expected: self.dtype.to_string(),
                found: found_dtype,
            });
        }
        Ok(())
    }
}

/// Shape and dtype of a stored tensor, without its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    pub dtype: StoredDtype,
    pub shape: Vec<usize>,
}

/// A checkpoint, as the model builder sees it.
pub trait TensorSource: Send + Sync {
    /// Reads one tensor, checked against `spec`.
    fn load(&self, spec: &WeightSpec) -> Result<HostTensor<'_>, CheckpointError>;

    /// Whether a tensor exists (used to detect optional tensors and name layouts).
    /// Dummy sources answer `None`: they have every tensor.
    fn contains(&self, name: &str) -> Option<bool>;

    /// Metadata of a stored tensor, if the source has real files.
    fn meta(&self, name: &str) -> Option<TensorMeta>;

    /// Every tensor name, sorted, when the source has real files.
    fn tensor_names(&self) -> Vec<String>;

    /// Human-readable description for messages ("/models/x (2 shards)").
    fn describe(&self) -> String;
}
